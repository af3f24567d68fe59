"""Rule `cosmic`: fit the cross-modal model, evaluate on held-out cells, write the outputs."""

import sys
from pathlib import Path

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.crossmodal import run_cosmic

decode_images = None
if "foundation" in snakemake.input.keys():
    from cosmic.foundation import decode_embeddings, load_model

    foundation = load_model(snakemake.input.foundation)

    def decode_images(embedding):
        return decode_embeddings(foundation, embedding)


metrics = run_cosmic(
    snakemake.input.cohort,
    Path(snakemake.output.model).parent,
    snakemake.output.predictions,
    snakemake.output.metrics,
    snakemake.output.variance,
    params=snakemake.params.cosmic,
    figures_dir=Path(snakemake.output.gene_r2).parent,
    decode_images=decode_images,
    truth=snakemake.params.truth,
    generated_images=snakemake.output.get("generated_images"),
)
print({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}, file=sys.stderr)
