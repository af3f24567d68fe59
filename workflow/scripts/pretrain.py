"""Rule `pretrain`: train the nuclei foundation model (resumes from last.pt after a kill)."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

outdir = Path(snakemake.output.model).parent
n_gpus = int(snakemake.resources.get("gpu", 0) or 0)

if n_gpus > 1:
    # One process per GPU; the package is next to this script.
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(dict(snakemake.params.foundation), fh)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parent), env.get("PYTHONPATH")) if p)
    command = ["torchrun", "--standalone", f"--nproc_per_node={n_gpus}", "-m", "cosmic.foundation", "train",
               "--crops", *snakemake.input.crops, "--tables", *snakemake.input.tables, "--outdir", str(outdir), "--config", fh.name]
    print("+", " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, env=env, stderr=sys.stderr, stdout=sys.stderr)
else:
    import torch

    from cosmic.foundation import train

    torch.set_num_threads(max(1, snakemake.threads))
    summary = train(list(snakemake.input.crops), outdir, snakemake.params.foundation, resume=True,
                    feature_tables=list(snakemake.input.tables))
    print(summary, file=sys.stderr)
