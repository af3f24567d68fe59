"""Rule `cosmic_split`: score one held-out split (COSMIC and every baseline; generated nuclei as images)."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.evaluation.image_rows import ImageContext
from cosmic.evaluation.repeated import run_split

images = None
if "foundation" in snakemake.input.keys():
    images = ImageContext.from_files(snakemake.input.foundation, snakemake.input.crops, snakemake.params.samples,
                                     snakemake.params.dna_channel, snakemake.input.get("first_image"),
                                     generated=snakemake.input.get("generated"))
table = run_split(
    snakemake.input.cohort,
    snakemake.params.cosmic,
    int(snakemake.wildcards.split),
    snakemake.output.table,
    outdir_model=snakemake.params.model_dir,
    fitted_model=snakemake.input.get("fitted"),
    images=images,
)
print(table.groupby(["direction", "space", "metric", "method"])["value"].mean().to_string(), file=sys.stderr)
