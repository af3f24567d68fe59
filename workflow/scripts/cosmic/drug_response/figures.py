"""The four drug-response figures, each saved with a one-line caption ``<name>.txt`` beside it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..layout import DRUG_RESPONSE_FIGURES
from ..plotting import _pyplot, not_available, save_figure
from .classification import FEATURE_SETS
from .comparisons import COMPARISONS, Comparison
from .params import DrugResponseParams


def _write_caption(path: Path, caption: str) -> None:
    with atomic_path(path.with_suffix(".txt")) as tmp:
        tmp.write_text(caption.strip() + "\n")


def plot_volcano(de: Mapping[str, pd.DataFrame], comps: Mapping[str, Comparison], path,
                 params: DrugResponseParams, n_labels: int = 8) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(COMPARISONS), figsize=(6.2 * len(COMPARISONS), 4.8), squeeze=False)
    for ax, name in zip(axes[0], COMPARISONS):
        comp, table = comps[name], de.get(name)
        xlabel = f"log2 fold change ({comp.group} / {comp.reference})"
        if comp.skipped or table is None or not len(table):
            not_available(ax, comp.title, comp.skipped or "no genes tested", xlabel, "-log10 adjusted p")
            continue
        lfc = table["logfoldchange"].to_numpy(float)
        y = -np.log10(np.clip(table["pval_adj"].to_numpy(float), 1e-300, 1))
        sig = table["significant"].to_numpy(bool)
        up, down = sig & (table["score"].to_numpy() > 0), sig & (table["score"].to_numpy() < 0)
        ax.scatter(lfc[~sig], y[~sig], s=6, c="0.7", label=f"not significant ({(~sig).sum()})", rasterized=True)
        ax.scatter(lfc[up], y[up], s=9, c="C3", label=f"higher in {comp.group} ({up.sum()})")
        ax.scatter(lfc[down], y[down], s=9, c="C0", label=f"higher in {comp.reference} ({down.sum()})")
        ax.axhline(-np.log10(params.fdr), color="k", ls=":", lw=0.8)
        for i in np.argsort(-np.abs(table["score"].to_numpy()))[:n_labels]:
            ax.annotate(str(table["gene"].iloc[i]), (lfc[i], y[i]), fontsize=7, xytext=(3, 2),
                        textcoords="offset points")
        ax.set(title=f"{comp.title}: {comp.n_group} vs {comp.n_reference} cells", xlabel=xlabel,
               ylabel="-log10 BH-adjusted p (Wilcoxon)")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Differential expression")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    _write_caption(path, f"Wilcoxon rank-sum test of every gene (scanpy), BH-adjusted; coloured: FDR < {params.fdr} "
                         "(dotted line); the genes with the largest |z| are named.")


def plot_morphology_effects(morph: pd.DataFrame, comps: Mapping[str, Comparison], path,
                            params: DrugResponseParams) -> None:
    plt = _pyplot()
    n_feat = max(morph["feature"].nunique(), 1)
    fig, axes = plt.subplots(1, len(COMPARISONS), figsize=(6 * len(COMPARISONS), 1.2 + 0.22 * n_feat),
                             squeeze=False)
    order = None
    for ax, name in zip(axes[0], COMPARISONS):
        comp = comps[name]
        xlabel = f"Cohen's d ({comp.group} − {comp.reference})"
        t = morph[morph["comparison"] == name]
        if comp.skipped or t.empty or not t["cohens_d"].notna().any():
            not_available(ax, comp.title, comp.skipped or "no features tested", xlabel, "region-property feature")
            continue
        if order is None:
            order = t.assign(a=t["cohens_d"].abs()).sort_values("a", na_position="first")["feature"].tolist()
        t = t.set_index("feature").reindex(order)
        d = t["cohens_d"].to_numpy(float)
        sig = t["significant"].eq(True).to_numpy(bool)
        colors = np.where(sig, np.where(d > 0, "C3", "C0"), "0.75")
        yy = np.arange(len(order))
        ax.barh(yy, np.nan_to_num(d), color=colors)
        for yi, di, s, q in zip(yy, np.nan_to_num(d), sig, t["qval"].to_numpy(float)):
            if s:
                stars = "***" if q < params.fdr / 50 else "**" if q < params.fdr / 5 else "*"
                ax.text(di + (0.02 if di >= 0 else -0.02), yi, stars, va="center", ha="left" if di >= 0 else "right",
                        fontsize=7)
        ax.set_yticks(yy)
        ax.set_yticklabels([f.removeprefix("morph_") for f in order], fontsize=7)
        ax.axvline(0, color="k", lw=0.6)
        lim = np.nanmax(np.abs(d)) * 1.25 + 0.05
        ax.set_xlim(-lim, lim)
        ax.set(title=f"{comp.title}", xlabel=xlabel, ylabel="region-property feature")
    fig.suptitle("Nuclear morphology differences (Mann-Whitney U, BH FDR)")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    _write_caption(path, f"Effect size (Cohen's d) of every region-property feature; coloured and starred: FDR < "
                         f"{params.fdr} (* < {params.fdr}, ** < {params.fdr / 5:g}, *** < {params.fdr / 50:g}); "
                         "red: higher in the tested group, blue: lower.")


def plot_classifier_auc(clf: pd.DataFrame, comps: Mapping[str, Comparison], path, params: DrugResponseParams) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(COMPARISONS), figsize=(5.2 * len(COMPARISONS), 4.2), squeeze=False)
    for ax, name in zip(axes[0], COMPARISONS):
        comp = comps[name]
        t = clf[(clf["comparison"] == name) & clf["auc"].notna()]
        if comp.skipped or t.empty:
            not_available(ax, comp.title, comp.skipped or "no feature set available", "features",
                           "held-out ROC AUC")
            continue
        x = np.arange(len(t))
        bars = ax.bar(x, t["auc"], color=[f"C{FEATURE_SETS.index(f)}" for f in t["features"]])
        ax.scatter(x, t["balanced_accuracy"], color="k", marker="_", s=300, zorder=3, label="balanced accuracy")
        for b, v in zip(bars, t["auc"]):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", fontsize=8)
        ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
        ax.set_xticks(x)
        ax.set_xticklabels(t["features"], rotation=20, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set(title=f"{comp.title}", xlabel="features", ylabel="held-out ROC AUC")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Predicting the group from each modality ({params.cv_folds}-fold logistic regression)")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    _write_caption(path, "ROC AUC (bars) and balanced accuracy (black ticks) of held-out predictions of standardised "
                         "logistic regression from each representation; dashed: chance.")


def plot_morphology_associated_genes(assoc: pd.DataFrame, comps: Mapping[str, Comparison], path,
                                     params: DrugResponseParams) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8))
    comp = comps["response"]
    scored = assoc[assoc["morphology_association"].notna()]
    if comp.skipped or scored.empty:
        reason = comp.skipped or "no gene has both a morphology R² and a resistant-vs-responsive effect"
        not_available(axes[0], "genes: morphology R² vs resistance effect", reason,
                       f"|Cohen's d| ({params.resistant} vs {params.responsive})", "held-out R² from morphology")
        not_available(axes[1], "top morphology-associated genes", reason, "morphology association",
                       "gene")
    else:
        sig = scored["significant"].eq(True).to_numpy(bool)
        d = scored["cohens_d"].abs().to_numpy(float)
        r2 = scored["r2_cosmic"].to_numpy(float)
        axes[0].scatter(d[~sig], r2[~sig], s=6, c="0.7", label="not DE", rasterized=True)
        axes[0].scatter(d[sig], r2[sig], s=10, c="C3", label=f"DE (FDR < {params.fdr})")
        for _, row in scored.head(10).iterrows():
            axes[0].annotate(row["gene"], (abs(row["cohens_d"]), row["r2_cosmic"]), fontsize=7, xytext=(3, 2),
                             textcoords="offset points")
        axes[0].axhline(0, color="grey", lw=0.5)
        axes[0].set_ylim(max(-0.2, np.nanmin(r2) - 0.02), None)
        axes[0].set(title="genes: morphology R² vs resistance effect",
                    xlabel=f"|Cohen's d| ({params.resistant} vs {params.responsive}, treated cells)",
                    ylabel="held-out R² from morphology (COSMIC)")
        axes[0].legend(fontsize=7)
        top = scored.head(params.top_n).iloc[::-1]
        up = top["cohens_d"].to_numpy(float) > 0
        axes[1].barh(np.arange(len(top)), top["morphology_association"], color=np.where(up, "C3", "C0"))
        axes[1].set_yticks(np.arange(len(top)))
        stars = [" *" if s else "" for s in top["significant"].eq(True)]
        axes[1].set_yticklabels([f"{g}{s}" for g, s in zip(top["gene"], stars)], fontsize=7)
        axes[1].set(title=f"top {len(top)} morphology-associated genes", xlabel="max(R², 0) × |Cohen's d|",
                    ylabel="gene (* DE)")
        from matplotlib.patches import Patch

        axes[1].legend(handles=[Patch(color="C3", label=f"higher in {params.resistant}"),
                                Patch(color="C0", label=f"higher in {params.responsive}")], fontsize=7,
                       loc="lower right")
    fig.suptitle("Genes predicted from morphology and linked to the resistant state")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    _write_caption(path, "Left: held-out R² of each gene predicted from morphology against its resistant-vs-"
                         "responsive effect size; right: genes ranked by their product (red: higher in resistant "
                         "cells, blue: lower; * significantly DE).")


def plot_figures(figdir, de: Mapping[str, pd.DataFrame], morph: pd.DataFrame, clf: pd.DataFrame,
                 assoc: pd.DataFrame, comps: Mapping[str, Comparison], params: DrugResponseParams) -> list[Path]:
    """Draw every figure named in :data:`cosmic.layout.DRUG_RESPONSE_FIGURES` as ``figdir/<name>.png``.

    Returns the png paths (each has its caption ``<name>.txt`` beside it).
    """
    draw = {
        "volcano": lambda path: plot_volcano(de, comps, path, params),
        "morphology_effects": lambda path: plot_morphology_effects(morph, comps, path, params),
        "classifier_auc": lambda path: plot_classifier_auc(clf, comps, path, params),
        "morphology_associated_genes": lambda path: plot_morphology_associated_genes(assoc, comps, path, params),
    }
    if set(draw) != set(DRUG_RESPONSE_FIGURES):
        raise RuntimeError(f"drug_response: figures drawn {sorted(draw)} differ from the declared ones "
                           f"{sorted(DRUG_RESPONSE_FIGURES)} (cosmic.layout)")
    paths = [Path(figdir) / f"{name}.png" for name in DRUG_RESPONSE_FIGURES]
    for name, path in zip(DRUG_RESPONSE_FIGURES, paths):
        draw[name](path)
    return paths
