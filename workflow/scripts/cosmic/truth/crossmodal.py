"""How close the `cosmic` stage came to the demo's ground truth (``oracle`` of metrics.json).

The demo generator knows each cell's shared latent state and what it explains of each gene and
morphology feature (``ground_truth.tsv``, ``genes.tsv``, ``morphology_oracle.tsv``, ``oracle.json``).
:func:`score_against_truth` compares the held-out results with that oracle
(:func:`oracle_comparison`) and with the finite-sample ceiling reachable from the true state
(:func:`achievable_ceiling`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import metrics as M
from ..crossmodal.celltypes import transfer

ACHIEVABLE_DEFINITION = (
    "finite-sample ceiling: held-out R² (same statistic, genes/features and test cells as the headline) of an "
    "RBF kernel ridge regression from the TRUE latent shared state of the demo generator (cell type, treatment, "
    "response of treated cells, mitotic arrest, polyploidy, cycle position as angle, DNA content, z_shared) to the "
    "MEASURED target, fitted on training cells with (alpha, gamma) chosen on validation cells. Unlike the oracle "
    "(infinite cells, region properties on true masks of isolated nuclei), it pays for a finite training set and "
    "for segmentation/measurement noise, so it is what a predictor given the true state could reach here; a "
    "predictor given only the other measured modality cannot exceed it except by chance. ratio_*: achieved / "
    "ceiling")


def load_truth(truth) -> dict:
    """Demo ground truth from a directory (``ground_truth.tsv``, ``genes.tsv``, ``morphology_oracle.tsv``,
    ``oracle.json``) or a mapping with keys ``cells``, ``genes``, ``morphology``, ``oracle`` (frames/paths)."""
    if truth is None:
        return {}
    if isinstance(truth, (str, Path)):
        d = Path(truth)
        truth = dict(cells=d / "ground_truth.tsv", genes=d / "genes.tsv", morphology=d / "morphology_oracle.tsv",
                     oracle=d / "oracle.json")
    out = {}
    for k, v in truth.items():
        if isinstance(v, (str, Path)):
            v = Path(v)
            if not v.exists():
                continue
            v = json.loads(v.read_text()) if v.suffix == ".json" else pd.read_csv(v, sep="\t")
        out[k] = v
    return out


def shared_state_frame(cells: pd.DataFrame) -> pd.DataFrame:
    """The demo generator's shared latent state of each cell as named numeric columns (see
    ACHIEVABLE_DEFINITION); missing values become 0."""
    def flag(c):
        return cells[c].astype(str).str.lower().eq("true").to_numpy(float) if c in cells else np.zeros(len(cells))
    pos = cells["cycle_position"].to_numpy(float)
    treated = (cells["treatment"].astype(str) != "control").to_numpy(float) if "treatment" in cells \
        else np.zeros(len(cells))
    cols = {f"type_{t}": (cells["cell_type"].astype(str) == t).to_numpy(float)
            for t in ("luminal", "basal", "neuroendocrine")}
    cols.update(treated=treated, treated_resistant=treated * flag("resistant"),
                mitotic_arrest=flag("mitotic_arrest"), polyploid=flag("polyploid"),
                cycle_sin=np.sin(2 * np.pi * pos), cycle_cos=np.cos(2 * np.pi * pos), cycle_position=pos)
    cols.update({c: cells[c].to_numpy(float) for c in ("dna_content", "z_shared") if c in cells})
    return pd.DataFrame(cols).fillna(0.0)


def shared_state_features(cells: pd.DataFrame) -> np.ndarray:
    """:func:`shared_state_frame` as a cells x variables array."""
    return np.nan_to_num(shared_state_frame(cells).to_numpy(float))


def _cells_by_barcode(cells: pd.DataFrame) -> pd.DataFrame:
    """Ground-truth cells indexed by (sample, barcode)."""
    return cells.assign(sample=cells["sample"].astype(str), barcode=cells["barcode"].astype(str)) \
        .drop_duplicates(["sample", "barcode"]).set_index(["sample", "barcode"])


def _truth_of(keyed: pd.DataFrame, adata) -> pd.DataFrame:
    """The ground-truth rows of the cells of ``adata`` (NaN where a cell is not in the truth)."""
    return keyed.reindex(pd.MultiIndex.from_arrays([adata.obs["sample"].astype(str), adata.obs["barcode"].astype(str)]))


def score_against_truth(truth: dict, table: pd.DataFrame, results: dict, *, pre, train_cells, val_cells, test_cells,
                        train_inputs: dict, observed: dict, generated_rep: dict) -> dict:
    """The ``oracle`` entry of metrics.json: :func:`oracle_comparison` plus, when it can be computed,
    ``achievable_ceiling``. Adds the oracle columns to ``table`` (variance_decomposition.tsv).

    ``truth``: :func:`load_truth`; ``train_inputs``/``observed``: preprocessed training/test cells;
    ``generated_rep``: method -> morphology representation predicted from RNA (test cells).
    """
    oracle = oracle_comparison(truth, table, test_cells, train_cells, train_inputs["rep"], generated_rep,
                               observed["rep"], results["variance_decomposition"])
    ceiling = achievable_ceiling(truth, pre, train_cells, val_cells, test_cells, train_inputs, observed["expr"],
                                 observed["morph"], results["variance_decomposition"], oracle)
    if ceiling:
        oracle["achievable_ceiling"] = ceiling
    return oracle


def achievable_ceiling(truth, pre, train_cells, val_cells, test_cells, train_inputs, y_expr, y_morph,
                       variance_decomposition: dict, oracle: dict) -> dict:
    """Finite-sample ceiling from the true shared state (demo only; see ACHIEVABLE_DEFINITION)."""
    cells = truth.get("cells")
    need = {"sample", "barcode", "cell_type", "cycle_position"}
    if cells is None or not need <= set(cells.columns) or len(val_cells) < 3:
        return {}
    keyed = _cells_by_barcode(cells)

    def state(a):
        c = _truth_of(keyed, a)
        return c.reset_index(), c["cell_type"].notna().to_numpy()

    (c_tr, ok_tr), (c_va, ok_va), (c_te, ok_te) = state(train_cells), state(val_cells), state(test_cells)
    if not (ok_tr.all() and ok_va.all() and ok_te.all()):
        return dict(skipped=f"ground truth misses {int((~ok_tr).sum() + (~ok_va).sum() + (~ok_te).sum())} cells")
    started = time.time()
    s_tr, s_va, s_te = (shared_state_features(c) for c in (c_tr, c_va, c_te))
    val_inputs = pre.transform(val_cells)
    vd = variance_decomposition
    out = dict(definition=ACHIEVABLE_DEFINITION)
    for name, y_tr, y_va, y_te, stat, vkey, okey in (
            ("transcriptome", train_inputs["expr"], val_inputs["expr"], y_expr, M.total_r2,
             "transcriptome_explained_by_morphology", ("transcriptome", "oracle_total_r2")),
            ("morphology", train_inputs["morph"], val_inputs["morph"], y_morph, M.mean_r2,
             "morphology_explained_by_transcriptome", ("morphology", "oracle_mean_r2"))):
        fit = M.kernel_ridge_tuned(s_tr, y_tr, s_va, y_va, s_te, statistic=stat)
        ceiling = stat(y_te, fit["test"])
        reference = oracle.get(okey[0], {}).get(okey[1])
        out[name] = dict(ceiling_r2=ceiling, alpha=fit["alpha"], gamma=fit["gamma"],
                         ceiling_over_oracle=ceiling / reference if reference else None,
                         **{f"ratio_{m}": v["value"] / ceiling for m, v in vd[vkey].items()},
                         ratio_ci_cosmic=[vd[vkey]["cosmic"]["ci_low"] / ceiling,
                                          vd[vkey]["cosmic"]["ci_high"] / ceiling])
    out["seconds"] = time.time() - started
    return out


def oracle_comparison(truth, table, test_cells, train_cells, train_rep, generated_rep, y_rep,
                      variance_decomposition: dict) -> dict:
    """Achieved vs oracle R² (genes by program, features), and cell types/phases read from morphology
    against the true ones. Adds ``oracle_r2``, ``program`` and ``r2_over_oracle`` columns to ``table``."""
    out = {}
    genes_t = truth.get("genes")
    if genes_t is not None and "oracle_r2" in genes_t:
        out.update(_gene_oracle(truth, genes_t, table, variance_decomposition))
    morph_t = truth.get("morphology")
    if morph_t is not None and "oracle_r2" in morph_t:
        out["morphology"] = _feature_oracle(truth, morph_t, table, variance_decomposition)
    if "oracle_r2" in table:
        table["r2_over_oracle"] = table["r2_cosmic"] / table["oracle_r2"]
    cells = truth.get("cells")
    if cells is not None and "cell_type" in cells:
        keyed = _cells_by_barcode(cells)
        lt, le = _truth_of(keyed, train_cells), _truth_of(keyed, test_cells)
        ok_t, ok_e = lt["cell_type"].notna().to_numpy(), le["cell_type"].notna().to_numpy()
        if ok_t.sum() > 2 and ok_e.sum() > 2:
            generated = {m: p[ok_e] for m, p in generated_rep.items()}
            out["cell_type_transfer_truth"] = transfer(
                train_rep[ok_t], lt["cell_type"].to_numpy()[ok_t].astype(str),
                le["cell_type"].to_numpy()[ok_e].astype(str), generated, y_rep[ok_e])
            if "phase" in le:
                out["phase_transfer_truth"] = transfer(
                    train_rep[ok_t], lt["phase"].to_numpy()[ok_t].astype(str),
                    le["phase"].to_numpy()[ok_e].astype(str), generated, y_rep[ok_e])
        out["n_test_cells_matched_to_truth"] = int(ok_e.sum())
    return out


def _gene_oracle(truth, genes_t, table, variance_decomposition) -> dict:
    """Per-gene oracle R² and programs into ``table``; R² by program and the transcriptome oracle ratio."""
    out = {}
    g = genes_t.set_index("gene")
    sel = table["direction"] == "morphology_to_rna"
    feats = table.loc[sel, "feature"]
    table.loc[sel, "oracle_r2"] = feats.map(g["oracle_r2"]).to_numpy()
    if "program" in g:
        table.loc[sel, "program"] = feats.map(g["program"]).to_numpy()
        # ranks among all kept genes (1 = best predicted), by COSMIC and by the oracle
        tg = table[sel].assign(rank=lambda d: d["r2_cosmic"].rank(ascending=False),
                               oracle_rank=lambda d: d["oracle_r2"].rank(ascending=False))
        out["r2_by_program"] = {str(k): dict(median_r2=float(v["r2_cosmic"].median()),
                                             mean_r2=float(v["r2_cosmic"].mean()),
                                             median_oracle_r2=float(v["oracle_r2"].median()),
                                             median_rank=float(v["rank"].median()),
                                             median_oracle_rank=float(v["oracle_rank"].median()),
                                             n=int(len(v)))
                                for k, v in tg.groupby("program")}
        out["n_genes_ranked"] = int(len(tg))
        top = tg.sort_values("r2_cosmic", ascending=False).head(50)
        out["top50_genes_programs"] = top["program"].value_counts().to_dict()
    # oracle total on the same genes, weighted by test-cell variance like the achieved total
    tg = table[sel & table["oracle_r2"].notna()]
    w = tg["variance"].to_numpy()
    oracle_total = float((tg["oracle_r2"] * w).sum() / w.sum())
    ach = variance_decomposition["transcriptome_explained_by_morphology"]
    out["transcriptome"] = dict(oracle_total_r2=oracle_total, oracle_total_r2_reported=truth.get("oracle", {}).get(
        "rna_total_oracle_r2"), **{f"ratio_{m}": v["value"] / oracle_total for m, v in ach.items()},
        ratio_ci_cosmic=[ach["cosmic"]["ci_low"] / oracle_total, ach["cosmic"]["ci_high"] / oracle_total])
    return out


def _feature_oracle(truth, morph_t, table, variance_decomposition) -> dict:
    """Per-feature oracle R² into ``table``; the morphology oracle ratio."""
    mt = morph_t.set_index("feature")
    sel = table["direction"] == "rna_to_morphology"
    table.loc[sel, "oracle_r2"] = table.loc[sel, "feature"].map(mt["oracle_r2"]).to_numpy()
    tm = table[sel & table["oracle_r2"].notna()]
    oracle_mean = float(tm["oracle_r2"].mean())
    ach = variance_decomposition["morphology_explained_by_transcriptome"]
    return dict(oracle_mean_r2=oracle_mean, n_features_with_oracle=int(len(tm)),
                oracle_mean_r2_reported=truth.get("oracle", {}).get("morphology_total_oracle_r2_standardised"),
                achieved_mean_r2_same_features=float(tm["r2_cosmic"].mean()),
                **{f"ratio_{m}": float(tm[f"r2_{m}"].mean()) / oracle_mean for m in ("cosmic", "ridge", "knn", "mean")},
                ratio_ci_cosmic=[ach["cosmic"]["ci_low"] / oracle_mean, ach["cosmic"]["ci_high"] / oracle_mean])
