"""The SLURM profile as CI runs it on the one-node cluster that `.ci/start_slurm.sh` starts.

`ci_profile` writes a copy of `profiles/slurm/config.yaml` with only what a one-node CPU cluster
needs changed (the overlay): the partition filled in, no account, GPU requests dropped, CPUs and
memory capped at the node's, job status from `squeue` (no accounting database), software from the
installed environment instead of conda, and successful jobs' SLURM logs kept so they can be counted.
Shared by tests/test_slurm.py and benchmarks/slurm_vs_local.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"


def slurm_node() -> dict | None:
    """Partition, CPUs and memory (MB) of an idle SLURM node on this machine, or None."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%P %c %m %T"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.stdout.splitlines():
        partition, cpus, memory, state = line.split()
        if state in ("idle", "mixed"):
            return {"partition": partition.rstrip("*"), "cpus": int(cpus), "mem_mb": int(memory)}
    return None


def _capped(value, cap: int):
    """A resource request (a number or an expression of `attempt`) capped at ``cap``."""
    return min(int(value), cap) if isinstance(value, int) else f"min({value}, {cap})"


def ci_profile(folder: Path, node: dict, status_interval_s: int = 2) -> Path:
    """Write the overlaid profile into ``folder`` and return the folder (pass it to --profile)."""
    profile = yaml.safe_load(PROFILE.read_text())
    profile.pop("software-deployment-method", None)  # jobs run with this interpreter's packages
    profile.pop("conda-prefix", None)
    profile.update({
        "slurm-no-account": True,
        "slurm-status-command": "squeue",
        "slurm-keep-successful-logs": True,
        # the plugin waits 40 s before its first status query: a fair interval on a shared
        # cluster, but here it would measure polling rather than the workflow
        "slurm-init-seconds-before-status-checks": status_interval_s,
        "cores": min(int(profile.get("cores", node["cpus"])), node["cpus"]),
    })
    defaults = profile["default-resources"]
    defaults.pop("slurm_account", None)
    defaults["slurm_partition"] = node["partition"]
    defaults["mem_mb"] = _capped(defaults["mem_mb"], node["mem_mb"])
    for rule, resources in profile.get("set-resources", {}).items():
        resources.pop("gpu", None)  # GPU rules run on the CPU node (the code falls back to CPU)
        if "slurm_partition" in resources:
            resources["slurm_partition"] = node["partition"]
        if "mem_mb" in resources:
            resources["mem_mb"] = _capped(resources["mem_mb"], node["mem_mb"])
    profile["set-threads"] = {rule: min(int(n), node["cpus"])
                              for rule, n in profile.get("set-threads", {}).items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def submitted_jobs(workdir: Path) -> list[Path]:
    """The SLURM log of every job the plugin submitted (one per sbatch call)."""
    return sorted((Path(workdir) / ".snakemake" / "slurm_logs").rglob("*.log"))


def environment() -> dict:
    """This interpreter's environment, with its bin folder first on PATH for the jobs' Snakemake."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env
