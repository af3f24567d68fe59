"""Rule `rna`: count matrix -> QC-filtered, normalised AnnData with embeddings."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic import rna
from cosmic.atomic import atomic_path

sample = snakemake.wildcards.sample
params = rna.RnaParams.from_config(snakemake.params.rna)
counts = rna.read_counts(
    snakemake.input.counts,
    sample=sample,
    fmt=snakemake.params.counts_format,
    orientation=snakemake.params.orientation,
)
adata, dropped = rna.process_counts(counts, params, sample=sample)
if "embedding" in snakemake.input.keys():
    rna.attach_embedding(
        adata,
        snakemake.input.embedding,
        name=snakemake.params.embedding["name"],
        key=snakemake.params.embedding["key"],
        sample=sample,
    )
rna.plot_qc(adata, snakemake.output.qc_plot, params=params, dropped=dropped)
with atomic_path(snakemake.output.dropped) as tmp:
    dropped.to_csv(tmp, sep="\t", index=False)
rna.write_h5ad(adata, snakemake.output.h5ad)
print(f"{sample}: kept {adata.n_obs} cells x {adata.n_vars} genes, dropped {len(dropped)}", file=sys.stderr)
