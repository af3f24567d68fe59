"""Rule `demo`: generate the embedded IRIS-like dataset with its ground truth."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.demo import DemoSettings, generate

summary = generate(DemoSettings.from_config(snakemake.params.settings), snakemake.params.outdir)
print(summary, file=sys.stderr)
