"""Rule `foundation_evaluation` (demo): linear probes, reconstruction gallery and UMAP."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

import numpy as np
import pandas as pd

from cosmic import foundation
from cosmic.truth.nuclei import annotate_nuclei, probe_representations
from cosmic.nuclei import feature_columns
from cosmic.pairing import write_table

tables = pd.concat([pd.read_parquet(p) for p in snakemake.input.tables], ignore_index=True)
annotated = annotate_nuclei(
    tables,
    list(zip(snakemake.input.masks, snakemake.input.truth_masks)),
    pd.read_csv(snakemake.input.truth, sep="\t", dtype={"barcode": str}),
)
embedding = np.concatenate([np.load(p) for p in snakemake.input.embeddings])
representations = {
    "foundation": embedding,
    "region_properties": tables[feature_columns(tables)].to_numpy(float),
    "random_encoder": foundation.random_encoder_embeddings(
        list(snakemake.input.crops), snakemake.params.foundation
    ),
}
# Mean of 3 random splits: one 30 % split of ~2,000 nuclei has a standard error of ~0.02.
probes = probe_representations(annotated, representations, seed=snakemake.params.seed, n_splits=3)
write_table(probes, snakemake.output.probes)
print(probes.to_string(), file=sys.stderr)

model = foundation.load_model(snakemake.input.model)
foundation.plot_reconstructions(
    model, np.load(snakemake.input.crops[0], mmap_mode="r"), snakemake.output.reconstructions
)
matched = (annotated["true_label"] > 0).to_numpy()
foundation.plot_umap(
    embedding[matched],
    {c: annotated.loc[matched, c].to_numpy() for c in ("cell_type", "phase", "treatment", "cycle_position")},
    snakemake.output.umap,
    seed=snakemake.params.seed,
)
