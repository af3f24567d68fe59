"""Rule `segment`: one image -> integer label mask TIFF."""

import sys

sys.stderr = open(snakemake.log[0], "w")

from cosmic.segmentation import segment_image_file

n = segment_image_file(
    snakemake.input.image,
    snakemake.output.mask,
    params=snakemake.params.segmentation,
    dna_channel=snakemake.params.dna_channel,
    z_projection=snakemake.params.z_projection,
    sample=snakemake.wildcards.sample,
)
print(f"{snakemake.input.image}: {n} nuclei", file=sys.stderr)
