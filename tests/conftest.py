"""Shared fixtures: repository paths, the shared real datasets, and a Snakemake runner."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TEST_CONFIG = REPO / ".test" / "config" / "config.yaml"
# The end-to-end runs write under a results folder with a space and a shell command substitution
# in its name: no step may pass a path through a shell unquoted (the command would create PWNED).
HOSTILE_RESULTS = "results dir $(touch PWNED)"
sys.path.insert(0, str(REPO / "workflow" / "scripts"))


def shared_dataset(name: str) -> Path:
    """Path of a real dataset in ../shared/data; skip the test cleanly when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared dataset {name} not available at {path}")
    return path


def run_snakemake(*args, cwd=REPO, env=None, timeout=900) -> subprocess.CompletedProcess:
    """Run the workflow's Snakefile in ``cwd`` with the current interpreter."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def write_fake_conda(folder) -> dict:
    """A copy of ``os.environ`` whose PATH has a minimal ``conda`` (written into ``folder``) answering
    Snakemake's startup checks. Shared with ``benchmarks/dry_run_scale.py``."""
    bindir = Path(folder) / "fake_conda_bin"
    bindir.mkdir()
    info = json.dumps({"conda_prefix": str(Path(folder) / "conda"), "platform": "linux-64"})
    script = bindir / "conda"
    script.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f"  'info --json') echo '{info}' ;;\n"
        "  '--version') echo 'conda 25.1.1' ;;\n"
        "  'config --get channel_priority --json') echo '{\"get\": {\"channel_priority\": \"strict\"}}' ;;\n"
        "  *) echo \"fake conda: unsupported $*\" >&2; exit 1 ;;\n"
        "esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    return env


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats:" table of a Snakemake run or dry run: rule -> jobs, plus "total"."""
    stats = output.split("Job stats:")[1].split("\n\n")[0]
    return {line.split()[0]: int(line.split()[1]) for line in stats.strip().splitlines()[2:]}


@pytest.fixture
def fake_conda(tmp_path) -> dict:
    """An environment whose PATH has a minimal ``conda`` answering Snakemake's startup checks.

    conda is not installed on CI machines; a dry run with ``--software-deployment-method conda``
    (as the SLURM profile sets it) only asks conda for its version and platform.
    """
    return write_fake_conda(tmp_path)


@dataclass
class WorkflowRun:
    workdir: Path
    config: Path
    process: subprocess.CompletedProcess
    wall_s: float

    @property
    def results(self) -> Path:
        return self.workdir / HOSTILE_RESULTS


def write_test_config(workdir: Path, results: str = HOSTILE_RESULTS) -> Path:
    """The .test configuration with ``results:`` set to ``results``, written into ``workdir``."""
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["results"] = results
    path = Path(workdir) / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def unactivated_environment() -> dict:
    """``os.environ`` as in a shell where this virtual environment is not activated: its bin folder
    (jupyter, snakemake, ...) is not on PATH, so no step may rely on finding a tool there."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != bindir)
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.fixture(scope="session")
def local_test_run(tmp_path_factory) -> WorkflowRun:
    """The whole workflow on the .test config in a temporary directory, locally on 2 cores, run by
    this interpreter with its virtual environment not activated (shared by the integration tests
    and the SLURM test, which compares its outputs to these)."""
    workdir = tmp_path_factory.mktemp("e2e")
    config = write_test_config(workdir)
    start = time.perf_counter()
    process = run_snakemake("--cores", "2", "--configfile", config, "--directory", workdir,
                            env=unactivated_environment())
    wall = time.perf_counter() - start
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return WorkflowRun(workdir, config, process, wall)
