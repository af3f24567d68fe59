"""Rule `pairing_accuracy`: how many demo cells were paired to their true nucleus."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

import anndata as ad
import pandas as pd

from cosmic.pairing import write_table
from cosmic.truth.pairing import pairing_accuracy

accuracy = pairing_accuracy(
    ad.read_h5ad(snakemake.input.cohort).obs,
    pd.read_csv(snakemake.input.truth, sep="\t", dtype={"barcode": str}),
    list(zip(snakemake.input.masks, snakemake.input.truth_masks)),
)
write_table(accuracy, snakemake.output[0])
print(accuracy.to_string(), file=sys.stderr)
