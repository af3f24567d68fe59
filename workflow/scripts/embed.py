"""Rule `embed`: one foundation embedding per nucleus of a sample, in crop-bank order."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

import time

import numpy as np

from cosmic.atomic import atomic_path
from cosmic.foundation import embed_crops, load_model

model = load_model(snakemake.input.model)
start = time.perf_counter()
embedding = embed_crops(model, snakemake.input.crops, batch_size=snakemake.params.batch_size)
with atomic_path(snakemake.output[0]) as tmp:
    with open(tmp, "wb") as fh:
        np.save(fh, embedding)
seconds = time.perf_counter() - start
print(
    f"{embedding.shape[0]} nuclei x {embedding.shape[1]} dims in {seconds:.1f} s "
    f"({embedding.shape[0] / max(seconds, 1e-9):,.1f} nuclei/s)",
    file=sys.stderr,
)
