"""Tests of the COSMIC cross-modal model (cosmic.crossmodal): shapes, no leakage, seeds, end to end."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from cosmic import crossmodal as cm
from cosmic.crossmodal import representation
from cosmic.crossmodal.celltypes import _umap_connectivities, cluster_labels
from cosmic.crossmodal.figures import _real_crops, generated_nuclei_figure
from cosmic.errors import CosmicInputError
from cosmic.splits import make_splits

FAST = dict(epochs=40, patience=10, hidden_dim=32, latent_dim=2, n_rna_pcs=6, n_hvg=40, batch_size=64,
            n_samples=20, n_bootstrap=20, n_clusters=3, knn_neighbors=10)


def synthetic_cohort(n=400, n_genes=60, n_morph=8, seed=0, fm_dims=0, shared_strength=1.0) -> ad.AnnData:
    """Two samples; a planted shared factor drives half the genes and half the morphology features."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n, 2))
    load_g = np.zeros((2, n_genes))
    load_g[:, : n_genes // 2] = rng.normal(size=(2, n_genes // 2)) * shared_strength
    expr = np.log1p(np.exp(0.5 + shared @ load_g * 0.6 + 0.4 * rng.normal(size=(n, n_genes))))
    load_m = np.zeros((2, n_morph))
    load_m[:, : n_morph // 2] = rng.normal(size=(2, n_morph // 2)) * shared_strength
    morph = shared @ load_m + 0.5 * rng.normal(size=(n, n_morph))
    morph = morph * np.geomspace(0.01, 1000, n_morph) + 50  # very different scales
    obs = pd.DataFrame({"sample": np.where(np.arange(n) % 2, "s1", "s2"),
                        "barcode": [f"BC{i:05d}" for i in range(n)],
                        "treatment": np.where(np.arange(n) % 2, "drug", "control")},
                       index=[f"cell{i}" for i in range(n)])
    a = ad.AnnData(X=expr.astype(np.float32), obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    a.obsm["X_morph"] = morph.astype(np.float32)
    a.uns["morph_features"] = np.array([f"morph_f{i}" for i in range(n_morph)])
    if fm_dims:
        a.obsm["X_fm"] = (np.hstack([shared, rng.normal(size=(n, fm_dims - 2))]) @ rng.normal(size=(fm_dims, fm_dims))
                          ).astype(np.float32)
    return a


def test_params_reject_unknown_and_bad_values():
    p = cm.CosmicParams.from_config({"n_rna_pcs": 10, "covariates": ["sample"]})
    assert p.n_rna_pcs == 10 and p.covariates == ["sample"]
    with pytest.raises(CosmicInputError, match="unknown key"):
        cm.CosmicParams.from_config({"n_pcs": 10})
    with pytest.raises(CosmicInputError, match="representation"):
        cm.CosmicParams.from_config({"representation": "pixels"})
    with pytest.raises(CosmicInputError, match="split_fractions"):
        cm.CosmicParams.from_config({"split_fractions": [0.5, 0.5]})
    with pytest.raises(CosmicInputError, match="lr"):
        cm.CosmicParams.from_config({"lr": -1})
    a = synthetic_cohort(n=50)
    with pytest.raises(CosmicInputError, match="X_fm"):
        representation.for_cohort(a.obsm, "fm")
    assert representation.for_cohort(a.obsm, "auto").name == "morph"
    assert representation.for_cohort(synthetic_cohort(n=50, fm_dims=6).obsm, "auto").name == "fm"


@pytest.mark.parametrize("requested", representation.CHOICES)
@pytest.mark.parametrize("has_images", [True, False])
def test_representation_resolves_alike_in_the_snakefile_and_the_package(requested, has_images):
    """The Snakefile (images or not, before data exist) and the package (X_fm in obsm or not) agree."""
    obsm = {"X_morph": None, **({"X_fm": None} if has_images else {})}
    if requested == "fm" and not has_images:
        with pytest.raises(CosmicInputError, match="auto' or 'morph"):
            representation.for_workflow(requested, has_images)
        with pytest.raises(CosmicInputError, match="X_fm"):
            representation.for_cohort(obsm, requested)
        return
    in_workflow = representation.for_workflow(requested, has_images)
    assert in_workflow == representation.for_cohort(obsm, requested)
    assert in_workflow.name == ("fm" if has_images and requested != "morph" else "morph")
    assert in_workflow.decodes_images == (in_workflow.name == "fm")
    assert in_workflow.obsm_key == f"X_{in_workflow.name}"
    assert representation.named(in_workflow.name) is in_workflow


def test_representation_module_and_package_import_without_torch():
    """common.smk imports cosmic.crossmodal.representation at parse time: it must stay light."""
    import subprocess
    import sys

    code = ("import sys, cosmic.crossmodal, cosmic.crossmodal.representation; "
            "print(sorted({'torch', 'anndata', 'numpy', 'pandas'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_model_shapes():
    p = cm.CosmicParams.from_config(FAST)
    net = cm.CosmicModel(rep_dim=8, rna_dim=6, n_genes=40, morph_dim=8, cov_dim=2, params=p, use_fm=False)
    b = {"rep": torch.randn(5, 8), "rna": torch.randn(5, 6), "expr": torch.randn(5, 40), "morph": torch.randn(5, 8),
         "cov": torch.zeros(5, 2)}
    loss = net.losses(b, p)
    assert loss.ndim == 0 and torch.isfinite(loss)
    c = torch.cat([b["rep"], b["cov"]], 1)
    assert net.m2r.mean(c).shape == (5, 6)
    assert net.m2r.sample(c, 7).shape == (7, 5, 6)
    assert net.r2m.sample(torch.cat([b["rna"], b["cov"]], 1), 3).shape == (3, 5, 8)
    assert net.expr_decoder(torch.randn(5, 6)).shape == (5, 40)
    p0 = cm.CosmicParams.from_config({**FAST, "latent_dim": 0})
    net0 = cm.CosmicModel(8, 6, 40, 8, 2, p0, use_fm=False)
    assert net0.m2r.sample(c, 4).shape == (4, 5, 6)


def test_preprocessor_has_no_leakage():
    """Changing (or removing) test cells leaves every fitted transform unchanged."""
    a = synthetic_cohort(n=200)
    split = make_splits(a.obs, (0.6, 0.2, 0.2), seed=0)
    train = (split == "train").to_numpy()
    pre = cm.Preprocessor(n_hvg=20, n_pcs=5, representation="morph", covariates=["sample"]).fit(a[train])
    b = a.copy()
    test = (split == "test").to_numpy()
    rng = np.random.default_rng(9)
    b.X[test] = rng.normal(5, 3, size=b.X[test].shape).astype(np.float32)
    b.obsm["X_morph"][test] = 1e6
    b.obs.loc[test, "sample"] = "unseen"
    fitted = {}
    for data in (a, b):
        split_b = make_splits(data.obs.assign(sample=a.obs["sample"]), (0.6, 0.2, 0.2), seed=0)
        assert split_b.equals(split)
        fitted[id(data)] = cm.Preprocessor(20, 5, "morph", ["sample"]).fit(data[(split_b == "train").to_numpy()])
    for pp in fitted.values():
        for k, v in pre.state.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(v, pp.state[k])
            else:
                assert v == pp.state[k]
    # and the end-to-end fit on the perturbed cohort trains exactly the same model
    p = cm.CosmicParams.from_config({**FAST, "epochs": 3})
    r1 = cm.fit_cosmic(a, split, p, progress=False)
    r2 = cm.fit_cosmic(b, split, p, progress=False)
    for k, v in r1["model"].state_dict().items():
        torch.testing.assert_close(v, r2["model"].state_dict()[k])
    # the stored state round-trips
    again = cm.Preprocessor.from_state_dict(pre.state_dict())
    np.testing.assert_array_equal(again.transform(a)["rna"], pre.transform(a)["rna"])


def _assert_same_state(s1, s2, path="state"):
    """Recursive equality of fitted state (dicts of arrays, lists, scalars, tensors)."""
    if isinstance(s1, dict):
        assert set(s1) == set(s2), path
        for k in s1:
            _assert_same_state(s1[k], s2[k], f"{path}.{k}")
    elif isinstance(s1, torch.Tensor):
        torch.testing.assert_close(s1, s2, rtol=0, atol=0, msg=path)
    elif isinstance(s1, np.ndarray):
        np.testing.assert_array_equal(s1, s2, err_msg=path)
    else:
        assert s1 == s2, path


def _perturb_test_cells(a: ad.AnnData, test: np.ndarray, seed: int = 9) -> ad.AnnData:
    """A copy whose test cells carry random expression, counts, morphology and embeddings."""
    rng = np.random.default_rng(seed)
    b = a.copy()
    b.X[test] = rng.gamma(1.0, 3.0, size=b.X[test].shape).astype(np.float32)
    if "counts" in b.layers:
        b.layers["counts"][test] = rng.poisson(20, size=b.layers["counts"][test].shape).astype(np.float32)
    b.obsm["X_morph"][test] = rng.normal(1e6, 1e5, size=b.obsm["X_morph"][test].shape).astype(np.float32)
    if "X_fm" in b.obsm:
        b.obsm["X_fm"][test] = rng.normal(-50, 30, size=b.obsm["X_fm"][test].shape).astype(np.float32)
    b.obs.loc[test, "treatment"] = "unseen"
    return b


@pytest.mark.parametrize("representation", ["morph", "fm"])
def test_every_fitted_transform_ignores_test_cells(representation):
    """Gene list, PCA loadings, scalers, covariate levels, trained weights and RNA cell types are
    identical whatever the test cells contain; fitting on all cells would have changed them."""
    a = synthetic_cohort(n=240, fm_dims=6)
    split = make_splits(a.obs, (0.6, 0.2, 0.2), seed=0)
    train, val, test = ((split == s).to_numpy() for s in ("train", "val", "test"))
    assert not (train & test).any() and not (val & test).any() and not (train & val).any()
    assert (train | val | test).all() and test.sum() > 0
    assert not set(a.obs_names[test]) & set(a.obs_names[train | val])
    b = _perturb_test_cells(a, test)
    assert make_splits(b.obs, (0.6, 0.2, 0.2), seed=0).equals(split)  # the split only reads obs["sample"]

    def fitted(data, mask):
        return cm.Preprocessor(20, 5, representation, ["treatment"]).fit(data[mask]).state

    sa, sb = fitted(a, train), fitted(b, train)
    _assert_same_state(sa, sb)
    assert {"gene_index", "gene_names", "gene_mean", "components", "pc_std", "morph_mean", "morph_std"} <= set(sa)
    assert representation != "fm" or {"fm_mean", "fm_std"} <= set(sa)
    # the perturbation is strong enough to be seen by a transform fitted on all cells
    with pytest.raises(AssertionError):
        _assert_same_state(fitted(a, np.ones(a.n_obs, bool)), fitted(b, np.ones(b.n_obs, bool)))
    # the stage's fit path: preprocessor and every trained weight
    p = cm.CosmicParams.from_config({**FAST, "epochs": 3, "representation": representation,
                                     "covariates": ["treatment"]})
    r1, r2 = cm.fit_cosmic(a, split, p, progress=False), cm.fit_cosmic(b, split, p, progress=False)
    _assert_same_state(r1["preprocessor"].state, r2["preprocessor"].state)
    _assert_same_state(r1["model"].state_dict(), r2["model"].state_dict())
    # RNA cell types are clustered on training cells: their labels do not depend on test cells
    pre = r1["preprocessor"]
    emb = {k: pre.rna_embedding(pre.expression(d)) * pre.state["pc_std"] for k, d in (("a", a), ("b", b))}
    la = cluster_labels(emb["a"][train], emb["a"][test], 3, 0)
    lb = cluster_labels(emb["b"][train], emb["b"][test], 3, 0)
    np.testing.assert_array_equal(la[0], lb[0])


def test_run_cosmic_fitted_state_ignores_test_cells(tmp_path):
    """The whole stage, run on a cohort whose test cells were replaced by random values, saves the same
    model (preprocessor state and weights) and the same training-cell labels; outputs hold test cells only."""
    a = synthetic_cohort(n=240, fm_dims=6)
    rng = np.random.default_rng(3)
    a.layers["counts"] = rng.poisson(np.expm1(a.X)).astype(np.float32)
    p = {**FAST, "epochs": 3, "n_bootstrap": 0, "covariates": ["treatment"]}
    split = make_splits(a.obs, cm.CosmicParams.from_config(p).fractions, 0, "sample")
    test = (split == "test").to_numpy()
    b = _perturb_test_cells(a, test)
    runs = {}
    for name, data in (("a", a), ("b", b)):
        d = tmp_path / name
        runs[name] = cm.run_cosmic(data, d / "models", d / "predictions.h5ad", d / "metrics.json", d / "vd.tsv", p,
                                   progress=False)
    ma = torch.load(tmp_path / "a" / "models" / cm.MODEL, weights_only=False)
    mb = torch.load(tmp_path / "b" / "models" / cm.MODEL, weights_only=False)
    _assert_same_state(ma["preprocessor"], mb["preprocessor"])
    _assert_same_state(ma["model"], mb["model"])
    la, lb = (runs[k]["reference_metrics"]["labels"] for k in ("a", "b"))
    assert la["method"] == "leiden" and la["train_counts"] == lb["train_counts"]
    assert runs["a"]["n_cells"] == runs["b"]["n_cells"]
    # and the evaluation does see the test cells (so the equality above is not vacuous)
    assert runs["a"]["variance_decomposition"] != runs["b"]["variance_decomposition"]
    pred = ad.read_h5ad(tmp_path / "a" / "predictions.h5ad")
    assert set(pred.obs_names) == set(a.obs_names[test])
    assert not set(pred.obs_names) & set(split.index[split != "test"])


def test_leiden_labels_fitted_on_training_cells():
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(3, 6)) * 12
    truth = np.repeat([0, 1, 2], 80)
    x = centres[truth] + rng.normal(size=(240, 6))
    train = np.arange(240) % 4 != 0
    lab_tr, lab_te, method = cluster_labels(x[train], x[~train], n_clusters=5, seed=0)
    assert method == "leiden"
    # each planted group is one label (Leiden may split nothing here: groups are far apart)
    assert len(set(lab_tr)) == 3
    assert all(len(set(lab_tr[truth[train] == g])) == 1 for g in range(3))
    mapping = {g: lab_tr[truth[train] == g][0] for g in range(3)}
    assert [mapping[g] for g in truth[~train]] == list(lab_te)
    again = cluster_labels(x[train], x[~train], n_clusters=5, seed=0)
    np.testing.assert_array_equal(again[0], lab_tr)
    # the graph is scanpy's UMAP connectivities: symmetric, weights in (0, 1]
    g = _umap_connectivities(x[train], 15)
    assert abs(g - g.T).max() < 1e-12 and g.data.min() > 0 and g.data.max() <= 1 + 1e-12
    assert g.diagonal().sum() == 0 and (np.diff(g.indptr) >= 14).all()


def test_reproducible_by_seed(tmp_path):
    a = synthetic_cohort(n=200)
    split = make_splits(a.obs, seed=0)
    p = cm.CosmicParams.from_config({**FAST, "epochs": 5})
    r1 = cm.fit_cosmic(a, split, p, progress=False)
    r2 = cm.fit_cosmic(a, split, p, progress=False)
    r3 = cm.fit_cosmic(a, split, cm.CosmicParams.from_config({**FAST, "epochs": 5, "seed": 1}), progress=False)
    s1, s2, s3 = (r["model"].state_dict() for r in (r1, r2, r3))
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    pr1 = cm.predict(r1["model"], r1["preprocessor"], a[:20], 5, seed=0)
    pr2 = cm.predict(r2["model"], r2["preprocessor"], a[:20], 5, seed=0)
    np.testing.assert_array_equal(pr1["expr_samples"], pr2["expr_samples"])


def test_checkpoint_resume(tmp_path):
    a = synthetic_cohort(n=200)
    split = make_splits(a.obs, seed=0)
    p = cm.CosmicParams.from_config({**FAST, "epochs": 12, "patience": 100})
    full = cm.fit_cosmic(a, split, p, outdir=tmp_path / "full", progress=False)
    assert (tmp_path / "full" / cm.MODEL).exists() and (tmp_path / "full" / cm.CHECKPOINT).exists()
    # a finished checkpoint is resumed without further training
    again = cm.fit_cosmic(a, split, p, outdir=tmp_path / "full", progress=False)
    assert again["epochs_run"] == full["epochs_run"]
    assert all(torch.equal(v, again["model"].state_dict()[k]) for k, v in full["model"].state_dict().items())
    model, pre, params = cm.load_model(tmp_path / "full" / cm.MODEL, device="cpu")
    assert params.epochs == 12 and pre.state["components"].shape[0] == FAST["n_rna_pcs"]


def test_run_cosmic_end_to_end_beats_mean(tmp_path):
    a = synthetic_cohort(n=500, fm_dims=6)
    p = {**FAST, "epochs": 60, "covariates": ["treatment"], "n_output_samples": 2}
    decode = lambda z: np.tanh(np.asarray(z)[:, :1, None, None] * np.ones((1, 1, 8, 8)))  # noqa: E731
    crops = {}
    for s in ("s1", "s2"):  # real nuclei, shown beside the generated ones
        in_s = (a.obs["sample"] == s).to_numpy()
        a.obs.loc[in_s, "crop_index"] = np.arange(in_s.sum())
        crops[s] = tmp_path / f"{s}_crops.npy"
        np.save(crops[s], np.random.default_rng(1).random((in_s.sum(), 1, 8, 8)).astype(np.float32))
    r = cm.run_cosmic(a, tmp_path / "models", tmp_path / "predictions.h5ad", tmp_path / "metrics.json",
                      tmp_path / "variance_decomposition.tsv", p, figures_dir=tmp_path / "figures",
                      decode_images=decode, progress=False)
    # the nuclei figure is drawn by its own rule from the predictions, the decoded images and the crops
    generated_nuclei_figure(tmp_path / "predictions.h5ad", tmp_path / "predictions_generated_images.npy",
                            tmp_path / "figures", crops=crops, decode_images=decode)
    vd = r["variance_decomposition"]
    t, m = vd["transcriptome_explained_by_morphology"], vd["morphology_explained_by_transcriptome"]
    assert t["cosmic"]["value"] > t["mean"]["value"] + 0.05
    assert m["cosmic"]["value"] > m["mean"]["value"] + 0.05
    assert r["matching"]["rna_to_morphology"]["cosmic"]["foscttm"] < 0.4
    assert r["representation"] == "fm" and "fm_embedding" in r["rna_to_morphology"]
    assert 0 <= r["calibration"]["rna_embedding"] <= 1
    pred = ad.read_h5ad(tmp_path / "predictions.h5ad")
    n_test = r["n_cells"]["test"]
    assert pred.n_obs == n_test and set(pred.obs["split"]) == {"test"}
    assert {"predicted_mean", "predicted_sample_0", "predicted_sample_1"} <= set(pred.layers)
    assert pred.obsm["X_morph_generated"].shape == (n_test, 6)
    imgs = np.load(tmp_path / "predictions_generated_images.npy")
    assert imgs.shape == (3, n_test, 1, 8, 8)
    # test cells only, never seen in training
    split = make_splits(a.obs, cm.CosmicParams.from_config(p).fractions, 0, "sample")
    assert set(pred.obs_names) == set(split.index[split == "test"])
    table = pd.read_csv(tmp_path / "variance_decomposition.tsv", sep="\t")
    assert {"morphology_to_rna", "rna_to_morphology", "rna_to_fm"} == set(table["direction"])
    assert {"r2_cosmic", "r2_ridge", "r2_knn", "r2_mean"} <= set(table.columns)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["n_cells"]["test"] == n_test
    assert (tmp_path / "figures" / "gene_r2_ranked.png").exists()
    assert (tmp_path / "figures" / "generated_nuclei.png").exists()
    assert "the real nucleus" in (tmp_path / "figures" / "generated_nuclei.txt").read_text()
    # evaluation in the terms of the published COSMIC code
    ref = saved["reference_metrics"]
    m2r, r2m = ref["morphology_to_rna"], ref["rna_to_morphology"]
    assert ref["labels"]["method"] == "leiden" and ref["labels"]["n_types"] >= 2
    for key in ("pearson_all_cells", "pearson_detected_cells", "pearson_within_type"):
        assert {"cosmic", "ridge", "knn", "mean", "cosmic_permuted_within_type"} <= set(m2r[key])
    assert m2r["pearson_all_cells"]["cosmic"]["mean"] > 0.1
    assert m2r["pearson_all_cells"]["mean"]["mean"] == 0.0
    assert abs(m2r["pearson_within_type"]["cosmic_permuted_within_type"]["mean"]) < 0.1
    clf = m2r["cell_type_classifier"]
    assert {"observed", "cosmic", "cosmic_sample", "ridge", "knn", "mean", "chance_majority"} <= set(clf)
    assert clf["observed"] >= clf["chance_majority"]
    assert r2m["space"] == "standardised X_fm"
    for m in ("cosmic_sample", "cosmic_mean", "ridge_residual", "train_real"):
        v = r2m["overall"][m]
        assert v["sliced_wasserstein"] >= 0 and 0 <= v["knn_accuracy"] <= 1 and 0 < v["coverage"] <= 1
    # a conditional mean collapses the distribution: the samples look more like real cells
    assert r2m["overall"]["cosmic_sample"]["coverage"] > r2m["overall"]["cosmic_mean"]["coverage"]
    conf = pd.read_csv(tmp_path / "cell_type_confusion.tsv", sep="\t", dtype={"true_label": str,
                                                                             "predicted_label": str})
    assert set(conf["source"]) == {"observed_morphology", "observed_region_properties", "generated_cosmic",
                                   "generated_cosmic_sample"}  # fm run: region properties read too
    obs_conf = conf[conf["source"] == "observed_morphology"]
    assert obs_conf["n_cells"].sum() == n_test
    hit = obs_conf.loc[obs_conf["true_label"] == obs_conf["predicted_label"], "n_cells"].sum()
    assert hit / n_test == pytest.approx(r["cell_type_transfer"]["observed_morphology"])
    assert (tmp_path / "figures" / "cell_type_confusion.png").exists()
    assert (tmp_path / "figures" / "cell_type_confusion.txt").read_text().strip()


def test_checkpoint_of_other_training_data_is_not_resumed():
    """A run on re-normalised data must not pick up the checkpoint left by the previous data."""
    import torch

    from cosmic.crossmodal.params import CosmicParams
    from cosmic.crossmodal.train import _fingerprint

    params = CosmicParams()
    split = pd.Series(["train", "val", "test"], index=["a", "b", "c"])
    data = {"expr": torch.ones(2, 3), "rna": torch.zeros(2, 2)}
    same = _fingerprint(params, split, {k: v.clone() for k, v in data.items()})
    assert _fingerprint(params, split, data) == same
    assert _fingerprint(params, split, {**data, "expr": data["expr"] * 2}) != same


def test_interval_scale_calibrates_on_held_out_cells():
    """Samples twice too wide (or too narrow) get a per-output scale that restores nominal coverage."""
    from cosmic import metrics as M

    rng = np.random.default_rng(0)
    n, d = 4000, 3
    sd = np.array([0.5, 1.0, 2.0])
    mean = rng.normal(size=(n, d))
    y = mean + sd * rng.normal(size=(n, d))
    for factor in (2.0, 0.5):
        samples = mean[None] + factor * sd * rng.normal(size=(200, n, d))
        s = cm.interval_scale(y[:2000], mean[:2000], samples[:, :2000], 0.9)
        np.testing.assert_allclose(s, 1 / factor, rtol=0.1)
        fixed = mean[None, 2000:] + s * (samples[:, 2000:] - mean[None, 2000:])
        assert abs(M.interval_coverage(y[2000:], fixed, 0.9)["coverage"] - 0.9) < 0.02


def test_fit_calibrates_intervals_on_validation_cells():
    a = synthetic_cohort(n=300)
    split = make_splits(a.obs, seed=0)
    r = cm.fit_cosmic(a, split, cm.CosmicParams.from_config({**FAST, "epochs": 5, "method": "cvae"}),
                      progress=False)
    assert set(r["calibration_scales"]) == {"rna_embedding", "morphology_representation", "expression"}
    s = r["model"].m2r.calib_scale
    assert s.shape == (FAST["n_rna_pcs"],) and bool((s > 0).all())
    assert "m2r.calib_scale" in r["model"].state_dict()


def test_diffusion_method_calibrates_each_residual_model_on_validation_cells():
    a = synthetic_cohort(n=300)
    split = make_splits(a.obs, seed=0)
    r = cm.fit_cosmic(a, split, cm.CosmicParams.from_config({**FAST, "epochs": 5}), progress=False)
    assert set(r["calibration_scales"]) == {"morphology_representation", "expression"}
    s = r["model"].expr_residual.calib_scale
    assert s.shape == (FAST["n_hvg"],) and bool((s > 0).all())
    assert "expr_residual.calib_scale" in r["model"].state_dict()
    assert list(r["history"]["phase"].unique()) == ["expr_head", "morph_head", "residual"]


def test_real_crops_for_the_nuclei_figure_come_from_each_test_cells_bank(tmp_path):
    banks = {s: np.random.default_rng(i).random((3, 2, 4, 4)).astype(np.float32) for i, s in enumerate("ab")}
    paths = {}
    for s, arr in banks.items():
        paths[s] = tmp_path / f"{s}.npy"
        np.save(paths[s], arr)
    cells = ad.AnnData(obs=pd.DataFrame({"sample": ["b", "a", "a"], "crop_index": [0, 2, 1]},
                                        index=["c0", "c1", "c2"]))
    got = _real_crops(cells, paths, 2, dna_channel=1)
    assert got.shape == (2, 4, 4)
    np.testing.assert_array_equal(got[0], banks["b"][0, 1])
    np.testing.assert_array_equal(got[1], banks["a"][2, 1])
    assert _real_crops(cells, {"a": paths["a"]}, 2) is None  # sample b's bank is missing: no real row
    assert _real_crops(cells, None, 2) is None
