"""Tests of the drug-response analysis (cosmic.drug_response) on small synthetic cohorts."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cosmic import drug_response as dr
from cosmic.errors import CosmicInputError

N_GENES = 40
RESISTANCE = [f"RES{i}" for i in range(4)]  # up in resistant cells (treated and control)
TREATMENT = [f"TRT{i}" for i in range(4)]  # up in treated cells
MORPH = ["morph_area", "morph_solidity", "morph_null", "morph_dna_integrated"]


def synthetic_cohort(n_per_arm=120, seed=0, response=True) -> ad.AnnData:
    """Control and treated cells; a third of the treated cells resistant.

    Planted: RES* genes up in resistant cells, TRT* genes up in treated cells; responsive treated
    cells have larger nuclei (morph_area +1.2 SD) and lower solidity; morph_null is pure noise.
    """
    rng = np.random.default_rng(seed)
    n = 2 * n_per_arm
    treated = np.arange(n) >= n_per_arm
    resistant = rng.random(n) < 1 / 3
    responsive_treated = treated & ~resistant
    genes = RESISTANCE + TREATMENT + [f"BG{i}" for i in range(N_GENES - len(RESISTANCE) - len(TREATMENT))]
    log_rate = np.full((n, N_GENES), np.log(3.0)) + rng.normal(0, 0.2, size=(1, N_GENES))
    log_rate[:, :4] += 1.5 * resistant[:, None]
    log_rate[:, 4:8] += 1.2 * treated[:, None]
    counts = rng.poisson(np.exp(log_rate)).astype(np.float32)
    morph = rng.normal(size=(n, len(MORPH)))
    morph[:, 0] += 1.2 * responsive_treated
    morph[:, 1] -= 1.0 * responsive_treated
    morph[:, 3] += 0.8 * responsive_treated
    morph = morph * [50.0, 0.02, 1.0, 1e4] + [500.0, 0.95, 0.0, 5e5]
    labels = np.where(~treated, "untreated", np.where(resistant, "resistant", "responsive")) if response \
        else np.full(n, "mixed")
    obs = pd.DataFrame({"sample": np.where(treated, "s_drug", "s_ctrl"), "barcode": [f"BC{i}" for i in range(n)],
                        "treatment": np.where(treated, "docetaxel", "control"), "response": labels},
                       index=[f"cell{i}" for i in range(n)])
    a = ad.AnnData(X=np.log1p(counts), obs=obs, var=pd.DataFrame(index=genes))
    a.layers["counts"] = counts
    a.uns["log1p"] = {"base": None}
    a.obsm["X_morph"] = morph.astype(np.float32)
    a.uns["morph_features"] = np.array(MORPH)
    a.obsm["X_rna"] = (np.log1p(counts) - np.log1p(counts).mean(0))[:, :10].astype(np.float32)
    a.obsm["X_fm"] = rng.normal(size=(n, 6)).astype(np.float32)
    return a


def variance_table(genes) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    r2 = rng.uniform(-0.05, 0.4, len(genes))
    rows = pd.DataFrame({"direction": "morphology_to_rna", "feature": genes, "r2_cosmic": r2,
                         "pearson_cosmic": np.sqrt(np.clip(r2, 0, None)), "r2_ridge": r2 - 0.05})
    morph = pd.DataFrame({"direction": "rna_to_morphology", "feature": MORPH, "r2_cosmic": 0.1})
    return pd.concat([rows, morph], ignore_index=True)


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort()


@pytest.fixture(scope="module")
def comparisons(cohort):
    return dr.define_comparisons(cohort.obs, dr.DrugResponseParams())


def test_params_defaults_and_errors():
    p = dr.DrugResponseParams.from_config({"fdr": 0.1, "top_n": 5})
    assert (p.fdr, p.top_n, p.treatment_key, p.control) == (0.1, 5, "treatment", "control")
    with pytest.raises(CosmicInputError, match="unknown key.*fdr_threshold.*allowed keys"):
        dr.DrugResponseParams.from_config({"fdr_threshold": 0.1})
    with pytest.raises(CosmicInputError, match="fdr"):
        dr.DrugResponseParams.from_config({"fdr": 1.5})
    with pytest.raises(CosmicInputError, match="cv_folds"):
        dr.DrugResponseParams.from_config({"cv_folds": 1})


def test_missing_treatment_column_skips_treatment_and_compares_response_in_all_cells(cohort):
    params = dr.DrugResponseParams.from_config({"treatment_key": "arm"})
    comps = dr.define_comparisons(cohort.obs, params)
    assert "'arm'" in comps["treatment"].skipped and "treatment_key" in comps["treatment"].skipped
    labelled = cohort.obs["response"].isin([params.resistant, params.responsive]).to_numpy()
    if labelled.sum() >= 6:
        assert comps["response"].skipped is None
        assert comps["response"].n_group + comps["response"].n_reference == int(labelled.sum())


def test_comparisons_select_the_right_cells(cohort, comparisons):
    treat, resp = comparisons["treatment"], comparisons["response"]
    assert treat.skipped is None and resp.skipped is None
    assert treat.group == "docetaxel" and treat.reference == "control"
    assert treat.cells.all() and treat.n_group == treat.n_reference == 120
    # response: treated cells only, resistant is the tested group
    assert not resp.cells[:120].any()
    assert resp.n_group + resp.n_reference == 120
    assert (cohort.obs["response"].to_numpy()[resp.cells][resp.is_group] == "resistant").all()
    assert treat.describe()["confounded_with_sample"] is True
    assert resp.describe()["confounded_with_sample"] is False


def test_single_level_response_is_skipped_not_an_error():
    a = synthetic_cohort(n_per_arm=40, response=False)
    comps = dr.define_comparisons(a.obs, dr.DrugResponseParams())
    assert comps["treatment"].skipped is None
    assert "mixed" in comps["response"].skipped
    no_col = dr.define_comparisons(a.obs.drop(columns="response"), dr.DrugResponseParams())
    assert "no obs column 'response'" in no_col["response"].skipped
    no_control = dr.define_comparisons(a.obs.assign(treatment="docetaxel"), dr.DrugResponseParams())
    assert "set drug_response.control" in no_control["treatment"].skipped


def test_planted_genes_are_differentially_expressed(cohort, comparisons):
    params = dr.DrugResponseParams()
    res = dr.differential_expression(cohort, comparisons["response"], params)
    assert list(res.columns) == dr.DE_COLUMNS and len(res) == N_GENES
    sig_up = set(res.loc[res["significant"] & (res["logfoldchange"] > 0), "gene"])
    assert set(RESISTANCE) <= sig_up
    assert len(sig_up - set(RESISTANCE)) <= 2  # few false positives at FDR 5 %
    assert set(res["gene"].head(len(RESISTANCE))) == set(RESISTANCE)
    assert (res.set_index("gene").loc[RESISTANCE, "cohens_d"] > 1).all()
    trt = dr.differential_expression(cohort, comparisons["treatment"], params)
    assert set(TREATMENT) <= set(trt.loc[trt["significant"] & (trt["score"] > 0), "gene"])
    assert not trt.set_index("gene").loc[RESISTANCE, "significant"].any()  # same resistant fraction in both arms


def test_planted_morphology_shift_is_significant_with_the_right_sign(cohort, comparisons):
    comp = comparisons["response"]
    table = dr.morphology_tests(cohort.obsm["X_morph"][comp.cells], MORPH, comp.is_group, dr.DrugResponseParams(),
                                comparison="response").set_index("feature")
    # resistant (group) nuclei are smaller and more solid than responsive ones
    assert table.loc["morph_area", "significant"] and table.loc["morph_area", "cohens_d"] < -0.7
    assert table.loc["morph_area", "auc"] < 0.35
    assert np.isclose(table.loc["morph_area", "rank_biserial"], 2 * table.loc["morph_area", "auc"] - 1)
    assert table.loc["morph_solidity", "significant"] and table.loc["morph_solidity", "cohens_d"] > 0.5
    assert not table.loc["morph_null", "significant"] and table.loc["morph_null", "qval"] > 0.05
    assert (table["qval"] >= table["pval"] - 1e-12).all()


def test_morphology_tests_ignore_non_finite_values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2))
    x[:5, 0] = np.nan
    x[:, 1] = 3.0  # constant
    g = np.arange(60) % 2 == 0
    t = dr.morphology_tests(x, ["a", "b"], g, dr.DrugResponseParams()).set_index("feature")
    assert t.loc["a", "n_group"] + t.loc["a", "n_reference"] == 55
    assert t.loc["b", "cohens_d"] == 0 and not t.loc["b", "significant"]


def test_classifier_auc_chance_on_noise_and_high_when_separable():
    rng = np.random.default_rng(0)
    params = dr.DrugResponseParams()
    y = rng.random(400) < 0.4
    noise = dr.cross_validated_classifier(rng.normal(size=(400, 8)), y, params)
    assert abs(noise["auc"] - 0.5) < 0.1 and abs(noise["balanced_accuracy"] - 0.5) < 0.1
    sep = rng.normal(size=(400, 8))
    sep[:, 0] += 3.0 * y
    sep[::7, 3] = np.nan  # imputed inside the folds
    good = dr.cross_validated_classifier(sep, y, params)
    assert good["auc"] > 0.95 and good["balanced_accuracy"] > 0.85 and good["n_folds"] == 5
    again = dr.cross_validated_classifier(sep, y, params)
    assert again["auc"] == good["auc"]  # seeded


def test_morphology_associated_genes_ranking(cohort, comparisons):
    params = dr.DrugResponseParams()
    de = dr.differential_expression(cohort, comparisons["response"], params)
    variance = dr.read_variance_table(variance_table(list(cohort.var_names)))
    table = dr.morphology_associated_genes(variance, de, params)
    assert list(table.columns) == dr.ASSOC_COLUMNS and len(table) == N_GENES
    expected = variance.set_index("gene")["r2_cosmic"].clip(lower=0) * de.set_index("gene")["cohens_d"].abs()
    got = table.set_index("gene")["morphology_association"]
    assert np.allclose(got, expected.reindex(got.index))
    assert (np.diff(table["morphology_association"].to_numpy()) <= 1e-12).all()
    # skipped response comparison: genes ordered by R² alone, no score
    empty = dr.morphology_associated_genes(variance, pd.DataFrame(columns=dr.DE_COLUMNS), params)
    assert empty["morphology_association"].isna().all()
    assert (np.diff(empty["r2_cosmic"].to_numpy()) <= 0).all()
    with pytest.raises(CosmicInputError, match="r2_cosmic"):
        dr.read_variance_table(pd.DataFrame({"direction": ["morphology_to_rna"], "feature": ["G"]}))


def _demo_truth(tmp_path, genes):
    truth = tmp_path / "demo"
    truth.mkdir()
    program = ["resistance" if g in RESISTANCE else "treatment" if g in TREATMENT else "background" for g in genes]
    pd.DataFrame({"gene": genes, "program": program}).to_csv(truth / "genes.tsv", sep="\t", index=False)
    pd.DataFrame({"trait": ["nuclear_area", "dna_content", "lobulation_and_micronuclei", "orientation"]}).to_csv(
        truth / "morphology_traits.tsv", sep="\t", index=False)
    return truth


def test_run_drug_response_writes_every_output(tmp_path, cohort):
    truth = _demo_truth(tmp_path, list(cohort.var_names))
    vpath = tmp_path / "variance_decomposition.tsv"
    variance_table(list(cohort.var_names)).to_csv(vpath, sep="\t", index=False)
    cohort_path = tmp_path / "cohort.h5ad"
    cohort.write_h5ad(cohort_path)
    outdir = tmp_path / "analysis" / "drug_response"
    summary = dr.run_drug_response(cohort_path, vpath, outdir, {"top_n": 5}, truth_dir=truth)
    for name in dr.TABLES.values():
        assert (outdir / name).exists(), name
    for fig in dr.FIGURES:
        assert (outdir / "figures" / fig).stat().st_size > 1000, fig
        caption = (outdir / "figures" / fig).with_suffix(".txt").read_text()
        assert caption.strip() and caption.count("\n") == 1
    assert json.loads((outdir / "summary.json").read_text()) == summary
    assert not list(outdir.rglob(".*tmp*"))  # no leftovers of atomic writes
    clf = pd.read_csv(outdir / "classifiers.tsv", sep="\t").set_index(["comparison", "features"])
    assert len(clf) == 2 * len(dr.FEATURE_SETS)
    assert clf.loc[("response", "rna"), "auc"] > 0.9  # resistance genes sit in X_rna
    assert clf.loc[("response", "morphology"), "auc"] > 0.7
    assert clf.loc[("response", "foundation"), "auc"] < 0.7  # X_fm is noise here
    rec = summary["demo_recovery"]
    assert rec["resistance_genes"]["significant_up_in_resistant"]["recall"] == 1.0
    assert rec["resistance_genes"]["average_precision_by_z"] == 1.0
    assert rec["treatment_genes"]["treatment_program_only"]["recall"] == 1.0
    shifts = rec["morphology_shifts"]
    assert shifts["scored"] == 6  # area, solidity, dna_integrated (no form_factor here) x 2 comparisons
    assert {(s["comparison"], s["feature"]) for s in shifts["shifts"] if s["recovered"]} >= {
        ("response", "morph_area"), ("response", "morph_solidity"), ("treatment", "morph_area")}
    assert summary["morphology_associated_genes"]["top"][0]["gene"] in RESISTANCE


def test_run_with_skipped_comparison_still_writes_everything(tmp_path):
    a = synthetic_cohort(n_per_arm=40, response=False)
    outdir = tmp_path / "dr"
    summary = dr.run_drug_response(a, variance_table(list(a.var_names)), outdir, truth_dir=_demo_truth(
        tmp_path, list(a.var_names)))
    assert summary["comparisons"]["response"]["skipped"]
    assert summary["comparisons"]["treatment"]["differential_expression"]["n_significant"] >= len(TREATMENT)
    assert pd.read_csv(outdir / "de_response.tsv", sep="\t").empty
    assert set(pd.read_csv(outdir / "morphology_tests.tsv", sep="\t")["comparison"]) == {"treatment"}
    assert "skipped" in summary["demo_recovery"]["resistance_genes"]
    for fig in dr.FIGURES:
        assert (outdir / "figures" / fig).exists()


def test_group_moments_walk_a_sparse_matrix_in_chunks_as_the_dense_computation(monkeypatch):
    import scipy.sparse as sp

    from cosmic.drug_response import statistics

    rng = np.random.default_rng(0)
    x = sp.random(500, 40, density=0.2, format="csr", random_state=0)
    x.data[::7] = 0  # stored zeros count as zeros
    group = rng.random(500) < 0.4
    monkeypatch.setattr(statistics, "MOMENT_CHUNK_VALUES", 50)  # a few rows per chunk
    mean, var, nonzero = statistics._group_moments(x, group)
    dense = x.toarray()[group]
    np.testing.assert_allclose(mean, dense.mean(0), atol=1e-12)
    np.testing.assert_allclose(var, dense.var(0, ddof=1), atol=1e-12)
    np.testing.assert_allclose(nonzero, (dense != 0).mean(0))


def test_expression_tests_read_from_the_file_equal_the_in_memory_ones(tmp_path):
    import scipy.sparse as sp

    from cosmic.cohort_io import read_cohort

    cohort = synthetic_cohort()
    cohort.X = sp.csr_matrix(cohort.X)
    cohort.write_h5ad(tmp_path / "cohort.h5ad")
    shell = read_cohort(tmp_path / "cohort.h5ad", x=False)
    params = dr.DrugResponseParams()
    for name in ("treatment", "response"):
        in_memory = dr.differential_expression(cohort, dr.define_comparisons(cohort.obs, params)[name], params)
        from_file = dr.differential_expression(shell, dr.define_comparisons(shell.obs, params)[name], params,
                                               source=tmp_path / "cohort.h5ad")
        pd.testing.assert_frame_equal(from_file, in_memory)


def test_rank_sum_test_on_a_subset_of_large_groups_keeps_moments_of_every_cell():
    cohort = synthetic_cohort(n_per_arm=150)
    params = dr.DrugResponseParams(max_de_cells=40)
    comp = dr.define_comparisons(cohort.obs, params)["treatment"]
    subset = dr.differential_expression(cohort, comp, params).set_index("gene")
    assert comp.wilcoxon_cells["group"] == 40 and comp.wilcoxon_cells["reference"] == 40
    assert comp.describe()["wilcoxon_cells"] == comp.wilcoxon_cells
    every = dr.differential_expression(cohort, dr.define_comparisons(cohort.obs, dr.DrugResponseParams())["treatment"],
                                       dr.DrugResponseParams()).set_index("gene")
    columns = ["mean_group", "mean_reference", "cohens_d", "pct_group", "pct_reference"]
    pd.testing.assert_frame_equal(subset.loc[every.index, columns], every[columns])
    # the planted treatment genes still lead on the subset
    assert set(subset.sort_values("score", ascending=False).index[:len(TREATMENT)]) == set(TREATMENT)
