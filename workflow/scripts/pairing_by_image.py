"""Rule `pairing_by_image`: one sample's pairing table -> one positions file per image (files
whose rows did not change are left untouched, so their segmentation is not redone)."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.pairing_by_image import split_by_image

counts = split_by_image(
    snakemake.input.pairing,
    snakemake.output.folder,
    snakemake.params.image_names,
    sample=snakemake.wildcards.sample,
)
print(
    f"{snakemake.input.pairing}: {counts['rows']} rows over {len(snakemake.params.image_names)} images; "
    f"{counts['written']} position files written, {counts['unchanged']} unchanged, "
    f"{counts['removed']} of images no longer in the sample removed",
    file=sys.stderr,
)
