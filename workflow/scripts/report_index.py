"""Rule `report_index`: an HTML page linking every rendered report."""

import sys

sys.stderr = open(snakemake.log[0], "w")

from cosmic.report import write_index

write_index(list(snakemake.input), snakemake.params.titles, snakemake.output[0])
