"""End to end: the whole workflow on a tiny generated dataset in a temporary directory."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, run_snakemake


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    result = run_snakemake("--cores", "2", "--configfile", REPO / ".test/config/config.yaml",
                           "--directory", workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir / "results", result


def test_every_stage_produced_its_outputs(finished_run):
    results, _ = finished_run
    for sample in ("demo_control", "demo_docetaxel"):
        table = pd.read_parquet(results / "nuclei" / sample / "nuclei.parquet")
        crops = np.load(results / "nuclei" / sample / "crops.npy", mmap_mode="r")
        assert len(table) > 50 and crops.shape == (len(table), 2, 64, 64) and crops.dtype == np.float16
        assert (results / "rna" / f"{sample}.qc.png").stat().st_size > 10_000
    assert json.loads((results / "demo" / "oracle.json").read_text())["n_cells"] == 240


def test_segmentation_recovers_the_true_nuclei(finished_run):
    results, _ = finished_run
    quality = pd.read_csv(results / "qc" / "segmentation_quality.tsv", sep="\t").set_index("sample")
    assert quality.loc["ALL", "f1"] > 0.9


def test_cells_are_paired_to_their_true_nucleus(finished_run):
    results, _ = finished_run
    accuracy = pd.read_csv(results / "qc" / "pairing_accuracy.tsv", sep="\t").set_index("sample")
    assert accuracy.loc["ALL", "precision"] > 0.99
    assert accuracy.loc["ALL", "fraction_of_cells_linked_to_true_nucleus"] > 0.95


def test_cohort_opens_in_scanpy(finished_run):
    import scanpy as sc

    results, _ = finished_run
    cohort = sc.read_h5ad(results / "paired" / "cohort.h5ad")
    assert {"X_morph", "X_rna", "X_pca"} <= set(cohort.obsm)
    assert set(cohort.obs["sample"]) == {"demo_control", "demo_docetaxel"}
    assert cohort.obs_names.is_unique and cohort.obs_names.str.startswith("demo_").all()
    assert "counts" in cohort.layers
    sc.pp.neighbors(cohort, use_rep="X_rna")  # usable as is


def test_rerun_is_a_no_op(finished_run):
    results, _ = finished_run
    again = run_snakemake("-n", "--configfile", REPO / ".test/config/config.yaml", "--directory", results.parent)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
