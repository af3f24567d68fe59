"""Forest plot of the paired differences: COSMIC minus each baseline, split by split, with 95 % CIs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..plotting import _pyplot, not_available, save_figure

FOREST_FIGURE = "paired_differences"
# (direction, space, metric) panels of the forest plot, in reading order
FOREST_PANELS = (
    ("rna_from_morphology", "features", "weighted_r2"),
    ("rna_from_morphology", "features", "median_gene_pearson"),
    ("morphology_from_rna", "features", "weighted_r2"),
    ("morphology_from_rna", "features", "median_gene_pearson"),
    ("morphology_from_rna", "features", "knna_k100"),
    ("morphology_from_rna", "features", "coherence_gap"),
    ("morphology_from_rna", "features", "frechet"),
    ("morphology_from_rna", "features", "conditional_r2"),
)
VERDICT_COLOURS = {"yes": "C2", "no": "C3", "unclear": "0.45"}


def _panel(ax, rows: pd.DataFrame, title: str) -> None:
    if rows.empty:
        not_available(ax, title, "no paired differences for this metric", xlabel="difference")
        return
    y = np.arange(len(rows))[::-1]
    for yi, row in zip(y, rows.itertuples()):
        colour = VERDICT_COLOURS.get(row.method_better, "0.45")
        ax.errorbar(row.diff_mean, yi, xerr=[[row.diff_mean - row.ci_low], [row.ci_high - row.diff_mean]]
                    if np.isfinite(row.ci_low) else None, fmt="o", color=colour, capsize=3)
    ax.axvline(0, color="0.6", lw=1, ls="--")
    ax.set_yticks(y, [f"{r.method} − {r.baseline}" for r in rows.itertuples()], fontsize=8)
    better = rows["better"].iloc[0]
    hint = {"higher": "> 0: method better", "lower": "< 0: method better",
            "half": "closer to 0.5 is better"}.get(better, "")
    ax.set(title=title, xlabel=f"paired difference ({hint})")


def forest_figure(paired: pd.DataFrame, outdir, method: str = "cosmic") -> None:
    """``paired_differences.png`` (+ caption): per metric, ``method`` minus every baseline with its CI."""
    plt = _pyplot()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(FOREST_PANELS) // 2, 2, figsize=(11, 2.3 * len(FOREST_PANELS) // 2))
    for ax, (direction, space, metric) in zip(axes.ravel(), FOREST_PANELS):
        rows = paired[(paired["direction"] == direction) & (paired["space"] == space)
                      & (paired["metric"] == metric) & (paired["method"] == method)]
        _panel(ax, rows, f"{direction}: {metric}")
    n = int(paired["n_splits"].max()) if len(paired) else 0
    fig.suptitle(f"{method} minus each baseline on the same test cells, {n} splits (95 % CI)")
    fig.tight_layout()
    save_figure(fig, outdir / f"{FOREST_FIGURE}.png", dpi=110)
    with atomic_path(outdir / f"{FOREST_FIGURE}.txt") as tmp:
        Path(tmp).write_text(
            f"Paired differences between {method} and each baseline, computed split by split on the same test "
            f"cells and averaged over {n} independent splits; bars are 95 % confidence intervals (Student t with "
            "the Nadeau–Bengio correction for overlapping training sets). Green: the interval excludes no "
            f"difference in {method}'s favour; red: in the baseline's favour; grey: no clear difference.\n")
