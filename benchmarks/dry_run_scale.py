"""Benchmark the cost of planning one large sample: `snakemake -n` time and job counts.

Builds, in a temporary folder, one user sample (sample sheet, empty count folder) whose images
are hard links of a single 512 x 512 two-channel OME-TIFF, with ``--rows-per-image`` pairing-table
rows per image (10,000 images at 100 rows: a 10^6-row pairing table), and dry-runs the workflow
on it, nothing run yet, twice: plainly (wall and CPU time, jobs Snakemake plans) and with
``--profile profiles/slurm`` (a stand-in ``conda`` answers the profile's startup checks; no
cluster is needed), whose output counts what would be submitted: one SLURM job per group job
(``group-components`` in the profile batches the per-image rules) and one per other job not run
locally. CPU time is the steadier figure on a shared machine.

Prints one line per image count and checkout (``--workflow``: compare another checkout, e.g. an
older version, on the same sample): ``images wall_s cpu_s jobs slurm_jobs slurm_wall_s
slurm_cpu_s workflow``.

    python benchmarks/dry_run_scale.py [--images 1000 10000] [--workflow . ../old-checkout]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import job_counts, write_fake_conda  # noqa: E402  (the tests' stand-in conda, Job stats)
from cosmic.demo import write_ome_tiff  # noqa: E402


def build_sample(workdir: Path, n_images: int, rows_per_image: int, size: int = 512) -> Path:
    """A sample sheet, its images (hard links of one image), counts folder and pairing table;
    returns the config file that points at them."""
    raw = workdir / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "counts").mkdir()
    rng = np.random.default_rng(0)
    source = workdir / "source.ome.tif"
    write_ome_tiff(source, rng.integers(0, 4000, (2, size, size), dtype=np.uint16), "dry_run_scale")
    names = [f"fov_{i:05d}" for i in range(n_images)]
    for name in names:
        os.link(source, raw / "images" / f"{name}.ome.tif")
    n_rows = n_images * rows_per_image
    pd.DataFrame({
        "barcode": [f"BC{i:08d}-1" for i in range(n_rows)],
        "image": np.repeat(names, rows_per_image),
        "y": rng.uniform(0, size, n_rows).round(1),
        "x": rng.uniform(0, size, n_rows).round(1),
    }).to_csv(raw / "pairing.tsv", sep="\t", index=False)
    pd.DataFrame([{"sample": "big", "images": "raw/images", "counts": "raw/counts",
                   "pairing": "raw/pairing.tsv", "condition": "control"}]).to_csv(
        workdir / "samples.tsv", sep="\t", index=False)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(demo=False, samples="samples.tsv", results="results")
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run(workflow: Path, workdir: Path, config: Path, *extra, env=None):
    """Wall and CPU seconds of `snakemake -n`, its job stats (rule -> count, plus total) and
    its output."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(workflow / "Snakefile"),
           "--configfile", str(config), "--directory", str(workdir), *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if result.returncode != 0:
        raise SystemExit(f"dry run failed ({' '.join(cmd)}):\n{result.stderr[-3000:]}")
    return wall, cpu, job_counts(result.stdout), result.stdout


def local_rules(workflow: Path) -> set[str]:
    """Rules run by Snakemake itself, never submitted: `localrules:` of the rule files and `all`."""
    names = {"all"}
    for path in (workflow / "workflow" / "rules").glob("*.smk"):
        for block in re.findall(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", path.read_text(), re.M):
            names.update(re.findall(r"\w+", block))
    return names


def slurm_jobs(output: str, workflow: Path) -> int:
    """Jobs a SLURM dry run would submit: one per group job (the profile's group-components
    batch grouped rules) plus one per ungrouped job that does not run locally."""
    local = local_rules(workflow)
    groups = len(re.findall(r"^\[[^]]+\] Group job ", output, re.M))
    single = [name for name in re.findall(r"^rule (\w+):", output, re.M) if name not in local]
    return groups + len(single)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rows-per-image", type=int, default=100)
    parser.add_argument("--workflow", type=Path, nargs="+", default=[ROOT],
                        help="checkouts to compare (Snakefile and profiles/slurm of each)")
    args = parser.parse_args(argv)
    print("images\twall_s\tcpu_s\tjobs\tslurm_jobs\tslurm_wall_s\tslurm_cpu_s\tworkflow")
    for n_images in args.images:
        with tempfile.TemporaryDirectory(prefix="dry_run_scale_") as tmp:
            workdir = Path(tmp)
            config = build_sample(workdir, n_images, args.rows_per_image)
            env = write_fake_conda(workdir)
            for workflow in args.workflow:
                wall, cpu, counts, _ = dry_run(workflow, workdir, config)
                slurm_wall, slurm_cpu, _, output = dry_run(
                    workflow, workdir, config, "--profile", str(workflow / "profiles" / "slurm"), env=env)
                print(f"{n_images}\t{wall:.1f}\t{cpu:.1f}\t{counts['total']}\t{slurm_jobs(output, workflow)}"
                      f"\t{slurm_wall:.1f}\t{slurm_cpu:.1f}\t{workflow}", flush=True)


if __name__ == "__main__":
    main()
