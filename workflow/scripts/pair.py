"""Rule `pair`: join one sample's RNA cells to their nuclei."""

import logging
import sys

sys.stderr = open(snakemake.log[0], "w")
logging.captureWarnings(True)

import anndata as ad
import numpy as np
import pandas as pd

from cosmic import pairing
from cosmic.rna import write_h5ad

sample = snakemake.wildcards.sample
paired, qc = pairing.pair_sample(
    sample,
    ad.read_h5ad(snakemake.input.rna),
    pd.read_parquet(snakemake.input.nuclei),
    pairing.read_masks(dict(zip(snakemake.params.image_names, snakemake.input.masks))),
    pairing.read_pairing_table(snakemake.input.pairing, sample=sample),
    pairing.PairingParams.from_config(snakemake.params.pairing),
    metadata=snakemake.params.metadata,
    rna_dropped=pd.read_csv(snakemake.input.dropped, sep="\t", dtype={"barcode": str}),
    embedding=np.load(snakemake.input.embedding, mmap_mode="r"),
    pairing_path=snakemake.input.pairing,
)
pairing.write_table(qc, snakemake.output.qc)
write_h5ad(paired, snakemake.output.h5ad)
print(qc["status"].value_counts().to_string(), file=sys.stderr)
