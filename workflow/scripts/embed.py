"""Rule `embed`: one foundation embedding per nucleus of a sample, in crop-bank order."""

import sys

sys.stderr = open(snakemake.log[0], "w")

import numpy as np

from cosmic.atomic import atomic_path
from cosmic.foundation import embed_crops, load_model

model = load_model(snakemake.input.model)
embedding = embed_crops(model, snakemake.input.crops, batch_size=snakemake.params.batch_size)
with atomic_path(snakemake.output[0]) as tmp:
    with open(tmp, "wb") as fh:
        np.save(fh, embedding)
print(f"{embedding.shape[0]} nuclei x {embedding.shape[1]} dims", file=sys.stderr)
