"""Cell-cycle stage: circular statistics, RNA scoring, DNA-content calls, the stage's outputs,
the rule script's contract, and the measured accuracy on real labelled data."""

from __future__ import annotations

import json
import math
import runpy
import types
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cell_cycle_validation import validate_buettner, validate_peco_fucci
from conftest import REPO, shared_dataset

from cosmic import cell_cycle as cc
from cosmic.errors import CosmicInputError

TWO_PI = 2 * math.pi


# ---------------------------------------------------------------------------------------
# synthetic data
def _bump(u, centre, width):
    d = np.abs(((u - centre) + 0.5) % 1.0 - 0.5)
    return np.exp(-0.5 * (d / width) ** 2)


def _true_phase(u):
    return np.select([u < 0.5, u < 0.8, u < 0.95], ["G1", "S", "G2"], "M")


def synthetic_expression(n=240, seed=0, n_background=150, organism="human"):
    """Log-normalised AnnData with S and G2/M programmes planted along a known cycle position
    (S genes peak at 0.65, G2/M genes at 0.93 of the cycle, G1 = [0, 0.5))."""
    rng = np.random.default_rng(seed)
    s = cc.read_gene_list(cc.gene_list_paths(organism)["S"])
    g = cc.read_gene_list(cc.gene_list_paths(organism)["G2M"])
    genes = s + g + [f"BG{i}" for i in range(n_background)]
    u = np.sort(rng.uniform(0, 1, n))
    base = rng.uniform(0.5, 4.0, len(genes))
    amp = np.r_[np.full(len(s), 2.0), np.full(len(g), 0.0), np.zeros(n_background)]
    amp2 = np.r_[np.zeros(len(s)), np.full(len(g), 2.2), np.zeros(n_background)]
    rate = base[None, :] * np.exp(amp[None, :] * _bump(u, 0.65, 0.1)[:, None]
                                  + amp2[None, :] * _bump(u, 0.93, 0.06)[:, None])
    counts = rng.poisson(rate).astype(np.float32)
    x = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    a = ad.AnnData(X=x.astype(np.float32), var=pd.DataFrame(index=genes),
                   obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]))
    a.layers["counts"] = counts
    a.obs["true_position"] = u
    a.obs["true_phase"] = _true_phase(u)
    return a


def synthetic_cohort(tmp_path, n=240, seed=0, generated=True, with_crops=True):
    """A paired cohort (two samples), COSMIC predictions for 60 test cells, crop banks, truth."""
    rng = np.random.default_rng(seed + 1)
    a = synthetic_expression(n=n, seed=seed)
    u = a.obs["true_position"].to_numpy()
    perm = rng.permutation(n)  # mix the order so samples are not cycle-sorted
    a = a[perm].copy()
    u = u[perm]
    sample = np.where(np.arange(n) % 2 == 0, "s_ctrl", "s_drug")
    a.obs["sample"] = sample
    a.obs["barcode"] = [f"BC{i:04d}-1" for i in range(n)]
    a.obs_names = [f"{s}:{b}" for s, b in zip(sample, a.obs["barcode"])]
    a.obs["crop_index"] = pd.Series(sample).groupby(sample).cumcount().to_numpy()
    dna = 2.0 + 2.0 * np.clip((u - 0.5) / 0.3, 0, 1)
    dna_int = 1e5 * dna * np.exp(rng.normal(0, 0.07, n))
    area = 300 * (dna / 2) ** 0.7 * np.exp(rng.normal(0, 0.08, n))
    names = ["morph_area", "morph_dna_integrated", "morph_eccentricity"]
    a.obsm["X_morph"] = np.c_[area, dna_int, rng.uniform(0.1, 0.9, n)]
    a.uns["morph_features"] = names
    a.obsm["X_fm"] = (np.c_[np.cos(TWO_PI * u), np.sin(TWO_PI * u), rng.normal(0, 1, (n, 6))]
                      + rng.normal(0, 0.5, (n, 8)))
    cohort = tmp_path / "paired" / "cohort.h5ad"
    cohort.parent.mkdir(parents=True)
    a.write_h5ad(cohort)

    test = a[rng.choice(n, 60, replace=False)].copy()
    test.obs["split"] = "test"
    test.obsm["X_morph_features_generated"] = np.asarray(test.obsm["X_morph"]) * np.exp(rng.normal(0, 0.05, (60, 3)))
    test.uns["cosmic"] = {"representation": "fm", "representation_key": "X_fm", "morph_features": names}
    pred = tmp_path / "cosmic" / "predictions.h5ad"
    pred.parent.mkdir(parents=True)
    if generated:
        test.uns["cosmic"]["generated_images"] = "predictions_generated_images.npy"
        np.save(pred.with_name("predictions_generated_images.npy"),
                rng.uniform(0, 1, (2, 60, 1, 12, 12)).astype(np.float16))
    test.write_h5ad(pred)

    crops = {}
    if with_crops:
        for s in ("s_ctrl", "s_drug"):
            path = tmp_path / "nuclei" / s / "crops.npy"
            path.parent.mkdir(parents=True)
            np.save(path, rng.uniform(0, 1, ((sample == s).sum(), 2, 12, 12)).astype(np.float16))
            crops[s] = str(path)

    truth_dir = tmp_path / "demo"
    truth_dir.mkdir()
    pd.DataFrame({"sample": sample, "barcode": a.obs["barcode"].to_numpy(), "cycle_position": u,
                  "phase": _true_phase(u), "dna_content": dna}).to_csv(truth_dir / "ground_truth.tsv", sep="\t",
                                                                       index=False)
    return cohort, pred, crops, truth_dir


# ---------------------------------------------------------------------------------------
# circular statistics
def test_circular_statistics_known_cases():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, TWO_PI, 2000)
    noisy = (a + rng.normal(0, 0.4, a.size)) % TWO_PI
    assert cc.circular_correlation(a, a) == pytest.approx(1.0)
    assert cc.circular_correlation_fl(a, a) == pytest.approx(1.0)
    assert cc.circular_agreement(a, a)["agreement"] == pytest.approx(1.0)
    # reflection: correlations flip sign, the direction-free agreement does not
    assert cc.circular_correlation(a, (-a) % TWO_PI) == pytest.approx(-1.0)
    assert cc.circular_correlation_fl(a, (-a) % TWO_PI) == pytest.approx(-1.0)
    refl = cc.circular_agreement(a, (-a) % TWO_PI)
    assert refl["agreement"] == pytest.approx(1.0) and refl["direction"] == -1
    # rotation: the offset-free agreement is invariant and recovers the offset; both correlations too
    rot = cc.circular_agreement((noisy + 1.3) % TWO_PI, a)
    assert rot["agreement"] == pytest.approx(cc.circular_agreement(noisy, a)["agreement"])
    assert rot["offset"] == pytest.approx(1.3, abs=0.05) and rot["direction"] == 1
    assert cc.circular_correlation((noisy + 2.0) % TWO_PI, a) == pytest.approx(cc.circular_correlation(noisy, a))
    assert cc.circular_correlation_fl((noisy + 2.0) % TWO_PI, a) == pytest.approx(cc.circular_correlation_fl(noisy, a))
    # uniform angles with noise: Fisher-Lee and the agreement see the association; JS is weak here
    # because the mean directions of near-uniform angles are ill-defined (why both are reported)
    assert cc.circular_correlation_fl(noisy, a) > 0.6
    assert cc.circular_agreement(noisy, a)["agreement"] > 0.9
    conc = rng.vonmises(1.0, 2.0, 2000)
    assert cc.circular_correlation((conc + rng.normal(0, 0.2, conc.size)) % TWO_PI, conc % TWO_PI) > 0.8
    # independent angles: about zero
    b = rng.uniform(0, TWO_PI, 2000)
    assert abs(cc.circular_correlation(a, b)) < 0.1
    assert abs(cc.circular_correlation_fl(a, b)) < 0.1
    assert cc.circular_agreement(a, b)["agreement"] < 0.1
    # NaN pairs are dropped
    a2 = a.copy()
    a2[:10] = np.nan
    assert cc.circular_agreement(a2, a)["n"] == 1990


# ---------------------------------------------------------------------------------------
# RNA scoring
def test_scoring_recovers_planted_phases():
    a = synthetic_expression(n=300, seed=1)
    cells, info = cc.score_cell_cycle(a, organism="auto", seed=0)
    assert info["genes"]["organism"] == "human"
    assert set(cells.columns) >= {"S_score", "G2M_score", "phase", "cycle_position", "phase_position"}
    truth = a.obs["true_phase"].replace({"G2": "G2M", "M": "G2M"}).to_numpy()
    assert (cells["phase_position"].to_numpy() == truth).mean() > 0.85
    # scanpy's rule finds the S and G2/M cells
    s_cells = truth == "S"
    assert (cells["phase"].to_numpy()[s_cells] == "S").mean() > 0.7
    assert (cells["phase"].to_numpy()[truth == "G2M"] == "G2M").mean() > 0.8
    pos = cells["cycle_position"].to_numpy()
    assert np.all((pos >= 0) & (pos < TWO_PI))
    agree = cc.circular_agreement(pos, a.obs["true_position"].to_numpy() * TWO_PI)
    assert agree["agreement"] > 0.6 and agree["direction"] == 1  # oriented along the cycle
    # seeded: the same numbers again
    again, _ = cc.score_cell_cycle(a, organism="human", seed=0)
    np.testing.assert_allclose(again["S_score"], cells["S_score"])
    np.testing.assert_allclose(again["cycle_position"], cells["cycle_position"])
    # the input is not modified
    assert "S_score" not in a.obs


def test_mouse_lists_and_aliases():
    paths = cc.gene_list_paths("mouse")
    s, g = cc.read_gene_list(paths["S"]), cc.read_gene_list(paths["G2M"])
    assert len(s) == 43 and len(g) == 54
    assert {"Cenpu", "Mcm5", "Pcna"} <= set(s) and {"Pimreg", "Jpt1", "Cdk1", "Top2a"} <= set(g)
    assert all(x[0].isupper() and (len(x) == 1 or not x[1:].isupper()) for x in s + g)
    # older symbols in the data are found; auto picks mouse for mouse symbols
    assert cc.match_genes(["Cenpu", "Jpt1", "Mcm5"], ["Mlf1ip", "Hn1", "Mcm5", "Actb"]) == ["Mlf1ip", "Hn1", "Mcm5"]
    assert cc.match_genes(["MLF1IP"], ["CENPU"]) == ["CENPU"]
    genes = cc.cell_cycle_genes(s + g + ["Actb"], organism="auto")
    assert genes.organism == "mouse" and len(genes.s_genes) == 43
    mouse = synthetic_expression(n=150, seed=2, organism="mouse")
    cells, info = cc.score_cell_cycle(mouse, organism="auto")
    assert info["genes"]["organism"] == "mouse"


def test_no_cycle_genes_raises_clear_error():
    a = ad.AnnData(X=np.random.default_rng(0).poisson(1, (30, 50)).astype(np.float32),
                   var=pd.DataFrame(index=[f"ENSG{i:011d}" for i in range(50)]))
    with pytest.raises(CosmicInputError, match="too few cell-cycle genes") as err:
        cc.score_cell_cycle(a, organism="auto", where="file 'cohort.h5ad'")
    msg = str(err.value)
    assert "cohort.h5ad" in msg and "organism" in msg and "symbols" in msg and "0 of 43" in msg
    with pytest.raises(CosmicInputError, match="organism"):
        cc.CellCycleParams.from_config({"organism": "zebrafish"})
    with pytest.raises(CosmicInputError, match="unknown key"):
        cc.CellCycleParams.from_config({"n_bins": 8})


# ---------------------------------------------------------------------------------------
# morphology
def test_dna_content_mixture_on_2n_4n():
    rng = np.random.default_rng(3)
    n2, n4 = 600, 400
    dna = np.r_[np.full(n2, 2.0), np.full(n4, 4.0)] * 5e4 * np.exp(rng.normal(0, 0.08, n2 + n4))
    calls, model = cc.dna_content_phases(dna, seed=0)
    truth = np.r_[np.full(n2, "2N"), np.full(n4, "4N")]
    assert (calls["dna_ploidy"].to_numpy() == truth).mean() > 0.97
    peaks = model.peaks()["pooled"]
    assert peaks["ratio_4N_2N"] == pytest.approx(2.0, abs=0.1)
    assert np.median(calls["dna_n"].to_numpy()[:n2]) == pytest.approx(2.0, abs=0.1)
    assert np.median(calls["dna_n"].to_numpy()[n2:]) == pytest.approx(4.0, abs=0.25)
    assert set(calls["phase_dna"]) <= {"G1", "S", "G2M"}
    # an S-phase shoulder between the peaks is called S
    mid = cc.DnaContentModel(seed=0).fit(np.log(dna)).predict(np.log(np.full(5, 3.0 * 5e4)))
    assert (mid["phase_dna"] == "S").all()
    # log10-scaled table features are recognised
    assert cc.log_dna([1.0], "morph_dapi_median_log10sum")[0] == pytest.approx(math.log(10))
    assert cc.find_feature(["morph_dapi_median_log10sum", "morph_size"], "dna") == "morph_dapi_median_log10sum"
    assert cc.find_feature(["morph_dapi_median_log10sum", "morph_size"], "area") == "morph_size"


# ---------------------------------------------------------------------------------------
# the stage
EXPECTED = ["cells.tsv", "confusion.tsv", "position_agreement.tsv", "summary.json"] + [
    f"figures/{f}.{ext}" for f in cc.FIGURES for ext in ("png", "txt")]


def test_run_cell_cycle_writes_every_output(tmp_path):
    cohort, pred, crops, truth = synthetic_cohort(tmp_path)
    out = tmp_path / "analysis" / "cell_cycle"
    summary = cc.run_cell_cycle(cohort, pred, out, params={"seed": 0, "n_position_bins": 6}, truth_dir=truth,
                                crops=crops, generated_images=pred.with_name("predictions_generated_images.npy"))
    for name in EXPECTED:
        assert (out / name).exists() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "summary.json").read_text()) == summary
    cells = pd.read_csv(out / "cells.tsv", sep="\t")
    assert len(cells) == 240
    assert set(cells.columns) >= {"sample", "barcode", "S_score", "G2M_score", "phase", "phase_position",
                                  "cycle_position", "dna_content", "dna_n", "phase_dna", "area",
                                  "phase_morph_features", "phase_morph_fm", "phase_dna_generated", "split"}
    assert (cells["split"] == "test").sum() == 60
    conf = pd.read_csv(out / "confusion.tsv", sep="\t")
    assert set(conf["comparison"]) >= {"dna_content", "classifier_features", "classifier_fm", "generated_dna"}
    assert conf.groupby("comparison")["n_cells"].sum()["dna_content"] == 240
    assert summary["nuclei_strip"]["source"] == "generated"
    assert summary["truth"]["n_matched"] == 240
    assert summary["truth"]["rna_phase_position"]["accuracy"] > 0.8
    assert summary["truth"]["dna_phase"]["accuracy"] > 0.6
    assert summary["agreement"]["dna_content_vs_rna"]["accuracy"] > 0.5
    assert "COSMIC-generated" in (out / "figures" / "nuclei_along_cycle.txt").read_text()


def test_run_cell_cycle_without_images_or_generated(tmp_path):
    cohort, pred, crops, _ = synthetic_cohort(tmp_path, generated=False)
    out = tmp_path / "observed"
    summary = cc.run_cell_cycle(cohort, pred, out, params={}, crops=crops)
    assert summary["nuclei_strip"]["source"] == "observed" and "truth" not in summary
    # no truth and no reference angle: position_agreement.tsv holds the header only
    table = pd.read_csv(out / "position_agreement.tsv", sep="\t")
    assert table.empty and list(table.columns) == cc.agreement.AGREEMENT_COLUMNS
    assert "Observed nuclei" in (out / "figures" / "nuclei_along_cycle.txt").read_text()
    # no crops and no predictions (morphology-table cohorts): still every output
    out2 = tmp_path / "none"
    summary = cc.run_cell_cycle(cohort, None, out2, params={})
    assert summary["nuclei_strip"]["source"] == "none"
    for name in EXPECTED:
        assert (out2 / name).exists(), name


def test_run_cell_cycle_reads_generated_images_only_when_given(tmp_path):
    """Generated images come from the rule's declared input, never from a file found next to the
    predictions; and the stage writes exactly the files the rule declares."""
    cohort, pred, crops, _ = synthetic_cohort(tmp_path, n=120)
    assert pred.with_name("predictions_generated_images.npy").exists()
    out = tmp_path / "analysis" / "cell_cycle"
    summary = cc.run_cell_cycle(cohort, pred, out, params={}, crops=crops)
    assert summary["nuclei_strip"]["source"] == "observed"
    written = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())
    assert written == sorted(EXPECTED)


def test_rule_script_contract(tmp_path):
    """workflow/scripts/cell_cycle.py reads snakemake.input/output/params/log as the rule gives them."""
    try:
        from snakemake.iocontainers import Namedlist
    except ImportError:  # snakemake < 9
        from snakemake.io import Namedlist

    cohort, pred, crops, truth = synthetic_cohort(tmp_path, n=120)
    out = tmp_path / "results" / "analysis" / "cell_cycle"
    figures = [str(out / "figures" / f"{f}.png") for f in cc.FIGURES]
    samples = list(crops)
    snk = types.SimpleNamespace(
        input=Namedlist(fromdict={"cohort": str(cohort), "predictions": str(pred),
                                  "generated_images": str(pred.with_name("predictions_generated_images.npy")),
                                  "crops": [crops[s] for s in samples], "truth": str(truth / "ground_truth.tsv")}),
        output=Namedlist(fromdict={"summary": str(out / "summary.json"), "cells": str(out / "cells.tsv"),
                                   "confusion": str(out / "confusion.tsv"),
                                   "agreement": str(out / "position_agreement.tsv"), "figures": figures,
                                   "captions": [f.replace(".png", ".txt") for f in figures]}),
        params=Namedlist(fromdict={"cell_cycle": {"seed": 1}, "samples": samples, "truth": str(truth),
                                   "dna_channel": 0}),
        log=Namedlist(toclone=[str(tmp_path / "cell_cycle.log")]),
    )
    import sys

    stderr = sys.stderr
    try:
        runpy.run_path(str(REPO / "workflow" / "scripts" / "cell_cycle.py"), init_globals={"snakemake": snk})
    finally:
        sys.stderr.close()
        sys.stderr = stderr
    for path in [out / "summary.json", out / "cells.tsv", out / "confusion.tsv", out / "position_agreement.tsv",
                 *map(Path, figures)]:
        assert path.exists(), path
    table = pd.read_csv(out / "position_agreement.tsv", sep="\t")
    assert set(table["reference"]) == {"demo_truth"} and (table["n_boot"] == 200).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"]["seed"] == 1 and "truth" in summary
    assert "n_cells" in (tmp_path / "cell_cycle.log").read_text()


# ---------------------------------------------------------------------------------------
# real labelled data (measured values; tolerance 0.05)
def test_peco_fucci_position_tracks_fucci_angle():
    res = validate_peco_fucci(shared_dataset("peco_fucci/sce_top101genes.h5ad"))
    assert res["n_cells"] == 888 and res["n_s_genes"] == 11 and res["n_g2m_genes"] == 24
    # measured: offset-free agreement 0.400, Fisher-Lee 0.111, oriented along the FUCCI angle
    assert res["circular_agreement"] >= 0.35
    assert res["circular_correlation_fl"] >= 0.06
    assert res["direction"] == 1
    # the Jammalamadaka-SenGupta coefficient is reported but not asserted: with angles spread round
    # the whole circle its mean directions are ill-defined (measured -0.04 here, 0.30 with another
    # normalisation scale, while the agreement stays at 0.40)
    assert np.isfinite(res["circular_correlation"])
    # the PCA position beats the angle of the Tirosh scores (measured agreement 0.35, Fisher-Lee -0.07)
    assert res["circular_agreement"] > res["alternative"]["circular_agreement"]
    # the plain PC1/PC2 angle of all 101 genes does better (measured 0.457 vs 0.400; paired bootstrap
    # difference -0.057, 95 % CI -0.089 to -0.020): the table says so
    base = res["baseline_rna_pc_angle"]
    assert base["agreement"]["agreement"] == pytest.approx(0.457, abs=0.05)
    table = pd.DataFrame(res["table"])
    score = table[table["baseline"].isna()].set_index("method")
    assert score.loc["cosmic", "mean"] == pytest.approx(res["circular_agreement"])
    assert score.loc["rna_pc_angle", "mean"] == pytest.approx(base["agreement"]["agreement"])
    assert (score["ci_low"] < score["mean"]).all() and (score["mean"] < score["ci_high"]).all()
    diff = table[table["baseline"] == "rna_pc_angle"].iloc[0]
    assert diff["diff_mean"] == pytest.approx(res["circular_agreement"] - base["agreement"]["agreement"])
    assert diff["diff_ci_low"] < diff["diff_mean"] < diff["diff_ci_high"]


def test_buettner_phase_accuracy_improves_on_tirosh():
    res = validate_buettner(shared_dataset("cellcycle_gt/buettner2015_mesc_cellcycle.h5ad"))
    assert res["n_cells"] == 182 and res["n_s_genes"] == 13 and res["n_g2m_genes"] == 29
    # measured: Tirosh (scanpy) 0.473, label-free calls from the position 0.687
    assert res["accuracy_tirosh"] == pytest.approx(0.473, abs=0.05)
    assert res["accuracy_position"] >= 0.687 - 0.05
    assert res["accuracy_position"] > res["accuracy_tirosh"] + 0.1
    assert np.asarray(res["confusion_position"]).sum() == 182
    # the same label-free rule on the plain PC1/PC2 angle of all genes: measured 0.896 (phase was
    # sorted and captured apart, so the all-gene PCs may carry capture effects too)
    assert res["baseline_rna_pc_angle"]["accuracy"] == pytest.approx(0.896, abs=0.05)


# ---------------------------------------------------------------------------------------
# the rna_pc_angle baseline and position_agreement.tsv
def test_rna_pc_angle_recovers_a_planted_angle():
    rng = np.random.default_rng(4)
    u = rng.uniform(0, 1, 300)
    # obsm["X_pca"] whose PC1/PC2 trace the true cycle: agreement with the truth ~1
    a = ad.AnnData(X=rng.normal(size=(300, 20)).astype(np.float32))
    a.obsm["X_pca"] = np.c_[np.cos(TWO_PI * u), np.sin(TWO_PI * u), 0.01 * rng.normal(size=(300, 3))]
    angle, source = cc.rna_pc_angle(a)
    assert source == "obsm['X_pca']" and np.all((angle >= 0) & (angle < TWO_PI))
    assert cc.circular_agreement(angle, TWO_PI * u)["agreement"] == pytest.approx(1.0, abs=1e-6)
    # without X_pca: PCA of X, whose two leading directions carry cos/sin of the true angle
    loadings = np.linalg.qr(rng.normal(size=(20, 2)))[0].T
    b = ad.AnnData(X=(np.c_[np.cos(TWO_PI * u), np.sin(TWO_PI * u)] @ loadings * 5
                      + 0.05 * rng.normal(size=(300, 20))).astype(np.float32))
    angle, source = cc.rna_pc_angle(b, seed=0)
    assert source.startswith("PCA of X")
    assert cc.circular_agreement(angle, TWO_PI * u)["agreement"] > 0.99


def test_position_agreement_rows_paired_difference(tmp_path):
    rng = np.random.default_rng(5)
    ref = rng.uniform(0, TWO_PI, 400)
    position = (ref + rng.normal(0, 1.2, 400)) % TWO_PI
    baseline = (-ref + 1.0 + rng.normal(0, 0.6, 400)) % TWO_PI  # reflected and rotated: still agrees
    position[:5] = np.nan  # cells without a position are left out of both
    rows = cc.position_agreement_rows("fucci_theta", position, baseline, ref, seed=3)
    table = cc.write_position_agreement(tmp_path / "t.tsv", rows)
    back = pd.read_csv(tmp_path / "t.tsv", sep="\t")
    assert list(back.columns) == cc.agreement.AGREEMENT_COLUMNS == list(table.columns)
    assert len(back) == 3 and (back["direction"] == "cell_cycle").all() and (back["space"] == "rna").all()
    assert (back["metric"] == "position_agreement").all() and (back["n_cells"] == 395).all()
    score = back[back["baseline"].isna()].set_index("method")
    assert list(score.index) == ["cosmic", "rna_pc_angle"]
    ok = np.isfinite(position)
    mean_c = cc.circular_agreement(position[ok], ref[ok])["agreement"]
    mean_b = cc.circular_agreement(baseline[ok], ref[ok])["agreement"]
    assert score.loc["cosmic", "mean"] == pytest.approx(mean_c, abs=1e-5)
    assert score.loc["rna_pc_angle", "mean"] == pytest.approx(mean_b, abs=1e-5)
    assert mean_b > 0.8 and (score["ci_low"] < score["mean"]).all() and (score["mean"] < score["ci_high"]).all()
    diff = back[back["baseline"] == "rna_pc_angle"]
    assert len(diff) == 1 and diff["method"].iloc[0] == "cosmic" and diff["mean"].isna().all()
    assert diff["diff_mean"].iloc[0] == pytest.approx(mean_c - mean_b, abs=1e-5)
    assert diff["diff_ci_low"].iloc[0] < diff["diff_mean"].iloc[0] < diff["diff_ci_high"].iloc[0] < 0
    assert score["diff_mean"].isna().all()
    # seeded: the same intervals again; no reference: the header only
    assert cc.position_agreement_rows("fucci_theta", position, baseline, ref, seed=3) == rows
    empty = cc.write_position_agreement(tmp_path / "empty.tsv", [])
    assert empty.empty and (tmp_path / "empty.tsv").read_text().strip().split("\t") == cc.agreement.AGREEMENT_COLUMNS


def test_run_cell_cycle_reports_the_pc_angle_baseline(tmp_path):
    """A cohort whose RNA PCA traces the true cycle: the baseline agrees ~1 with the demo truth and
    with a FUCCI-like reference angle, in summary.json and position_agreement.tsv alike."""
    cohort, pred, crops, truth = synthetic_cohort(tmp_path, n=160)
    a = ad.read_h5ad(cohort)
    u = pd.read_csv(truth / "ground_truth.tsv", sep="\t")["cycle_position"].to_numpy()  # same cell order
    rng = np.random.default_rng(6)
    a.obsm["X_pca"] = np.c_[np.cos(TWO_PI * u), np.sin(TWO_PI * u), rng.normal(0, 0.01, (160, 4))]
    a.obs["theta"] = (TWO_PI * u + rng.normal(0, 0.3, 160)) % TWO_PI
    a.write_h5ad(cohort)
    out = tmp_path / "analysis" / "cell_cycle"
    summary = cc.run_cell_cycle(cohort, pred, out, params={"reference_angle_key": "theta"}, truth_dir=truth,
                                crops=crops)
    assert summary["rna"]["baseline_rna_pc_angle_source"] == "obsm['X_pca']"
    assert summary["truth"]["position_agreement_rna_pc_angle"]["agreement"] == pytest.approx(1.0, abs=1e-6)
    ref = summary["reference_angle"]
    assert ref["baseline_rna_pc_angle"]["agreement"]["agreement"] > 0.9
    assert set(ref) >= {"key", "n", "circular_correlation", "circular_correlation_fl", "agreement"}
    cells = pd.read_csv(out / "cells.tsv", sep="\t")
    np.testing.assert_allclose(cells["rna_pc_angle_fraction"], cells["rna_pc_angle"] / TWO_PI, atol=1e-5)
    table = pd.read_csv(out / "position_agreement.tsv", sep="\t")
    assert len(table) == 6 and set(table["reference"]) == {"fucci_theta", "demo_truth"}
    assert list(table.columns) == cc.agreement.AGREEMENT_COLUMNS
    for name, expected in (("fucci_theta", ref), ("demo_truth", None)):
        rows = table[table["reference"] == name]
        score = rows[rows["baseline"].isna()].set_index("method")["mean"]
        if expected is not None:  # the same number as summary.json
            assert score["cosmic"] == pytest.approx(expected["agreement"]["agreement"], abs=1e-5)
            assert score["rna_pc_angle"] == pytest.approx(expected["baseline_rna_pc_angle"]["agreement"]["agreement"],
                                                          abs=1e-5)
        else:
            assert score["cosmic"] == pytest.approx(summary["truth"]["position_agreement"]["agreement"], abs=1e-5)
            assert score["rna_pc_angle"] == pytest.approx(1.0, abs=1e-5)
        diff = rows[rows["baseline"] == "rna_pc_angle"]["diff_mean"].iloc[0]
        assert diff == pytest.approx(score["cosmic"] - score["rna_pc_angle"], abs=2e-5)
        assert (rows["n_cells"] == 160).all()


# ---------------------------------------------------------------------------------------
# scoring a chunk of cells at a time (cohorts too large to hold)
def test_tirosh_scores_in_chunks_equal_one_scanpy_call(tmp_path, monkeypatch):
    """Scored a few cells at a time (in memory, sparse or dense, or read from the file), the scores and
    phases equal scanpy's on the whole matrix: the control genes come from the whole cohort's bins."""
    import scanpy as sc
    import scipy.sparse as sp

    import cosmic.cohort_io

    a = synthetic_expression(n=300, seed=4)
    a.X = sp.csr_matrix(a.X)
    genes = cc.cell_cycle_genes(a.var_names, "human")
    reference = a.copy()
    sc.tl.score_genes_cell_cycle(reference, s_genes=genes.s_genes, g2m_genes=genes.g2m_genes, random_state=3)
    path = tmp_path / "cohort.h5ad"
    a.write_h5ad(path)
    monkeypatch.setattr(cosmic.cohort_io, "CHUNK_VALUES", 2000)  # ~8 cells per chunk
    dense = ad.AnnData(X=a.X.toarray(), obs=a.obs, var=a.var)
    for adata, x in ((a, None), (dense, None), (ad.AnnData(obs=a.obs, var=a.var), path)):
        scores = cc.tirosh_scores(adata, genes.s_genes, genes.g2m_genes, seed=3, x=x)
        for column in ("S_score", "G2M_score"):
            np.testing.assert_allclose(scores[column], reference.obs[column].astype(float), atol=1e-5)  # float32 sums in scanpy
        assert (scores["phase"].to_numpy() == reference.obs["phase"].to_numpy()).all()


def test_run_cell_cycle_from_the_file_equals_in_memory(tmp_path):
    cohort, pred, crops, _ = synthetic_cohort(tmp_path, n=160)
    from_file = cc.run_cell_cycle(cohort, None, tmp_path / "file", params={})
    in_memory = cc.run_cell_cycle(ad.read_h5ad(cohort), None, tmp_path / "memory", params={})
    for key in ("phase_counts_tirosh", "phase_counts_position", "tirosh_vs_position"):
        assert from_file["rna"][key] == in_memory["rna"][key]
    a, b = (pd.read_csv(tmp_path / d / "cells.tsv", sep="\t") for d in ("file", "memory"))
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6)  # dense vs sparse summation order
