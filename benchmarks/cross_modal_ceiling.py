"""The demo generator's cross-modal ceiling: how much any predictor could recover, given unlimited cells.

The demo oracle (``oracle.json``, ``genes.tsv`` oracle_r2, ``morphology_oracle.tsv``) is the fraction
of variance the TRUE shared state explains. A predictor of one modality from the other can only
recover the part of that state the other modality reveals: ``Var(E[y | other modality]) / Var(y)``,
the cross-modal ceiling, is at most the oracle and equals it only if each modality identifies the
whole shared state. This script estimates the cross-modal ceiling by simulation:

1. draw a large reference of new cells from the demo generator (same gene table, samples and
   treatments as the demo run), render each nucleus isolated and measure it with the workflow's
   own feature extractor on its TRUE mask (no segmentation error), and sample its counts;
2. transcriptome <- morphology: an MLP from the region properties to the noise-free expected
   expression (``E[log-expression | shared state]``, mean of K redraws of the RNA-private state,
   as PCs) -- its held-out R² against sampled expression, over COSMIC's kept genes weighted by
   COSMIC's test-cell variances, is COSMIC's headline statistic;
3. morphology <- transcriptome: an MLP from the RNA embedding (30 PCs of the standardised
   log-expression of the kept genes) to the standardised region properties; mean R² over features;
4. both on growing training sets (the demo run's training size up to the whole reference), with
   hyper-parameters chosen on validation reference cells and R² on separate test reference cells.

A regressor fitted on finite data reaches the ceiling from below, so the learning curve shows
whether it has flattened. COSMIC's own numbers (segmented in-field nuclei, the run's training
cells) are read from the run's ``metrics.json`` and set beside the oracle and the ceiling.

    PYTHONPATH=workflow/scripts python benchmarks/cross_modal_ceiling.py \
        --results /tmp/demo/results [--reference-cells 12000] [--config config/config.yaml]

Prints wall time and peak RSS; about 4 minutes on 2 cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cosmic import demo  # noqa: E402
from cosmic import metrics as M  # noqa: E402
from cosmic_ceiling import _mlp, _std  # noqa: E402

MLP_GRID = ((64, 0.1), (256, 0.1), (256, 0.4))


def simulate_reference(settings: demo.DemoSettings, genes: pd.DataFrame, n_cells: int, redraws: int,
                       seed: int) -> dict:
    """New cells from the demo generator: true-mask morphology, sampled and noise-free expression."""
    rng = np.random.default_rng([seed, 2])
    per = -(-n_cells // len(settings.samples))
    states = pd.concat([demo.draw_cell_states(rng, s, t, per, settings.median_library_size)
                        for s, t in settings.samples.items()], ignore_index=True)
    t0 = time.time()
    table = demo.measure_isolated(states, rng, demo.workflow_measure)
    print(f"rendered and measured {len(states)} isolated nuclei in {time.time() - t0:.0f}s", flush=True)
    expr = demo.log_normalise(demo.sample_counts(states, genes, rng)).astype(np.float32)
    expected = np.zeros_like(expr)
    for _ in range(redraws):
        redrawn = demo.redraw_rna_private(states, rng, settings.median_library_size)
        expected += demo.log_normalise(demo.sample_counts(redrawn, genes, rng)) / redraws
    return dict(states=states, morph=table, expr=expr, expected=expected)


def _best_mlp(x, y_fit, y_score, tr, va, te, score, back=lambda z: z):
    """Fit the MLP grid on ``tr`` (targets ``y_fit``), choose on ``va`` (scored against ``y_score``)."""
    xtr, xva, xte = _std(x[tr], x[va], x[te])
    best = None
    for hidden, dropout in MLP_GRID:
        pv, pt = _mlp(xtr, y_fit[tr], [xva, xte], hidden, dropout, 1e-2, xva=xva, yva=y_fit[va])
        v = score(y_score[va], back(pv))
        if best is None or v > best[0]:
            best = (v, back(pt), dict(hidden=hidden, dropout=dropout))
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results", help="a finished demo run's results/ folder")
    ap.add_argument("--config", default=str(ROOT / "config" / "config.yaml"), help="its config (demo_dataset block)")
    ap.add_argument("--reference-cells", type=int, default=12000)
    ap.add_argument("--redraws", type=int, default=8, help="RNA-private redraws for the noise-free expression")
    ap.add_argument("--train-sizes", default="run,4000,all",
                    help="training sizes of the learning curve; 'run' = the demo run's training cells")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t0 = time.time()
    res = Path(a.results)
    settings = demo.DemoSettings.from_config(yaml.safe_load(Path(a.config).read_text()).get("demo_dataset"))
    genes = pd.read_csv(res / "demo" / "genes.tsv", sep="\t")
    metrics = json.loads((res / "cosmic" / "metrics.json").read_text())
    vd = pd.read_csv(res / "cosmic" / "variance_decomposition.tsv", sep="\t")
    gene_rows = vd[vd.direction == "morphology_to_rna"]
    feat_rows = vd[vd.direction == "rna_to_morphology"]
    weights = gene_rows["variance"].to_numpy()

    ref = simulate_reference(settings, genes, a.reference_cells, a.redraws, a.seed)
    cols = genes.set_index("gene").index.get_indexer(gene_rows["feature"])
    if (cols < 0).any():
        raise SystemExit("variance_decomposition.tsv names genes that genes.tsv lacks: not this demo run")
    expr, expected = ref["expr"][:, cols], ref["expected"][:, cols]
    morph = ref["morph"][list(feat_rows["feature"])].to_numpy(float)
    n = len(expr)
    perm = np.random.default_rng(a.seed).permutation(n)
    n_eval = max(n // 6, 500)
    te, va, pool = perm[:n_eval], perm[n_eval:2 * n_eval], perm[2 * n_eval:]
    n_run = int(metrics["n_cells"]["train"])
    sizes = sorted({min(len(pool), n_run if s == "run" else len(pool) if s == "all" else int(s))
                    for s in a.train_sizes.split(",")})

    def total(y, p):
        return float(np.nansum(M.r2_per_feature(y, p) * weights) / weights.sum())

    from sklearn.decomposition import PCA

    rows = []
    for size in sizes:
        tr = pool[:size]
        # transcriptome <- morphology: targets are PCs of the noise-free expression (training cells)
        pca = PCA(30, random_state=a.seed).fit(expected[tr])
        best = _best_mlp(morph, pca.transform(expected), expr, tr, va, te, total, pca.inverse_transform)
        r_tx = total(expr[te], best[1])
        ci_tx = M.bootstrap_ci(expr[te], best[1], lambda y, p: total(y, p), n_boot=100, seed=a.seed)
        # morphology <- transcriptome: RNA embedding -> standardised features
        mu, sd = morph[tr].mean(0), morph[tr].std(0) + 1e-12
        z = (morph - mu) / sd
        e_mu, e_sd = expr[tr].mean(0), expr[tr].std(0) + 1e-8
        rna_pcs = PCA(30, random_state=a.seed).fit((expr[tr] - e_mu) / e_sd).transform((expr - e_mu) / e_sd)
        best_m = _best_mlp(rna_pcs, z, z, tr, va, te, M.mean_r2)
        r_m = M.mean_r2(z[te], best_m[1])
        ci_m = M.bootstrap_ci(z[te], best_m[1], M.mean_r2, n_boot=100, seed=a.seed)
        rows.append(dict(train_cells=size, transcriptome=r_tx, transcriptome_ci=(ci_tx["ci_low"], ci_tx["ci_high"]),
                         morphology=r_m, morphology_ci=(ci_m["ci_low"], ci_m["ci_high"])))
        print(f"train {size:6d}: transcriptome <- morphology {r_tx:.3f} [{ci_tx['ci_low']:.3f}, {ci_tx['ci_high']:.3f}]"
              f"  morphology <- transcriptome {r_m:.3f} [{ci_m['ci_low']:.3f}, {ci_m['ci_high']:.3f}]"
              f"  ({time.time() - t0:.0f}s)", flush=True)

    oracle = metrics.get("oracle", {})
    o_tx = oracle.get("transcriptome", {}).get("oracle_total_r2")
    o_m = oracle.get("morphology", {}).get("oracle_mean_r2")
    vdm = metrics["variance_decomposition"]
    achieved = {"transcriptome": vdm["transcriptome_explained_by_morphology"],
                "morphology": vdm["morphology_explained_by_transcriptome"]}
    ceiling = rows[-1]
    print(f"\nreference: {n} cells ({len(pool)} training pool, {len(va)} validation, {len(te)} test); "
          f"the demo run trained on {n_run}")
    print(f"{'direction':30s} {'shared-state oracle':>20s} {'cross-modal ceiling':>20s} {'ceiling/oracle':>15s} "
          f"{'COSMIC':>8s} {'COSMIC/oracle':>14s} {'COSMIC/ceiling':>15s}")
    for key, label, o in (("transcriptome", "transcriptome <- morphology", o_tx),
                          ("morphology", "morphology <- transcriptome", o_m)):
        c, ach = ceiling[key], achieved[key]["cosmic"]["value"]
        ratio = (lambda v, d: f"{v / d:.2f}" if d else "n/a")
        print(f"{label:30s} {o if o is not None else float('nan'):20.3f} {c:20.3f} {ratio(c, o):>15s} "
              f"{ach:8.3f} {ratio(ach, o):>14s} {ratio(ach, c):>15s}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nwall {time.time() - t0:.0f}s, peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    with threadpool_limits(1):
        main()
