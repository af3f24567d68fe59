"""The ``diffusion`` method of the cosmic stage: the residual diffusion recovers a known conditional
distribution, the expression head covers every kept gene of a sparse matrix, fits are reproducible
from the seed and resume after an interruption."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from cosmic import crossmodal as cm
from cosmic.crossmodal.diffusion import ResidualDiffusion
from cosmic.crossmodal.diffusion_model import DiffusionCosmicModel
from cosmic.crossmodal.prediction import predict
from cosmic.splits import make_splits
from test_crossmodal import FAST, synthetic_cohort

DIFFUSION = {**FAST, "method": "diffusion", "latent_dim": 0, "epochs": 15, "patience": 5, "residual_rank": 4,
             "diffusion_steps": 8, "diffusion_layers": 2, "head_rank": 4}


def _toy(n: int, seed: int):
    """Residuals whose spread depends on the condition (SD 0.2 below 0, 1.0 above) and whose first two
    outputs are correlated (0.8 · r1 + noise); the third is independent noise."""
    g = torch.Generator().manual_seed(seed)
    c = torch.rand((n, 1), generator=g) * 2 - 1
    sd = 0.2 + 0.8 * (c[:, 0] > 0).float()
    r1 = sd * torch.randn(n, generator=g)
    r2 = 0.8 * r1 + 0.3 * torch.randn(n, generator=g)
    r3 = 0.5 * torch.randn(n, generator=g)
    return c, torch.stack([r1, r2, r3], 1)


def test_residual_diffusion_recovers_a_known_heteroscedastic_correlated_posterior():
    torch.manual_seed(0)
    c, r = _toy(4000, seed=0)
    model = ResidualDiffusion(3, 1, rank=2, hidden=64, n_layers=2, n_steps=20)
    model.fit_basis(r)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(1200):
        idx = torch.randint(0, len(c), (256,), generator=g)
        loss = model.loss(r[idx], c[idx], generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    draws = model.sample(torch.tensor([[-0.5], [0.5]]), 2000, torch.Generator().manual_seed(2)).numpy()
    low, high = draws[:, 0], draws[:, 1]
    # spread follows the condition: true SD of output 1 is 0.2 at c < 0 and 1.0 at c > 0
    assert 0.12 < low[:, 0].std() < 0.32 and 0.8 < high[:, 0].std() < 1.2
    # the joint structure: true correlation of outputs 1 and 2 is 0.94 at c > 0
    assert np.corrcoef(high[:, 0], high[:, 1])[0, 1] > 0.85
    # the output outside the basis keeps its SD (0.5) as independent noise
    assert 0.4 < high[:, 2].std() < 0.6 and abs(np.corrcoef(high[:, 0], high[:, 2])[0, 1]) < 0.1
    # each cell's draws are centred on its conditional mean (up to the independent leftover noise)
    assert np.abs(draws.mean(0)).max() < 0.05


def test_basis_leaves_the_variance_outside_the_leading_directions_to_independent_noise():
    c, r = _toy(3000, seed=3)
    model = ResidualDiffusion(3, 1, rank=1, hidden=8, n_layers=1, n_steps=4)
    model.fit_basis(r)
    explained = (model.basis[0] * model.score_scale[0]) ** 2
    total = r.var(0, unbiased=False)
    assert torch.allclose(explained + model.leftover_sd ** 2, total, rtol=1e-3)
    assert torch.allclose(model.basis @ model.basis.T, torch.eye(1), atol=1e-5)


def _sparse_cohort(n=240, n_genes=50):
    a = synthetic_cohort(n=n, n_genes=n_genes)
    x = np.asarray(a.X)
    x[:, :5] = 0.0  # genes with no expression carry no signal and are dropped
    x[x < np.quantile(x, 0.5)] = 0.0  # half the entries zero, as in counts
    a.X = sp.csr_matrix(x)
    return a


def test_expression_head_covers_every_kept_gene_of_a_sparse_matrix():
    a = _sparse_cohort()
    split = make_splits(a.obs, seed=0)
    fit = cm.fit_cosmic(a, split, cm.CosmicParams.from_config({**DIFFUSION, "n_hvg": 0}), progress=False)
    model, pre = fit["model"], fit["preprocessor"]
    assert isinstance(model, DiffusionCosmicModel)
    kept = int((np.asarray(a[split == "train"].X.todense()).var(0) > 0).sum())
    assert len(pre.gene_names) == kept == a.n_vars - 5
    assert model.expr_head.factors.out_features == kept
    test = a[(split == "test").to_numpy()]
    out = predict(model, pre, test, n_samples=10, seed=0)
    assert out["expr_mean"].shape == (test.n_obs, kept)
    assert out["expr_samples"].shape == (10, test.n_obs, kept)
    # the RNA embedding of a prediction is the training PCA of its expression
    assert np.allclose(out["rna_mean"], pre.rna_embedding(out["expr_mean"]), atol=1e-4)


def _fit_predict(a, split, params, outdir=None):
    fit = cm.fit_cosmic(a, split, params, outdir=outdir, progress=False)
    test = a[(split == "test").to_numpy()]
    return fit, predict(fit["model"], fit["preprocessor"], test, n_samples=8, seed=params.seed)


def test_same_seed_same_model_and_draws_other_seed_other_draws():
    a = synthetic_cohort(n=240)
    split = make_splits(a.obs, seed=0)
    _, first = _fit_predict(a, split, cm.CosmicParams.from_config(DIFFUSION))
    _, again = _fit_predict(a, split, cm.CosmicParams.from_config(DIFFUSION))
    _, other = _fit_predict(a, split, cm.CosmicParams.from_config({**DIFFUSION, "seed": 1}))
    for key in ("expr_mean", "expr_samples", "morph_mean", "morph_samples"):
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.allclose(first["morph_samples"], other["morph_samples"])


def test_training_resumes_after_an_interruption_between_phases(tmp_path, monkeypatch):
    a = synthetic_cohort(n=240)
    split = make_splits(a.obs, seed=0)
    params = cm.CosmicParams.from_config(DIFFUSION)
    _, uninterrupted = _fit_predict(a, split, params)

    original = DiffusionCosmicModel.fit_residual_bases

    def interrupt(self, train, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DiffusionCosmicModel, "fit_residual_bases", interrupt)
    with pytest.raises(KeyboardInterrupt):
        cm.fit_cosmic(a, split, params, outdir=tmp_path, progress=False)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["fingerprint"].endswith(":morph_head") and saved["train_state"]["done"]

    monkeypatch.setattr(DiffusionCosmicModel, "fit_residual_bases", original)
    fit, resumed = _fit_predict(a, split, params, outdir=tmp_path)
    assert list(fit["history"]["phase"].unique()) == ["expr_head", "morph_head", "residual"]
    for key in ("expr_mean", "morph_mean", "morph_samples"):
        np.testing.assert_allclose(resumed[key], uninterrupted[key], rtol=1e-5, atol=1e-6)
    assert (tmp_path / "model.pt").exists()
    model, _, loaded = cm.load_model(tmp_path / "model.pt")
    assert isinstance(model, DiffusionCosmicModel) and loaded.method == "diffusion"


def test_prediction_in_cell_chunks_keeps_a_few_draws_and_counts_coverage_over_all(monkeypatch):
    from cosmic import metrics as M
    from cosmic.crossmodal import prediction

    a = synthetic_cohort(n=240)
    split = make_splits(a.obs, seed=0)
    fit = cm.fit_cosmic(a, split, cm.CosmicParams.from_config(DIFFUSION), progress=False)
    test = a[(split == "test").to_numpy()]
    whole = predict(fit["model"], fit["preprocessor"], test, n_samples=40, seed=0, level=0.9)
    for key in ("expr", "morph"):  # counted while sampling = computed from all returned draws
        direct = M.interval_coverage(whole[f"observed_{key}"], whole[f"{key}_samples"], 0.9)["coverage"]
        assert whole["coverage"][key] == pytest.approx(direct, abs=1e-6)
    monkeypatch.setattr(prediction, "SAMPLE_BUDGET", 40 * 60 * 3)  # three cells per chunk
    chunked = predict(fit["model"], fit["preprocessor"], test, n_samples=40, seed=0, keep=2, level=0.9)
    assert chunked["expr_samples"].shape == (2, test.n_obs, whole["expr_mean"].shape[1])
    np.testing.assert_allclose(chunked["expr_mean"], whole["expr_mean"], rtol=1e-5, atol=1e-6)
    for key in ("expr", "morph"):
        assert abs(chunked["coverage"][key] - whole["coverage"][key]) < 0.05


def test_mean_heads_are_the_average_of_independently_trained_members(tmp_path):
    from cosmic.crossmodal.prediction import to_tensors

    a = synthetic_cohort(n=240)
    split = make_splits(a.obs, seed=0)
    params = cm.CosmicParams.from_config({**DIFFUSION, "n_heads": 3})
    fit, out = _fit_predict(a, split, params)
    model, pre = fit["model"], fit["preprocessor"]
    test = a[(split == "test").to_numpy()]
    c_m, c_r = model.conditions(to_tensors(pre.transform(test), "cpu"))
    with torch.no_grad():
        members = model.expr_head.members_out(c_m)
        morph_members = model.morph_head.members_out(c_r)
    assert members.shape[0] == morph_members.shape[0] == 3
    # the members learned different functions (own initialisation and dropout), and the head is their mean
    assert not torch.allclose(members[0], members[1], atol=1e-3)
    np.testing.assert_allclose(out["expr_mean"], members.mean(0).numpy(), rtol=1e-5, atol=1e-5)
    # a saved ensemble loads as one
    cm.save_model(fit, params, tmp_path / "model.pt")
    loaded, _, loaded_params = cm.load_model(tmp_path / "model.pt")
    assert loaded_params.n_heads == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded.expr_head(c_m), members.mean(0))


def _within_cell_covariance(draws: torch.Tensor, ddof: int = 1) -> torch.Tensor:
    """Pooled covariance of ``n x cells x d`` draws around each cell's own mean."""
    centred = (draws - draws.mean(0, keepdim=True)).double()
    return torch.einsum("ncr,ncs->rs", centred, centred) / (draws.shape[1] * (draws.shape[0] - ddof))


def test_moment_matching_gives_draws_the_training_residuals_covariance():
    c, r = _toy(600, seed=5)
    model = ResidualDiffusion(3, 1, rank=3, hidden=16, n_layers=1, n_steps=6).eval()
    model.fit_basis(r)  # the denoiser stays untrained: its draws' covariance is far from the scores' identity
    g = torch.Generator().manual_seed(0)
    before = _within_cell_covariance(model.sample_scores(c.repeat(16, 1), g).view(16, len(c), 3))
    assert (before - torch.eye(3, dtype=torch.float64)).abs().max() > 0.1
    model.match_moments(c, n=8, generator=g)
    draws = model.sample(c, 16, torch.Generator().manual_seed(1))  # fresh draws (rank = outputs: no leftover)
    # sample() centres each cell's draws and rescales them by sqrt(n / (n - 1)): their plain mean square is
    # the unbiased spread
    after = _within_cell_covariance(model.scores(draws), ddof=0)
    np.testing.assert_allclose(after.numpy(), np.eye(3), atol=0.12)
    # the residuals' own covariance is reproduced in the outputs (here the basis spans all of them)
    outputs = _within_cell_covariance(model.sample(c, 16, torch.Generator().manual_seed(2)), ddof=0)
    np.testing.assert_allclose(outputs.numpy(), np.cov((r - r.mean(0)).numpy().T, bias=True), atol=0.1)


def _saved_with_and_without(tmp_path, config: dict, dropped: tuple[str, ...]):
    """Fit with ``config``, save, and save again without the buffers ending in ``dropped`` (a model of an
    earlier version); the test cells' predictions of both loaded models, and the fit."""
    a = synthetic_cohort(n=240)
    split = make_splits(a.obs, seed=0)
    params = cm.CosmicParams.from_config({**DIFFUSION, **config})
    fit = cm.fit_cosmic(a, split, params, progress=False)
    cm.save_model(fit, params, tmp_path / "model.pt")
    saved = torch.load(tmp_path / "model.pt", weights_only=False)
    saved["model"] = {k: v for k, v in saved["model"].items() if not k.endswith(dropped)}
    torch.save(saved, tmp_path / "old.pt")
    old, pre, _ = cm.load_model(tmp_path / "old.pt")
    new, _, _ = cm.load_model(tmp_path / "model.pt")
    test = a[(split == "test").to_numpy()]
    before, after = (predict(m, pre, test, n_samples=8, seed=0) for m in (new, old))
    return before, after, fit


def test_a_model_saved_before_moment_matching_loads_and_draws_as_it_did(tmp_path):
    before, after, _ = _saved_with_and_without(tmp_path, {"moment_matching": False}, ("score_map",))
    np.testing.assert_array_equal(before["morph_samples"], after["morph_samples"])


LINEAR_RELATION = torch.tensor([[1.0, -0.5], [0.3, 0.8], [0.0, 0.2]])  # 3 RNA inputs -> 2 morphology outputs


def _linear_cells(n: int, seed: int, a: torch.Tensor = LINEAR_RELATION) -> dict:
    g = torch.Generator().manual_seed(seed)
    rna = torch.randn((n, a.shape[0]), generator=g)
    rep = rna @ a + 0.05 * torch.randn((n, a.shape[1]), generator=g)
    return dict(rna=rna, cov=torch.zeros((n, 0)), rep=rep, morph=rep.clone(),
                expr=torch.zeros((n, 4)))


def test_morph_ridge_blend_leans_on_the_ridge_where_the_head_has_learnt_nothing():
    """An untrained head predicts the mean (0); for a linear relation the ridge fit is near exact, so the
    validation-chosen share of the head is 0 and the RNA -> morphology mean is the ridge's."""
    a = LINEAR_RELATION
    train, val, test = (_linear_cells(n, seed, a) for n, seed in ((400, 0), (100, 1), (50, 2)))
    params = cm.CosmicParams.from_config(DIFFUSION)
    model = DiffusionCosmicModel(2, 3, 4, 2, 0, params, use_fm=False).eval()
    out = model.fit_morph_blend(train, val, seed=0)
    assert out["head_share"] == 0.0 and float(model.head_share) == 0.0
    with torch.no_grad():
        predicted = model.morph_mean(torch.cat([test["rna"], test["cov"]], 1))
    np.testing.assert_allclose(predicted.numpy(), (test["rna"] @ a).numpy(), atol=0.05)


def test_morph_ridge_blend_keeps_a_head_that_is_already_right():
    """A head that is the true relation keeps its full share: the ridge only adds its estimation error."""
    a = LINEAR_RELATION
    train, val = _linear_cells(400, 0, a), _linear_cells(100, 1, a)
    params = cm.CosmicParams.from_config(DIFFUSION)
    model = DiffusionCosmicModel(2, 3, 4, 2, 0, params, use_fm=False).eval()
    model.morph_head = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.morph_head.weight.copy_(a.T)  # the true relation, without the noise
    assert model.fit_morph_blend(train, val, seed=0)["head_share"] == 1.0


def test_a_model_saved_before_the_ridge_blend_loads_and_predicts_with_its_head_alone(tmp_path):
    before, after, fit = _saved_with_and_without(tmp_path, {"morph_ridge_blend": False},
                                                 ("ridge_weight", "ridge_bias", "head_share"))
    assert float(fit["model"].head_share) == 1.0
    np.testing.assert_array_equal(before["morph_mean"], after["morph_mean"])
    np.testing.assert_array_equal(before["morph_samples"], after["morph_samples"])


def test_the_ridge_blend_is_fitted_by_default_and_changes_the_training_fingerprint():
    a = synthetic_cohort(n=240)
    split = make_splits(a.obs, seed=0)
    fit = cm.fit_cosmic(a, split, cm.CosmicParams.from_config(DIFFUSION), progress=False)
    share = float(fit["model"].head_share)
    assert share in [i / 10 for i in range(11)]
    assert fit["model"].ridge_weight.abs().sum() > 0  # fitted, whatever share validation chose
    from cosmic.crossmodal.train import _fingerprint

    on, off = (_fingerprint(cm.CosmicParams.from_config({**DIFFUSION, "morph_ridge_blend": flag}), split)
               for flag in (True, False))
    assert on != off
