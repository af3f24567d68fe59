"""Rule `nucleus_diameter`: one nucleus diameter for the run, measured on the reference images."""

import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.segmentation_size import write_reference_diameter

result = write_reference_diameter(
    snakemake.input.images,
    snakemake.output[0],
    dna_channel=snakemake.params.dna_channel,
    z_projection=snakemake.params.z_projection,
)
print(f"nucleus diameter {result['nucleus_diameter']:.1f} px ({result['source']}); per image:", file=sys.stderr)
for path, diameter in result["per_image"].items():
    print(f"  {path}: {diameter:.1f} px", file=sys.stderr)
