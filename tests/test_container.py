"""The container image definition (./Dockerfile) is what `snakemake --containerize` makes of the
current conda env files, so `--sdm apptainer conda` runs every rule in the env it names.

Regenerate after editing workflow/envs/: `python tests/test_container.py`.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import TEST_CONFIG, run_snakemake, write_fake_conda  # noqa: E402

DOCKERFILE = REPO / "Dockerfile"
# The torch env pins a CUDA build of PyTorch; `docker build` has no GPU to detect, so the solver is
# told which CUDA to build for (the one line added to Snakemake's output).
CUDA_LINE = "ENV CONDA_OVERRIDE_CUDA=12.6\n"


def generated_dockerfile() -> str:
    with tempfile.TemporaryDirectory() as folder:
        env = write_fake_conda(folder)  # Snakemake asks conda for its version; nothing is solved
        out = subprocess.run([sys.executable, "-m", "snakemake", "--containerize", "--configfile", str(TEST_CONFIG)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines(keepends=True)
    labels = max(i for i, line in enumerate(lines) if line.startswith("LABEL "))
    return "".join(lines[: labels + 1] + [CUDA_LINE] + lines[labels + 1:])


def test_dockerfile_is_up_to_date_with_the_env_files():
    expected = generated_dockerfile()
    assert DOCKERFILE.read_text() == expected, "Dockerfile is stale: run `python tests/test_container.py`"
    for env in sorted((REPO / "workflow" / "envs").glob("*.yaml")):
        assert f"COPY workflow/envs/{env.name} " in expected


def test_a_configured_container_is_planned_for_every_rule(tmp_path):
    """With `container:` set and `--sdm apptainer conda`, the dry run plans every job in it."""
    env = write_fake_conda(tmp_path)
    # Snakemake asks apptainer for its version, then runs conda checks in the image: the fake runs
    # them here, where the fake conda answers
    fake_apptainer = tmp_path / "fake_conda_bin" / "apptainer"
    fake_apptainer.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "apptainer version 1.3.6"; exit 0; }\n'
                              'while [ $# -gt 0 ]; do case "$1" in *.simg|*.sif) shift; exec "$@" ;; esac; shift; done\n'
                              'exit 1\n')
    fake_apptainer.chmod(0o755)
    image = "docker://example.org/cosmic:0.1.0"
    out = run_snakemake("-n", "--configfile", TEST_CONFIG, "--config", f"container={image}",
                        "--sdm", "apptainer", "conda", "--directory", tmp_path, env=env)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-2000:]
    assert image in text


if __name__ == "__main__":
    DOCKERFILE.write_text(generated_dockerfile())
    print(f"wrote {DOCKERFILE}")
