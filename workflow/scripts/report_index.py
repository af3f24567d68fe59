"""Rule `report_index`: an HTML page linking every rendered report."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.report import write_index

write_index(list(snakemake.input), snakemake.params.titles, snakemake.output[0])
