"""Rule `segment`: one image -> integer label mask TIFF."""

import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.segmentation import segment_image_file

positions = None
if "pairing" in snakemake.input.keys():
    from cosmic.pairing import read_pairing_table

    table = read_pairing_table(snakemake.input.pairing, sample=snakemake.wildcards.sample)
    positions = table.loc[table["image"] == snakemake.params.image_name, ["y", "x"]].to_numpy()

n = segment_image_file(
    snakemake.input.image,
    snakemake.output.mask,
    params=snakemake.params.segmentation,
    dna_channel=snakemake.params.dna_channel,
    z_projection=snakemake.params.z_projection,
    sample=snakemake.wildcards.sample,
    positions_yx=positions,
)
print(f"{snakemake.input.image}: {n} nuclei", file=sys.stderr)
