"""How much of the demo oracle is reachable, and by what: a measured decomposition of COSMIC's gap.

The demo oracle (``demo/oracle.json``, ``genes.tsv`` oracle_r2, ``morphology_oracle.tsv``) is the
fraction of variance the TRUE latent shared state explains (Monte Carlo over private variation,
infinite cells, morphology measured on true masks of isolated nuclei). A predictor only sees the
other *measured* modality, on a finite training set. This script separates the steps, all on the
COSMIC split (train cells fit, val cells tune, test cells report):

(a) finite-sample ceiling: the true shared state (ground_truth.tsv) -> the measured target, best
    flexible regressor (kernel ridge / MLP / gradient boosting / kNN / ridge, chosen on val);
(b) the measured input modality -> target with the same regressors: X_morph, X_fm, both
    (transcriptome direction) and the RNA embedding / expression (morphology direction);
(c) COSMIC (run_cosmic on the same cohort and split).

Targets and scores are those of cosmic.crossmodal: kept-gene log-normalised expression, variance-weighted
total R²; standardised region-property features (X_morph), mean R². Also printed: how well each
measured modality recovers each true shared-state variable (test R² / accuracy), which explains (b).

    PYTHONPATH=workflow/scripts python benchmarks/cosmic_ceiling.py \
        --cohort /tmp/wfd3/results/paired/cohort.h5ad --truth /tmp/wfd3/results/demo [--no-cosmic]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

from cosmic import metrics as M  # noqa: E402
from cosmic.crossmodal import CosmicParams, Preprocessor, run_cosmic  # noqa: E402
from cosmic.truth.crossmodal import load_truth, shared_state_frame  # noqa: E402
from cosmic.splits import make_splits  # noqa: E402


# ---------------------------------------------------------------------------------------
# regressors: fit on train, choose hyper-parameters on val, predict test
def _std(xtr, *xs):
    mu, sd = xtr.mean(0), xtr.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    return [(x - mu) / sd for x in (xtr, *xs)]


def _ridge(xtr, ytr, xs, alpha):
    from sklearn.linear_model import Ridge

    m = Ridge(alpha=alpha).fit(xtr, ytr)
    return [m.predict(x) for x in xs]


def _knn(xtr, ytr, xs, k):
    from sklearn.neighbors import KNeighborsRegressor

    m = KNeighborsRegressor(n_neighbors=k, weights="distance").fit(xtr, ytr)
    return [m.predict(x) for x in xs]


def _krr(xtr, ytr, xs, alpha, gamma):
    from sklearn.kernel_ridge import KernelRidge

    mu = ytr.mean(0)
    m = KernelRidge(alpha=alpha, kernel="rbf", gamma=gamma / xtr.shape[1]).fit(xtr, ytr - mu)
    return [m.predict(x) + mu for x in xs]


def _hgb(xtr, ytr, xs, leaves, lr):
    from sklearn.ensemble import HistGradientBoostingRegressor

    out = [np.zeros((len(x), ytr.shape[1])) for x in xs]
    for j in range(ytr.shape[1]):
        m = HistGradientBoostingRegressor(max_leaf_nodes=leaves, learning_rate=lr, max_iter=150,
                                          l2_regularization=1.0, min_samples_leaf=20, random_state=0)
        m.fit(xtr, ytr[:, j])
        for o, x in zip(out, xs):
            o[:, j] = m.predict(x)
    return out


def _mlp(xtr, ytr, xs, hidden, dropout, wd, xva=None, yva=None, seed=0, epochs=300, patience=20):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    mu, sd = ytr.mean(0), ytr.std(0) + 1e-8
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    X, Y = t(xtr), t((ytr - mu) / sd)
    Xv, Yv = t(xva), t((yva - mu) / sd)
    net = nn.Sequential(nn.Linear(X.shape[1], hidden), nn.GELU(), nn.Dropout(dropout),
                        nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, Y.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=wd)
    w = t(sd ** 2 / (sd ** 2).sum() * len(sd))  # variance weights: squared error in original units
    best, best_state, bad = np.inf, None, 0
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(X), generator=g).split(128):
            loss = (((net(X[idx]) - Y[idx]) ** 2) * w).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            v = ((((net(Xv) - Yv) ** 2) * w).mean()).item()
        if v < best - 1e-5:
            best, bad = v, 0
            best_state = {k: x.clone() for k, x in net.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():
        return [net(t(x)).numpy() * sd + mu for x in xs]


GRIDS = {
    "ridge": [dict(alpha=a) for a in (0.1, 1, 10, 100, 1000, 1e4)],
    "knn": [dict(k=k) for k in (10, 25, 50, 100)],
    "kernel_ridge": [dict(alpha=a, gamma=g) for a in (0.3, 1, 3, 10) for g in (0.1, 0.3, 1.0)],
    "mlp": [dict(hidden=h, dropout=d, wd=w) for h in (64, 256) for d in (0.1, 0.4) for w in (1e-2,)],
    "hgb": [dict(leaves=l, lr=lr) for l in (4, 15) for lr in (0.05,)],
}
FUNCS = {"ridge": _ridge, "knn": _knn, "kernel_ridge": _krr, "mlp": _mlp, "hgb": _hgb}


def best_regressor(xtr, ytr, xva, yva, xte, score, back=None, methods=tuple(GRIDS)):
    """Per method: the hyper-parameters with the best validation score; returns
    ``{method: (val, test_pred, params)}`` and the method chosen on validation."""
    xtr, xva, xte = _std(xtr, xva, xte)
    back = back or (lambda z: z)
    res = {}
    for name in methods:
        best = None
        for kw in GRIDS[name]:
            extra = dict(xva=xva, yva=yva) if name == "mlp" else {}
            pv, pt = FUNCS[name](xtr, ytr, [xva, xte], **kw, **extra)
            v = score(back(pv), "val")
            if best is None or v > best[0]:
                best = (v, back(pt), kw)
        res[name] = best
    chosen = max(res, key=lambda m: res[m][0])
    return res, chosen


# ---------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cohort", default="/tmp/wfd3/results/paired/cohort.h5ad")
    ap.add_argument("--truth", default="/tmp/wfd3/results/demo")
    ap.add_argument("--params", default='{"representation": "morph"}', help="cosmic params (JSON)")
    ap.add_argument("--no-cosmic", action="store_true", help="skip running COSMIC (c)")
    ap.add_argument("--methods", default=",".join(GRIDS))
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    a = ap.parse_args(argv)
    import anndata as ad

    t0 = time.time()
    params = CosmicParams.from_config(json.loads(a.params))
    methods = tuple(a.methods.split(","))
    adata = ad.read_h5ad(a.cohort)
    split = make_splits(adata.obs, params.fractions, params.seed, params.stratify, params.holdout_samples)
    masks = {s: (split == s).to_numpy() for s in ("train", "val", "test")}
    pre = Preprocessor(params.n_hvg, params.n_rna_pcs, "morph", params.covariates).fit(adata[masks["train"]])
    D = {s: pre.transform(adata[m]) for s, m in masks.items()}
    fm_mean, fm_std = adata.obsm["X_fm"][masks["train"]].mean(0), adata.obsm["X_fm"][masks["train"]].std(0) + 1e-8
    for s, m in masks.items():
        D[s]["fm"] = (np.asarray(adata.obsm["X_fm"][m]) - fm_mean) / fm_std
    tr_ = load_truth(a.truth)
    cells = tr_["cells"].assign(sample=lambda d: d["sample"].astype(str), barcode=lambda d: d["barcode"].astype(str)) \
        .drop_duplicates(["sample", "barcode"]).set_index(["sample", "barcode"])
    for s, m in masks.items():
        sub = adata[m]
        key = pd.MultiIndex.from_arrays([sub.obs["sample"].astype(str), sub.obs["barcode"].astype(str)])
        c = cells.reindex(key)
        if c["cell_type"].isna().any():
            raise SystemExit(f"{int(c['cell_type'].isna().sum())} {s} cells not in the ground truth")
        D[s]["state_frame"] = shared_state_frame(c.reset_index())
        D[s]["state"] = D[s]["state_frame"].to_numpy(float)

    # oracle on the same genes/features, weighted like the achieved totals (test-cell variance)
    g = tr_["genes"].set_index("gene")["oracle_r2"]
    genes = pre.gene_names
    w = D["test"]["expr"].var(0)
    og = g.reindex(genes).to_numpy()
    ok = np.isfinite(og)
    oracle_rna = float((og[ok] * w[ok]).sum() / w[ok].sum())
    mo = tr_["morphology"].set_index("feature")["oracle_r2"]
    names = np.asarray(adata.uns["morph_features"]).astype(str)
    oracle_morph = float(mo.reindex(names).mean())

    # PCA of expression (training cells) for the regressors that predict scores, then reconstruct
    st = pre.state
    comp, gm, pcs = st["components"], st["gene_mean"], st["pc_std"]
    back_expr = lambda z: (z * pcs) @ comp + gm  # noqa: E731

    def score_expr(pred, s):
        return M.total_r2(D[s]["expr"], pred)

    def score_morph(pred, s):
        return M.mean_r2(D[s]["morph"], pred)

    inputs_m2r = {
        "(a) true shared state": "state",
        "(b) X_morph (region properties)": "morph",
        "(b) X_fm (foundation embedding)": "fm",
        "(b) X_morph + X_fm": ("morph", "fm"),
    }
    inputs_r2m = {
        "(a) true shared state": "state",
        "(b) RNA embedding (30 PCs)": "rna",
        "(b) RNA embedding + state-free expression (kept genes, ridge/krr only)": "expr",
    }

    def X(s, key):
        keys = key if isinstance(key, tuple) else (key,)
        return np.hstack([D[s][k] for k in keys])

    rows = []
    for direction, inputs, target, score, back, oracle in (
            ("transcriptome <- morphology", inputs_m2r, "rna", score_expr, back_expr, oracle_rna),
            ("morphology <- transcriptome", inputs_r2m, "morph", score_morph, None, oracle_morph)):
        for label, key in inputs.items():
            t1 = time.time()
            ms = methods if key != "expr" else tuple(m for m in methods if m in ("ridge", "kernel_ridge"))
            res, chosen = best_regressor(X("train", key), D["train"][target], X("val", key), D["val"][target],
                                         X("test", key), score, back, ms)
            sc = lambda p: score(p, "test")  # noqa: E731
            y = D["test"]["expr" if target == "rna" else "morph"]
            stat = M.total_r2 if target == "rna" else M.mean_r2
            ci = M.bootstrap_ci(y, res[chosen][1], stat, n_boot=200, seed=0)
            row = dict(direction=direction, input=label, chosen_on_val=chosen, test=sc(res[chosen][1]),
                       ci_low=ci["ci_low"], ci_high=ci["ci_high"], oracle=oracle,
                       ratio_to_oracle=sc(res[chosen][1]) / oracle,
                       **{f"test_{m}": sc(v[1]) for m, v in res.items()},
                       params=str(res[chosen][2]), seconds=round(time.time() - t1, 1))
            rows.append(row)
            print(f"  {direction:28s} {label:45s} {row['test']:.3f} ({chosen}) {row['seconds']}s", flush=True)

    # (c) COSMIC
    cosmic_metrics = None
    if not a.no_cosmic:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            cosmic_metrics = run_cosmic(a.cohort, tmp / "model", tmp / "pred.h5ad", tmp / "metrics.json",
                                        tmp / "vd.tsv", params=params, truth=a.truth, progress=False)
        vd = cosmic_metrics["variance_decomposition"]
        for direction, k, oracle in (("transcriptome <- morphology", "transcriptome_explained_by_morphology",
                                      oracle_rna),
                                     ("morphology <- transcriptome", "morphology_explained_by_transcriptome",
                                      oracle_morph)):
            for m in ("cosmic", "ridge", "knn"):
                h = vd[k][m]
                rows.append(dict(direction=direction, input=f"(c) {m} in run_cosmic ({params.representation})",
                                 chosen_on_val=m, test=h["value"], ci_low=h["ci_low"], ci_high=h["ci_high"],
                                 oracle=oracle, ratio_to_oracle=h["value"] / oracle))

    table = pd.DataFrame(rows)
    ceil = {d: table[(table.direction == d) & (table.input == "(a) true shared state")]["test"].iloc[0]
            for d in table.direction.unique()}
    table["ratio_to_finite_sample_ceiling"] = table["test"] / table["direction"].map(ceil)

    # how well each measured modality recovers each true shared-state variable (test cells)
    sf = {s: D[s]["state_frame"] for s in masks}
    rec = []
    for label, key in (("X_morph", "morph"), ("X_fm", "fm"), ("X_morph+X_fm", ("morph", "fm")), ("RNA PCs", "rna")):
        for var in ("z_shared", "cycle_position", "dna_content", "type_luminal", "type_basal", "treated_resistant"):
            ytr = sf["train"][[var]].to_numpy(float)
            yva, yte = sf["val"][[var]].to_numpy(float), sf["test"][[var]].to_numpy(float)
            res, ch = best_regressor(X("train", key), ytr, X("val", key), yva, X("test", key),
                                     lambda p, s, yy={"val": yva, "test": yte}: M.total_r2(yy[s], p),
                                     methods=("ridge", "kernel_ridge"))
            rec.append(dict(input=label, variable=var, test_r2=M.total_r2(yte, res[ch][1])))
    recov = pd.DataFrame(rec).pivot(index="variable", columns="input", values="test_r2")

    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.max_colwidth", 60)
    cols = ["direction", "input", "test", "ci_low", "ci_high", "ratio_to_oracle", "ratio_to_finite_sample_ceiling",
            "chosen_on_val"] + [c for c in table.columns if c.startswith("test_")]
    print(f"\ncells train/val/test = {masks['train'].sum()}/{masks['val'].sum()}/{masks['test'].sum()}; "
          f"oracle (test-variance weighted, same genes) transcriptome {oracle_rna:.3f}, "
          f"morphology (mean over {len(names)} features) {oracle_morph:.3f}")
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nTrue shared-state variable recovered from each measured modality (test R², best of ridge/kernel ridge "
          "chosen on val):")
    print(recov.to_string(float_format=lambda v: f"{v:.3f}"))
    if cosmic_metrics is not None:
        print("\nCOSMIC calibration:", {k: round(v, 3) if isinstance(v, float) else v
                                       for k, v in cosmic_metrics["calibration"].items()})
        print("COSMIC matching:", json.dumps({d: {m: round(v["foscttm"], 3) for m, v in x.items()}
                                              for d, x in cosmic_metrics["matching"].items()}))
    print(f"\ntotal {time.time() - t0:.0f}s")
    if a.json:
        Path(a.json).write_text(json.dumps(dict(table=table.to_dict("records"), recovery=recov.to_dict()),
                                           indent=1, default=str))


if __name__ == "__main__":
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)  # the matrices are small: one thread is several times faster than two contending
    with threadpool_limits(1):
        main()
