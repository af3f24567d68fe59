"""Rule `cohort`: concatenate the paired samples into one AnnData."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

import pandas as pd

from cosmic import pairing

cohort = pairing.build_cohort_from_files(
    list(snakemake.input.paired),
    snakemake.output.h5ad,
    n_pcs=snakemake.params.n_pcs,
    max_fit_cells=snakemake.params.max_fit_cells,
    n_top_genes=snakemake.params.n_top_genes,
    seed=snakemake.params.seed,
)
qc = pd.concat([pd.read_csv(p, sep="\t", dtype={"barcode": str}) for p in snakemake.input.qc])
summary = pairing.summarise_qc(qc)
pairing.write_table(summary, snakemake.output.summary)
print(summary.to_string(), file=sys.stderr)
