"""Train / validation / test split of paired cells.

Splits are made per stratum (by default per sample) so every sample contributes the same
fractions to each split; optionally whole samples are held out as the test set, which tests
generalisation to an unseen sample rather than to unseen cells of seen samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .errors import CosmicInputError

SPLITS = ("train", "val", "test")


def _check_fractions(fractions) -> tuple[float, float, float]:
    try:
        f = tuple(float(x) for x in fractions)
    except (TypeError, ValueError):
        raise CosmicInputError(f"split fractions must be three numbers (train, val, test), got {fractions!r}")
    if len(f) != 3 or any(not np.isfinite(x) or x < 0 for x in f) or f[0] <= 0 or abs(sum(f) - 1) > 1e-6:
        raise CosmicInputError(
            f"split fractions must be three non-negative numbers (train, val, test) with train > 0 "
            f"summing to 1, got {fractions!r}")
    return f


def _allocate(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Cell counts per split for a stratum of ``n`` cells (rounded, train takes the rest)."""
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    if n >= 3:  # keep at least one training cell and one cell in each requested split
        n_val = max(n_val, 1) if fractions[1] > 0 else 0
        n_test = max(n_test, 1) if fractions[2] > 0 else 0
    while n_val + n_test >= n and n > 0:
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        elif n_val > 0:
            n_val -= 1
        else:
            break
    return n - n_val - n_test, n_val, n_test


def make_splits(obs: pd.DataFrame, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                stratify: str | None = "sample", holdout_samples: Sequence[str] | None = None,
                sample_key: str = "sample") -> pd.Series:
    """Assign every cell to ``"train"``, ``"val"`` or ``"test"``.

    Within each stratum (the values of ``obs[stratify]``; one stratum when ``None``) cells are
    shuffled with ``seed`` and cut by ``fractions`` (train, val, test). With ``holdout_samples``
    those samples become the test set entirely and the remaining cells are split between train
    and val in the ratio of the first two fractions. Returns a categorical Series on ``obs.index``.
    """
    f = _check_fractions(fractions)
    n = len(obs)
    out = np.empty(n, dtype=object)
    keep = np.ones(n, dtype=bool)
    if holdout_samples:
        holdout = [str(s) for s in holdout_samples]
        if sample_key not in obs:
            raise CosmicInputError(f"holdout_samples needs an obs column '{sample_key}'")
        samples = obs[sample_key].astype(str).to_numpy()
        unknown = sorted(set(holdout) - set(samples))
        if unknown:
            raise CosmicInputError(
                f"holdout_samples {unknown} are not samples of the cohort; known samples: {sorted(set(samples))}")
        held = np.isin(samples, holdout)
        if held.all():
            raise CosmicInputError("holdout_samples covers every sample: no cells are left for training")
        out[held] = "test"
        keep = ~held
        tv = f[0] + f[1]
        f = (f[0] / tv, f[1] / tv, 0.0)
    if stratify is None:
        strata = np.zeros(n, dtype=object)
    else:
        if stratify not in obs:
            raise CosmicInputError(f"cannot stratify the split by '{stratify}': no such obs column")
        strata = obs[stratify].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    for group in sorted(set(strata[keep])):
        idx = np.flatnonzero(keep & (strata == group))
        idx = idx[rng.permutation(len(idx))]
        n_train, n_val, _ = _allocate(len(idx), f)
        out[idx[:n_train]] = "train"
        out[idx[n_train:n_train + n_val]] = "val"
        out[idx[n_train + n_val:]] = "test"
    return pd.Series(pd.Categorical(out, categories=list(SPLITS)), index=obs.index, name="split")


def subset_indices(n: int, size: int, rng) -> np.ndarray:
    """Ascending indices of at most ``size`` of ``n`` items: all of them, or a random subset drawn
    without replacement by ``rng`` (a numpy Generator or a seed)."""
    size = max(0, int(size))
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(rng).choice(n, size, replace=False))
