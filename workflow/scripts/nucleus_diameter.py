"""Rule `nucleus_diameter`: the nucleus diameter one sample is segmented with (segmentation.nucleus_diameter: auto)."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.segmentation_size import write_sample_diameter

result = write_sample_diameter(
    snakemake.input.reference,
    snakemake.input.images,
    snakemake.output[0],
    dna_channel=snakemake.params.dna_channel,
    z_projection=snakemake.params.z_projection,
)
print(f"nucleus diameter {result['nucleus_diameter']:.1f} px ({result['source']}); run reference "
      f"{result['reference']:.1f} px, this sample {result['sample']:.1f} px; per image:", file=sys.stderr)
for path, diameter in result["per_image"].items():
    print(f"  {path}: {diameter:.1f} px", file=sys.stderr)
