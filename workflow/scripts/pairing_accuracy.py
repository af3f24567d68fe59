"""Rule `pairing_accuracy`: how many demo cells were paired to their true nucleus."""

import sys

sys.stderr = open(snakemake.log[0], "w")

import anndata as ad
import pandas as pd

from cosmic import pairing

accuracy = pairing.pairing_accuracy(
    ad.read_h5ad(snakemake.input.cohort).obs,
    pd.read_csv(snakemake.input.truth, sep="\t", dtype={"barcode": str}),
    list(zip(snakemake.input.masks, snakemake.input.truth_masks)),
)
pairing.write_table(accuracy, snakemake.output[0])
print(accuracy.to_string(), file=sys.stderr)
