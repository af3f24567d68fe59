"""Rule `pair`: join one sample's RNA cells to their nuclei (or to its morphology table)."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

import numpy as np
import pandas as pd

from cosmic import pairing
from cosmic.morphology_table import (
    MorphologyTableParams,
    pair_with_table,
    read_morphology_table,
)

sample = snakemake.wildcards.sample
params = pairing.PairingParams.from_config(snakemake.params.pairing)
rna = pairing.read_rna_annotations(snakemake.input.rna, sample)
dropped = pd.read_csv(snakemake.input.dropped, sep="\t", dtype={"barcode": str})
if "morphology" in snakemake.input.keys():
    table = read_morphology_table(
        snakemake.input.morphology,
        sample=sample,
        params=MorphologyTableParams.from_config(snakemake.params.morphology_table),
    )
    paired, qc = pair_with_table(
        sample,
        rna,
        table,
        metadata=snakemake.params.metadata,
        rna_dropped=dropped,
        table_path=snakemake.input.morphology,
        embedding=params.embedding,
    )
else:
    paired, qc = pairing.pair_sample(
        sample,
        rna,
        pd.read_parquet(snakemake.input.nuclei),
        pairing.read_masks(dict(zip(snakemake.params.image_names, snakemake.input.masks))),
        pairing.read_pairing_table(snakemake.input.pairing, sample=sample),
        params,
        metadata=snakemake.params.metadata,
        rna_dropped=dropped,
        embedding=np.load(snakemake.input.embedding, mmap_mode="r"),
        pairing_path=snakemake.input.pairing,
    )
if "annotations" in snakemake.input.keys():
    pairing.apply_annotations(
        paired,
        pairing.read_annotations(snakemake.input.annotations, sample=sample),
        sample=sample,
        path=snakemake.input.annotations,
    )
pairing.write_table(qc, snakemake.output.qc)
pairing.write_paired(paired, snakemake.output.h5ad, snakemake.input.rna)
print(qc["status"].value_counts().to_string(), file=sys.stderr)
