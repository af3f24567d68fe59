"""Rule `segmentation_quality`: demo masks scored against the generator's true masks."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic import segmentation_quality as sq

table = sq.evaluate_mask_files(list(zip(snakemake.input.masks, snakemake.input.truth)))
sq.write_quality_table(table, snakemake.output.table)
sq.plot_overlays(
    list(zip(snakemake.input.masks, snakemake.input.truth)),
    snakemake.output.figure,
    images=list(snakemake.input.images),
)
print(table.tail(1).to_string(), file=sys.stderr)
