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

info = {}  # filled with the diameter used and what each filter removed
n = segment_image_file(
    snakemake.input.image,
    snakemake.output.mask,
    params=snakemake.params.segmentation,
    dna_channel=snakemake.params.dna_channel,
    z_projection=snakemake.params.z_projection,
    sample=snakemake.wildcards.sample,
    positions_yx=positions,
    info=info,
)
print(
    f"{snakemake.input.image}: {n} nuclei; nucleus diameter {info['nucleus_diameter']:.1f} px "
    f"({info['diameter_source']}); of {info['candidates']} candidates removed "
    f"{info['removed_too_small']} too small, {info['removed_too_large']} too large, "
    f"{info['removed_border']} on the border ({info['removed_specks']} specks dropped before)",
    file=sys.stderr,
)
