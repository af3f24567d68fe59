"""The .test configuration through profiles/slurm on a real SLURM cluster (one node on this machine).

CI starts the cluster with `.ci/start_slurm.sh` (Debian slurm-wlm + munge); where none runs, the
test skips and says so. The profile is the shipped one with the CI overlay of
tests/slurm_cluster.py (partition, no account, no GPUs, squeue status, installed software).
"""

from __future__ import annotations

import re
import time

import numpy as np
import pandas as pd
import pytest
import tifffile

from conftest import job_counts, run_snakemake, write_test_config
from slurm_cluster import ci_profile, environment, slurm_node, submitted_jobs

NODE = slurm_node()
pytestmark = pytest.mark.skipif(
    NODE is None, reason="no idle SLURM node on this machine (CI starts one with .ci/start_slurm.sh)")

# run on the submitting host (cheap bookkeeping) rather than as SLURM jobs
LOCAL_RULES = {"all", "report_index", "report_html", "cosmic_evaluation"}


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory, local_test_run):
    workdir = tmp_path_factory.mktemp("slurm")
    # cluster executors cannot take the local run's hostile results path (see
    # test_workflow.py::test_cluster_run_refuses_paths_a_shell_would_split_or_execute)
    config = write_test_config(workdir, results="results")
    profile = ci_profile(workdir / "profile", NODE)
    start = time.perf_counter()
    process = run_snakemake("--profile", profile, "--configfile", config, "--directory", workdir,
                            env=environment(), timeout=1800)
    wall = time.perf_counter() - start
    assert process.returncode == 0, process.stdout[-4000:] + process.stderr[-4000:]
    print(f"SLURM run {wall:.0f} s, local run {local_test_run.wall_s:.0f} s: "
          f"{wall / local_test_run.wall_s:.2f}x; {len(submitted_jobs(workdir))} sbatch jobs")
    return workdir, local_test_run


def test_every_non_local_job_went_through_sbatch(slurm_run):
    workdir, local = slurm_run
    # each SLURM job's log holds the output of the Snakemake it ran, one "rule <name>:" per job in it
    submitted_rules = {name for path in submitted_jobs(workdir)
                       for name in re.findall(r"^\s*(?:local)?(?:rule|checkpoint) (\w+):", path.read_text(), re.M)}
    run_locally = set(job_counts(local.process.stdout + local.process.stderr)) - {"total"}
    assert submitted_rules == run_locally - LOCAL_RULES


def test_outputs_match_the_local_run(slurm_run):
    workdir, local = slurm_run
    results = workdir / "results"

    def files(folder):
        return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}

    assert files(results) == files(local.results)
    # the data stages are deterministic: identical masks, nucleus tables and pairing
    for mask in sorted(local.results.glob("segmentation/*/*.mask.tif")):
        np.testing.assert_array_equal(tifffile.imread(mask), tifffile.imread(results / mask.relative_to(local.results)))
    for table in ("nuclei/demo_control/nuclei.parquet", "nuclei/demo_docetaxel/nuclei.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(local.results / table), pd.read_parquet(results / table))
    pairing = "qc/pairing_accuracy.tsv"
    pd.testing.assert_frame_equal(pd.read_csv(local.results / pairing, sep="\t"),
                                  pd.read_csv(results / pairing, sep="\t"))
    # the models train with the same seeds: the evaluation has the same rows, all finite
    summary = "cosmic/evaluation/summary.tsv"
    here, there = (pd.read_csv(r / summary, sep="\t") for r in (local.results, results))
    keys = ["direction", "space", "metric", "method"]
    assert here[keys].equals(there[keys]) and np.isfinite(there["mean"]).all()
