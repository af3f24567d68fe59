"""Cell cycle from nuclear morphology: DNA-content and area features, the 2N/4N mixture, and held-out
phase and position predicted from morphology features."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import CosmicInputError
from .params import AREA_FEATURE, DNA_FEATURE, TWO_PI


def find_feature(names: Sequence[str], kind: str) -> str | None:
    """The DNA-content (``kind="dna"``) or nuclear-area (``kind="area"``) feature among ``names``.

    Image-derived cohorts have ``morph_dna_integrated`` / ``morph_area``; morphology tables are
    searched for a summed/integrated DAPI/DNA/Hoechst intensity and for an area or size column.
    """
    names = [str(n) for n in names]
    low = [n.lower() for n in names]
    if kind == "dna":
        if DNA_FEATURE in names:
            return DNA_FEATURE
        for i, n in enumerate(low):
            if any(t in n for t in ("dna", "dapi", "hoechst")) and any(t in n for t in ("integrated", "sum", "total")) \
                    and "adjust" not in n:
                return names[i]
        return None
    if kind == "area":
        for want in (AREA_FEATURE, "morph_size", "morph_nuclear_area", "morph_nucleus_area"):
            if want in names:
                return want
        for i, n in enumerate(low):
            if "area" in n or n.endswith("size"):
                return names[i]
        return None
    raise ValueError(kind)


def log_dna(values, feature: str) -> np.ndarray:
    """Natural log of DNA content from a feature: features named ``*log10*`` / ``*log2*`` / ``*log*``
    are already on a log scale; others must be positive (non-positive values become NaN)."""
    v = np.asarray(values, dtype=np.float64)
    name = feature.lower()
    if "log10" in name:
        return v * math.log(10)
    if "log2" in name:
        return v * math.log(2)
    if "log" in name:
        return v
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 0, np.log(np.where(v > 0, v, 1.0)), np.nan)


class DnaContentModel:
    """2N/4N Gaussian mixture on log DNA content, fitted per group (sample), seeded.

    Groups with fewer than ``min_cells`` finite values use the pooled fit.
    """

    def __init__(self, seed: int = 0, s_max_posterior: float = 0.9, min_cells: int = 20):
        self.seed, self.s_max_posterior, self.min_cells = seed, s_max_posterior, min_cells
        self.models: dict = {}

    @staticmethod
    def _key(g):
        return str(g)

    def _fit_one(self, x):
        from sklearn.mixture import GaussianMixture

        gm = GaussianMixture(n_components=2, random_state=self.seed, n_init=3).fit(x[:, None])
        order = np.argsort(gm.means_.ravel())
        return gm, order

    def fit(self, log_dna, groups=None) -> "DnaContentModel":
        x = np.asarray(log_dna, dtype=float)
        groups = np.full(len(x), "all", dtype=object) if groups is None else np.asarray(groups, dtype=object)
        ok = np.isfinite(x)
        if ok.sum() < 4:
            raise CosmicInputError(f"DNA content: only {int(ok.sum())} cells with a positive DNA intensity; "
                                   "need at least 4 to find the 2N and 4N peaks")
        self.models = {None: self._fit_one(x[ok])}
        for g in pd.unique(groups):
            sel = ok & (groups == g)
            if sel.sum() >= self.min_cells:
                self.models[self._key(g)] = self._fit_one(x[sel])
        return self

    def peaks(self) -> dict:
        out = {}
        for k, (gm, order) in self.models.items():
            mu = gm.means_.ravel()[order]
            out["pooled" if k is None else k] = {"log_2N": float(mu[0]), "log_4N": float(mu[1]),
                                                 "ratio_4N_2N": float(np.exp(mu[1] - mu[0]))}
        return out

    def predict(self, log_dna, groups=None) -> pd.DataFrame:
        """``dna_n`` (content in N, 2N peak = 2), ``p_4n``, ``dna_ploidy`` (2N / 4N) and ``phase_dna``."""
        x = np.asarray(log_dna, dtype=float)
        groups = np.full(len(x), "all", dtype=object) if groups is None else np.asarray(groups, dtype=object)
        dna_n = np.full(len(x), np.nan)
        p4 = np.full(len(x), np.nan)
        phase = np.full(len(x), None, dtype=object)
        ploidy = np.full(len(x), None, dtype=object)
        for g in pd.unique(groups):
            sel = (groups == g) & np.isfinite(x)
            if not sel.any():
                continue
            gm, order = self.models.get(self._key(g), self.models[None])
            mu = gm.means_.ravel()[order]
            post = gm.predict_proba(x[sel][:, None])[:, order]
            dna_n[sel] = 2.0 * np.exp(x[sel] - mu[0])
            p4[sel] = post[:, 1]
            call = np.where(post[:, 1] > 0.5, "G2M", "G1").astype(object)
            ploidy[sel] = np.where(post[:, 1] > 0.5, "4N", "2N")
            sd = np.sqrt(gm.covariances_.ravel()[order])
            xs = x[sel]
            between = (xs > mu[0]) & (xs < mu[1])
            # S: between the peaks and either not clearly one of them, or outside the central 95% of both
            outside_both = ((xs - mu[0]) / sd[0] > 1.96) & ((mu[1] - xs) / sd[1] > 1.96)
            between &= (post.max(1) < self.s_max_posterior) | outside_both
            call[between] = "S"
            phase[sel] = call
        return pd.DataFrame({"dna_n": dna_n, "p_4n": p4, "dna_ploidy": ploidy, "phase_dna": phase})


def dna_content_phases(dna, groups=None, seed: int = 0, s_max_posterior: float = 0.9,
                       feature: str = DNA_FEATURE) -> tuple[pd.DataFrame, DnaContentModel]:
    """Fit :class:`DnaContentModel` on a DNA-content feature and call every cell (see the class)."""
    x = log_dna(dna, feature)
    model = DnaContentModel(seed=seed, s_max_posterior=s_max_posterior).fit(x, groups)
    return model.predict(x, groups), model


def _cv_splits(labels, n_splits):
    counts = pd.Series(labels).value_counts()
    return int(min(n_splits, counts.min())) if len(counts) >= 2 else 0


def morphology_phase_cv(x, labels, seed: int = 0, n_splits: int = 5) -> np.ndarray | None:
    """Held-out phase predictions from morphology (standardised features, multinomial logistic
    regression), by stratified ``cross_val_predict``; None when a class has fewer than 2 cells."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels, dtype=object)
    k = _cv_splits(labels, n_splits)
    if k < 2:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, solver="newton-cg"))
    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    return cross_val_predict(model, x, labels.astype(str), cv=StratifiedKFold(k, shuffle=True, random_state=seed))


def morphology_position_cv(x, position, seed: int = 0, n_splits: int = 5) -> np.ndarray:
    """Held-out position from morphology: ridge regression of (cos, sin) of ``position``
    (``cross_val_predict``, shuffled K folds), angle of the prediction."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    position = np.asarray(position, dtype=float)
    k = int(min(n_splits, len(position)))
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
    y = np.c_[np.cos(position), np.sin(position)]
    pred = cross_val_predict(model, np.nan_to_num(np.asarray(x, dtype=np.float64)), y,
                             cv=KFold(k, shuffle=True, random_state=seed))
    return np.arctan2(pred[:, 1], pred[:, 0]) % TWO_PI
