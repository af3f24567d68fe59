"""Rule `cohort`: concatenate the paired samples into one AnnData."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

import anndata as ad
import pandas as pd

from cosmic import pairing
from cosmic.rna import write_h5ad

cohort = pairing.build_cohort(
    [ad.read_h5ad(path) for path in snakemake.input.paired],
    n_pcs=snakemake.params.n_pcs,
    seed=snakemake.params.seed,
)
qc = pd.concat([pd.read_csv(p, sep="\t", dtype={"barcode": str}) for p in snakemake.input.qc])
summary = pairing.summarise_qc(qc)
pairing.write_table(summary, snakemake.output.summary)
write_h5ad(cohort, snakemake.output.h5ad)
print(summary.to_string(), file=sys.stderr)
