"""End to end: the whole workflow on a tiny generated dataset in a temporary directory."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import HOSTILE_RESULTS, REPO, job_counts, run_snakemake


@pytest.fixture(scope="module")
def finished_run(local_test_run):
    return local_test_run.results, local_test_run.config


def test_no_path_reaches_a_shell_unquoted(finished_run):
    """The results folder's name holds a space and `$(touch PWNED)`: the run completed (the fixture
    asserts it) and nothing was executed, in the working directory or anywhere below it."""
    results, _ = finished_run
    assert results.is_dir() and " " in results.name
    assert not list(results.parent.rglob("PWNED"))
    assert not list(results.parent.parent.glob("PWNED"))


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
    assert {"X_morph", "X_rna", "X_pca", "X_fm"} <= set(cohort.obsm)
    assert set(cohort.obs["sample"]) == {"demo_control", "demo_docetaxel"}
    assert cohort.obs_names.is_unique and cohort.obs_names.str.startswith("demo_").all()
    assert "counts" in cohort.layers
    sc.pp.neighbors(cohort, use_rep="X_rna")  # usable as is


def test_rerun_is_a_no_op(finished_run):
    results, config = finished_run
    again = run_snakemake("-n", "--configfile", config, "--directory", results.parent)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def test_a_finished_local_run_moves_to_the_cluster_profile_without_recomputing(finished_run, fake_conda):
    """README, Running on a SLURM cluster: the profile's switch to conda environments is a software
    change; planning with the documented rerun triggers keeps every finished output."""
    results, config = finished_run
    args = ("-n", "--profile", REPO / "profiles" / "slurm", "--configfile", config, "--directory", results.parent)
    moved = run_snakemake(*args, "--rerun-triggers", "mtime", "params", "input", "code", env=fake_conda)
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert "Nothing to be done" in moved.stdout + moved.stderr


# Files that must survive a failed or interrupted job, so they are deliberately not rule outputs
# (Snakemake deletes a failed job's outputs): each model's resume checkpoint, the training log that
# a resumed run appends to, and the feature targets pretraining streams from (rebuilt when missing).
# The repeated-evaluation splits keep their whole training folder (resume state and fitted model).
RESUME_STATE = tuple(f"{HOSTILE_RESULTS}/models/{path}" for path in (
    "foundation/last.pt",
    "foundation/train_log.tsv",
    "foundation/feature_targets.npy",
    "cosmic/checkpoint.pt",
    "cosmic/training_log.tsv",
    "cosmic/splits/*/*",
    "generate/split_*/last.pt",
    "generate/split_*/last_log.tsv",
))


def declared_files(workdir, config) -> set[str]:
    """Every output, log and benchmark path of every job, as a forced dry run lists them."""
    dry = run_snakemake("-n", "-F", "--configfile", config, "--directory", workdir)
    assert dry.returncode == 0, dry.stderr[-2000:]
    declared = set()
    for line in dry.stdout.splitlines():
        line = line.strip()
        for field in ("output: ", "log: ", "benchmark: "):
            if line.startswith(field):
                # a flagged output is listed with its flag, e.g. "folder (update)"
                declared.update(path.strip().split(" (")[0] for path in line[len(field):].split(","))
    return declared


def test_every_file_a_rule_writes_is_declared(finished_run):
    """Nothing under results/ is written behind Snakemake's back (it could not rerun or clean it)."""
    results, config = finished_run
    workdir = results.parent
    declared = declared_files(workdir, config)
    folders = tuple(f"{path}/" for path in declared)  # directory() outputs
    on_disk = {str(p.relative_to(workdir)) for p in results.rglob("*") if p.is_file()}
    from fnmatch import fnmatch

    undeclared = sorted(p for p in on_disk - declared if not p.startswith(folders)
                        and not any(fnmatch(p, pattern) for pattern in RESUME_STATE))
    assert not undeclared, f"written by a rule but declared by none: {undeclared}"


def test_adding_a_sample_reruns_only_its_own_per_sample_jobs(finished_run):
    """The demo data used as a user's sample sheet: up to date; a new sample adds only its jobs."""
    import shutil

    results, config = finished_run
    workdir = results.parent
    sheet = pd.read_csv(results / "demo" / "samples.tsv", sep="\t")
    import yaml

    user_config = yaml.safe_load(config.read_text())
    user_config.update(demo=False, samples="user_samples.tsv")
    (workdir / "user.yaml").write_text(yaml.safe_dump(user_config))
    sheet.to_csv(workdir / "user_samples.tsv", sep="\t", index=False)
    target = f"{HOSTILE_RESULTS}/paired/cohort.h5ad"
    same = run_snakemake("-n", target, "--configfile", "user.yaml", "--directory", workdir, cwd=workdir)
    assert same.returncode == 0, same.stderr
    assert "Nothing to be done" in same.stdout + same.stderr

    shutil.copytree(results / "demo" / "demo_control", workdir / "raw" / "extra")
    extra = sheet.iloc[[0]].assign(sample="extra", images="raw/extra/images", counts="raw/extra/counts",
                                   pairing="raw/extra/pairing.tsv")
    pd.concat([sheet, extra]).to_csv(workdir / "user_samples.tsv", sep="\t", index=False)
    more = run_snakemake("-n", target, "--configfile", "user.yaml", "--directory", workdir, cwd=workdir)
    assert more.returncode == 0, more.stderr
    n_images = len(list((workdir / "raw" / "extra" / "images").glob("*.tif")))
    # Per-sample work runs for the new sample only. The foundation model is pretrained on the crops
    # of all samples, so it (and what depends on it) is refreshed with the new sample's nuclei.
    # the new sample's nucleus diameter is checked against the run's reference (the first sample's),
    # and its pairing table is split into one positions file per image
    assert job_counts(more.stdout) == {"segment": n_images, "nucleus_diameter": 1, "pairing_by_image": 1,
                                       "nuclei": 1, "rna": 1, "pretrain": 1, "embed": 3, "pair": 3, "cohort": 1,
                                       "total": n_images + 12}
    assert f"output: {HOSTILE_RESULTS}/segmentation/demo_control" not in more.stdout


REPORT_FIGURES = {"qc": 4, "foundation": 2, "cosmic": 2, "cell_cycle": 4, "drug_response": 4}


@pytest.mark.parametrize("name", list(REPORT_FIGURES))
def test_reports_are_rendered(finished_run, name):
    """Every report executed without an error cell and its HTML holds its figures."""
    results, _ = finished_run
    index = (results / "reports" / "index.html").read_text()
    assert f'href="{name}.html"' in index
    executed = json.loads((results / "reports" / f"{name}.ipynb").read_text())
    errors = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors[:1]
    html = (results / "reports" / f"{name}.html").read_text()
    assert html.count("data:image/png;base64") >= REPORT_FIGURES[name]
    assert "Traceback" not in html


def test_snakemake_report_bundles_key_figures(finished_run):
    results, config = finished_run
    out = results.parent / "report.html"
    result = run_snakemake("--report", out, "--configfile", config,
                           "--directory", results.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.stat().st_size > 50_000


def test_foundation_model_is_trained_embedded_and_probed(finished_run):
    results, _ = finished_run
    log = pd.read_csv(results / "models" / "foundation" / "train_log.tsv", sep="\t")
    assert log["step"].max() == 30  # .test config: max_steps 30
    probes = pd.read_csv(results / "qc" / "foundation_probes.tsv", sep="\t")
    assert set(probes["representation"]) == {"foundation", "region_properties", "random_encoder"}
    assert set(probes["target"]) == {"cell_type", "phase", "treatment"}
    assert probes["accuracy"].between(0, 1).all() and (probes["n_test"] > 0).all()
    for name in ("foundation_reconstructions.png", "foundation_umap.png"):
        assert (results / "qc" / name).stat().st_size > 10_000


def test_cosmic_reports_held_out_metrics_with_baselines(finished_run):
    import anndata as ad

    results, _ = finished_run
    metrics = json.loads((results / "cosmic" / "metrics.json").read_text())
    expression = metrics["morphology_to_rna"]["expression"]
    assert {"cosmic", "mean", "ridge", "knn"} <= set(expression)
    predictions = ad.read_h5ad(results / "cosmic" / "predictions.h5ad")
    assert predictions.n_obs == metrics["n_cells"]["test"]
    cohort = ad.read_h5ad(results / "paired" / "cohort.h5ad", backed="r")
    assert set(predictions.obs_names) <= set(cohort.obs_names)
    variance = pd.read_csv(results / "cosmic" / "variance_decomposition.tsv", sep="\t")
    assert len(variance) > 0
    # the default representation (auto) models the foundation embedding, so generated nuclei are rendered
    # beside the real ones, and on the demo the genes' programs are ranked against the oracle
    assert metrics["representation"] == "fm"
    assert "the real nucleus" in (results / "cosmic" / "figures" / "generated_nuclei.txt").read_text()
    by_program = metrics["oracle"]["r2_by_program"]
    assert all(1 <= p["median_rank"] <= metrics["oracle"]["n_genes_ranked"] for p in by_program.values())


def test_repeated_evaluation_tables(finished_run):
    """summary.tsv and paired.tsv hold COSMIC and every baseline over the configured splits (2 in .test)."""
    results, _ = finished_run
    summary = pd.read_csv(results / "cosmic" / "evaluation" / "summary.tsv", sep="\t")
    paired = pd.read_csv(results / "cosmic" / "evaluation" / "paired.tsv", sep="\t")
    held_out = summary[summary["direction"] != "cell_cycle"]
    assert (held_out["n_splits"] == 2).all()
    r2 = held_out[(held_out["metric"] == "weighted_r2") & (held_out["space"] == "features")]
    assert set(r2["method"]) == {"cosmic", "mean", "ridge", "spline_ridge", "knn"}
    spaces = set(held_out["space"])
    assert {"features", "image_properties", "image_embedding"} <= spaces  # the demo renders nuclei
    generation = held_out[held_out["metric"] == "knna_k100"]
    assert {"cosmic", "ridge_residual", "nearest_rna"} <= set(generation["method"])
    images = held_out[(held_out["space"] == "image_properties") & (held_out["metric"] == "knna_k1")]
    # the pixel-space generator beside the foundation-decoder path and the baselines
    assert set(images["method"]) == {"diffusion", "embedding_decoder", "ridge_residual", "nearest_rna"}
    figures = results / "cosmic" / "generate" / "figures"
    assert all((figures / f"{name}.png").stat().st_size > 5_000 for name in
               ("generated_vs_real", "generated_along_cycle", "generated_distributions"))
    cycle = summary[summary["direction"] == "cell_cycle"]
    assert set(cycle["method"]) == {"cosmic", "rna_pc_angle"}
    assert {"ridge", "spline_ridge", "knn", "ridge_residual", "nearest_rna", "rna_pc_angle"} <= set(
        paired["baseline"])
    assert (results / "cosmic" / "evaluation" / "figures" / "paired_differences.png").stat().st_size > 10_000


def test_workflow_dna_content_doubles_from_g1_to_g2(finished_run):
    """The nuclei stage's integrated DNA intensity of true G2 nuclei is about twice that of G1."""
    from cosmic.truth.nuclei import annotate_nuclei

    results, _ = finished_run
    tables = pd.concat([pd.read_parquet(p) for p in sorted((results / "nuclei").glob("*/nuclei.parquet"))])
    pairs = [(m, results / "demo" / m.parent.name / "truth_masks" / m.name.replace(".mask.tif", ".tif"))
             for m in sorted((results / "segmentation").glob("*/*.mask.tif"))]
    truth = pd.read_csv(results / "demo" / "ground_truth.tsv", sep="\t")
    annotated = annotate_nuclei(tables, pairs, truth)
    normal = annotated[annotated["qc_pass"] & (annotated["polyploid"] == False)]  # noqa: E712
    by_phase = normal.groupby("phase")["morph_dna_integrated"].median()
    assert 1.7 < by_phase["G2"] / by_phase["G1"] < 2.3, by_phase
