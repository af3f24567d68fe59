"""Rule `demo`: generate the embedded IRIS-like dataset with its ground truth."""

import sys

sys.stderr = open(snakemake.log[0], "w")

from cosmic.demo import DemoSettings, generate

summary = generate(DemoSettings.from_config(snakemake.params.settings), snakemake.params.outdir)
print(summary, file=sys.stderr)
