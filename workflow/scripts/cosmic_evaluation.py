"""Rule `cosmic_evaluation`: every split's scores summarised (summary.tsv, paired.tsv, forest plot)."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys
from pathlib import Path

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.evaluation.figures import forest_figure
from cosmic.evaluation.repeated import summarise_splits

summary, paired = summarise_splits(snakemake.input.tables, snakemake.output.summary, snakemake.output.paired,
                                   cell_cycle=snakemake.input.cell_cycle)
forest_figure(paired, Path(snakemake.output.figure).parent)
print(summary.to_string(), file=sys.stderr)
