"""Rule `cosmic`: fit the cross-modal model, evaluate on held-out cells, write the outputs."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys
from functools import partial
from pathlib import Path

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.crossmodal import run_cosmic

decode_images = finetune_inputs = None
if "foundation" in snakemake.input.keys():
    from cosmic.foundation import decode_embeddings, load_model
    from cosmic.imageio import crop_banks_by_sample

    foundation = load_model(snakemake.input.foundation)
    decode_images = partial(decode_embeddings, foundation)
    finetune_inputs = (foundation, crop_banks_by_sample(snakemake.input.get("crops"), snakemake.params.samples))

metrics = run_cosmic(
    snakemake.input.cohort,
    Path(snakemake.output.model).parent,
    snakemake.output.predictions,
    snakemake.output.metrics,
    snakemake.output.variance,
    params=snakemake.params.cosmic,
    figures_dir=Path(snakemake.output.gene_r2).parent,
    decode_images=decode_images,
    truth=str(Path(snakemake.input.truth[0]).parent) if "truth" in snakemake.input.keys() else None,
    generated_images=snakemake.output.get("generated_images"),
    finetune_inputs=finetune_inputs,
)
print({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}, file=sys.stderr)
