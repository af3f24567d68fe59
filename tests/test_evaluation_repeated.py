"""Repeated held-out evaluation end to end on a small synthetic cohort: tables, splits, no leakage."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cosmic.evaluation import baselines as B
from cosmic.evaluation import repeated
from cosmic.evaluation.summary import METRICS, PER_SPLIT_COLUMNS

sys.path.insert(0, str(Path(__file__).parent))
from test_crossmodal import synthetic_cohort  # noqa: E402

PARAMS = dict(epochs=15, patience=5, n_samples=12, n_bootstrap=5, evaluation=dict(n_splits=2, n_generated=3))


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort(n=300, fm_dims=0)


def test_split_tables_hold_every_method_and_metric(cohort, tmp_path):
    table = repeated.run_split(cohort, PARAMS, 1, tmp_path / "split_1.tsv", progress=False)
    assert list(table.columns) == list(PER_SPLIT_COLUMNS)
    assert (table["split"] == 1).all() and set(table["metric"]) <= set(METRICS)
    predictors = table[table["metric"] == "weighted_r2"]
    for direction in ("rna_from_morphology", "morphology_from_rna"):
        assert set(predictors[predictors["direction"] == direction]["method"]) == {
            "cosmic", "mean", "ridge", "spline_ridge", "knn"}
    generation = table[table["metric"] == "knna_k100"]
    assert set(generation["method"]) == {"cosmic", "ridge_residual", "nearest_rna"}
    assert np.isfinite(table["value"]).mean() > 0.95
    assert pd.read_csv(tmp_path / "split_1.tsv", sep="\t").shape == table.shape


def test_no_test_cell_enters_any_fit(cohort, tmp_path, monkeypatch):
    """Every baseline is fitted on the split's training cells (validation cells choose kNN's k only)."""
    seen = []

    def spy(function):
        def wrapped(x_train, y_train, *args, **kwargs):
            seen.append(np.asarray(y_train))
            return function(x_train, y_train, *args, **kwargs)
        return wrapped

    for name in ("predict_all", "ridge_residual_samples", "nearest_rna_samples"):
        monkeypatch.setattr(B, name, spy(getattr(B, name)))
    params = repeated.split_params(PARAMS, 1)
    from cosmic.crossmodal.run import split_cohort

    cells = split_cohort(cohort, params)
    repeated.run_split(cohort, PARAMS, 1, tmp_path / "split.tsv", progress=False)
    n_train = int((cells.split == "train").sum())
    assert seen and all(len(y) == n_train for y in seen)
    # the training targets are the training cells' own (continuous values: a test row would be found)
    test_morph = np.asarray(cells.cohort.obsm["X_morph"])[(cells.split == "test").to_numpy()]
    morph_targets = [y for y in seen if y.shape[1] == test_morph.shape[1]]
    assert morph_targets
    train_rows = {tuple(np.round(r, 6)) for r in morph_targets[0]}
    assert len(train_rows) == n_train


def test_splits_are_independent_draws(cohort):
    from cosmic.crossmodal.run import split_cohort

    tests = [set(split_cohort(cohort, repeated.split_params(PARAMS, i)).split.pipe(lambda s: s[s == "test"]).index)
             for i in range(3)]
    assert tests[0] != tests[1] != tests[2]
    assert all(len(t) > 10 for t in tests)


def test_summary_and_paired_tables_over_splits(cohort, tmp_path):
    paths = []
    for split in range(2):
        paths.append(tmp_path / f"split_{split}.tsv")
        repeated.run_split(cohort, PARAMS, split, paths[-1], progress=False)
    summary, paired = repeated.summarise_splits(paths, tmp_path / "summary.tsv", tmp_path / "paired.tsv")
    assert (summary["n_splits"] == 2).all()
    row = summary[(summary["direction"] == "rna_from_morphology") & (summary["metric"] == "weighted_r2")
                  & (summary["method"] == "cosmic")].iloc[0]
    per = [pd.read_csv(p, sep="\t").query("direction == 'rna_from_morphology' and metric == 'weighted_r2' "
                                          "and method == 'cosmic' and space == 'features'")["value"].item()
           for p in paths]
    assert row["mean"] == pytest.approx(np.mean(per), abs=1e-5)
    assert row["ci_low"] < row["mean"] < row["ci_high"]
    assert {"ridge", "spline_ridge", "knn", "mean", "ridge_residual", "nearest_rna"} <= set(paired["baseline"])


def test_split_zero_reuses_the_fitted_model(cohort, tmp_path):
    """Split 0 loads the `cosmic` rule's model of the same seed instead of refitting: same scores."""
    from cosmic.crossmodal.params import CosmicParams
    from cosmic.crossmodal.run import split_cohort
    from cosmic.crossmodal.train import fit_cosmic

    params = repeated.split_params(PARAMS, 0)
    cells = split_cohort(cohort, params)
    fit_cosmic(cells.cohort, cells.split, params, outdir=tmp_path / "model", progress=False)
    refit = repeated.run_split(cohort, PARAMS, 0, tmp_path / "a.tsv", progress=False)
    loaded = repeated.run_split(cohort, PARAMS, 0, tmp_path / "b.tsv", fitted_model=tmp_path / "model" / "model.pt",
                                progress=False)
    pd.testing.assert_frame_equal(refit, loaded, atol=1e-5)
    with pytest.raises(ValueError, match="another split"):
        repeated.run_split(cohort, PARAMS, 1, tmp_path / "c.tsv", fitted_model=tmp_path / "model" / "model.pt",
                           progress=False)
    assert isinstance(params, CosmicParams)
