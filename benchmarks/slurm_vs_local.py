"""Benchmark: the same configuration run locally and through profiles/slurm on this machine's SLURM.

Needs an idle SLURM node here (`bash .ci/start_slurm.sh` starts a one-node cluster as root). Runs
the workflow twice in fresh temporary folders, first with the local executor on all the node's CPUs,
then with ``--profile`` set to the shipped SLURM profile plus the CI overlay of
tests/slurm_cluster.py (partition, no account, no GPUs, squeue status checks, installed software).
Prints one TSV row per run, ``mode wall_s sbatch_jobs``, then the ratio of the SLURM wall time to the
local one. Where the time goes on SLURM: every submitted job starts Python and parses the Snakefile,
and the executor plugin notices a finished job only at its next status check (the interval grows by
10 s after each check that finds nothing finished), once per stage of the job graph.

    python benchmarks/slurm_vs_local.py [--configfile .test/config/config.yaml] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import run_snakemake  # noqa: E402
from slurm_cluster import ci_profile, environment, slurm_node, submitted_jobs  # noqa: E402


def run(workdir: Path, config: Path, *args) -> float:
    start = time.perf_counter()
    done = run_snakemake("--configfile", config, "--directory", workdir, *args, cwd=workdir, env=environment(),
                         timeout=None)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({' '.join(args)}):\n{done.stderr[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", type=Path, default=ROOT / ".test" / "config" / "config.yaml")
    parser.add_argument("--keep", action="store_true", help="keep the two run folders (printed)")
    args = parser.parse_args()
    node = slurm_node()
    if node is None:
        sys.exit("no idle SLURM node on this machine: start one with `bash .ci/start_slurm.sh` (as root)")
    base = Path(tempfile.mkdtemp(prefix="cosmic-slurm-bench-"))
    config = yaml.safe_load(args.configfile.resolve().read_text())
    config["results"] = "results"
    walls = {}
    for mode in ("local", "slurm"):
        workdir = base / mode
        workdir.mkdir()
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        extra = (["--cores", node["cpus"]] if mode == "local"
                 else ["--profile", ci_profile(workdir / "profile", node)])
        walls[mode] = run(workdir, workdir / "config.yaml", *extra)
        jobs = len(submitted_jobs(workdir)) if mode == "slurm" else 0
        print(f"{mode}\t{walls[mode]:.1f}\t{jobs}", flush=True)
    print(f"ratio\t{walls['slurm'] / walls['local']:.2f}")
    if args.keep:
        print(f"runs kept in {base}")
    else:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
