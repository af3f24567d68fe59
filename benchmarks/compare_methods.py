"""COSMIC's methods side by side on the same repeated splits: ``diffusion`` (default) and ``cvae``.

Runs the evaluation harness (:func:`cosmic.evaluation.repeated.run_split`) once per method and split
(split ``i`` uses seed ``cosmic.seed + i`` for both methods, so the test cells are the same), renames
each method's ``cosmic`` rows to the method name, and prints the summary (mean and 95 % CI over splits)
and the paired differences of every method against every baseline and against each other.

    python benchmarks/compare_methods.py results/paired/cohort.h5ad --splits 5 [--config '{"epochs": 100}']

Prints the tables (TSV) and the wall time per method and split; ``--out DIR`` also writes them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

from cosmic.evaluation.repeated import run_split  # noqa: E402
from cosmic.evaluation.summary import BASELINES, paired_differences, summarise  # noqa: E402

HEADLINE = ("weighted_r2", "median_gene_pearson", "interval_coverage", "knna_k1", "knna_k100", "frechet",
            "coherence_gap", "conditional_r2")


def per_split_rows(cohort, methods, n_splits: int, config: dict, workdir: Path) -> pd.DataFrame:
    """Every method's per-split rows; baselines kept once (they do not depend on the method)."""
    tables = []
    for method in methods:
        for split in range(n_splits):
            started = time.time()
            table = run_split(cohort, {**config, "method": method}, split, workdir / f"{method}_{split}.tsv",
                              progress=False)
            print(f"# {method} split {split}: {time.time() - started:.1f} s", flush=True)
            table["method"] = table["method"].replace({"cosmic": method})
            if method != methods[0]:
                table = table[~table["method"].isin(BASELINES)]
            tables.append(table)
    return pd.concat(tables, ignore_index=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cohort", help="paired/cohort.h5ad")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=["diffusion", "cvae"])
    parser.add_argument("--config", default="{}", help="cosmic: config overrides as JSON")
    parser.add_argument("--out", help="folder for summary.tsv, paired.tsv and per_split.tsv")
    args = parser.parse_args(argv)
    import anndata as ad

    cohort = ad.read_h5ad(args.cohort)
    with tempfile.TemporaryDirectory() as tmp:
        per_split = per_split_rows(cohort, args.methods, args.splits, json.loads(args.config), Path(tmp))
    features = per_split[per_split["space"] == "features"]
    summary = summarise(features)
    # each method against the baselines, and the first method against the others
    paired = pd.concat([paired_differences(features),
                        paired_differences(features, baselines=tuple(args.methods[1:]))], ignore_index=True)
    paired = paired[paired["method"] != paired["baseline"]]
    columns = ["direction", "metric", "method", "mean", "ci_low", "ci_high"]
    print(summary[summary["metric"].isin(HEADLINE)][columns].to_csv(sep="\t", index=False, float_format="%.4f"))
    columns = ["direction", "metric", "method", "baseline", "diff_mean", "ci_low", "ci_high", "method_better"]
    print(paired[paired["metric"].isin(HEADLINE)][columns].to_csv(sep="\t", index=False, float_format="%.4f"))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        summary.to_csv(out / "summary.tsv", sep="\t", index=False)
        paired.to_csv(out / "paired.tsv", sep="\t", index=False)
        per_split.to_csv(out / "per_split.tsv", sep="\t", index=False)


if __name__ == "__main__":
    main()
