"""Shared fixtures: repository paths, the shared real datasets, and a Snakemake runner."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
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


@pytest.fixture
def fake_conda(tmp_path) -> dict:
    """An environment whose PATH has a minimal ``conda`` answering Snakemake's startup checks.

    conda is not installed on CI machines; a dry run with ``--software-deployment-method conda``
    (as the SLURM profile sets it) only asks conda for its version and platform.
    """
    return write_fake_conda(tmp_path)
