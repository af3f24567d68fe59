"""Rule `cosmic`: fit the cross-modal model, evaluate on held-out cells, write the outputs."""

import sys
from functools import partial
from pathlib import Path

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.crossmodal import run_cosmic

decode_images = None
if "foundation" in snakemake.input.keys():
    from cosmic.foundation import decode_embeddings, load_model

    decode_images = partial(decode_embeddings, load_model(snakemake.input.foundation))

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
)
print({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}, file=sys.stderr)
