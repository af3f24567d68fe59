"""Rule `segment`: one image -> integer label mask TIFF (or the mask given in the sample sheet,
checked against the image and imported)."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

if "mask" in snakemake.input.keys():  # sample-sheet column `masks`: import instead of segmenting
    from cosmic.segmentation_masks import import_mask

    imported = import_mask(
        snakemake.input.mask,
        snakemake.input.image,
        snakemake.output.mask,
        dna_channel=snakemake.params.dna_channel,
        z_projection=snakemake.params.z_projection,
        sample=snakemake.wildcards.sample,
        image=snakemake.wildcards.image,
    )
    print(
        f"{snakemake.input.image}: imported {imported['nuclei']} nuclei from {snakemake.input.mask} "
        f"(labels renumbered 1..{imported['nuclei']}; largest given label {imported['max_label']:g})",
        file=sys.stderr,
    )
else:
    from cosmic.segmentation import segment_image_file
    from cosmic.segmentation_size import workflow_params

    positions = None
    if "positions" in snakemake.input.keys():  # this image's rows of the pairing table
        from cosmic.pairing_by_image import read_positions

        positions = read_positions(
            snakemake.input.positions, sample=snakemake.wildcards.sample, image=snakemake.wildcards.image
        )

    info = {}  # filled with the diameter used and what each filter removed
    n = segment_image_file(
        snakemake.input.image,
        snakemake.output.mask,
        params=workflow_params(snakemake.params.segmentation, snakemake.input.get("diameter")),
        dna_channel=snakemake.params.dna_channel,
        z_projection=snakemake.params.z_projection,
        sample=snakemake.wildcards.sample,
        positions_yx=positions,
        info=info,
        compare_estimate="diameter" in snakemake.input.keys(),
    )
    print(
        f"{snakemake.input.image}: {n} nuclei; nucleus diameter {info['nucleus_diameter']:.1f} px "
        f"({info['diameter_source']}); of {info['candidates']} candidates removed "
        f"{info['removed_too_small']} too small, {info['removed_too_large']} too large, "
        f"{info['removed_border']} on the border ({info['removed_specks']} specks dropped before)",
        file=sys.stderr,
    )
