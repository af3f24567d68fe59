"""The command line (the ``pretrain`` and ``embed`` rules): ``python -m cosmic.foundation
train|embed ...``, also under ``torchrun ... -m cosmic.foundation train ...``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .embed import embed_crops, load_model
from .params import FoundationParams
from .runtime import _dist_info
from .training import train


def main(argv=None):
    """Run ``train`` or ``embed`` with the arguments ``argv`` (default: the command line); returns 0."""
    from . import __doc__ as package_doc  # its first line describes the command

    ap = argparse.ArgumentParser(prog="python -m cosmic.foundation", description=package_doc.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="pretrain on crop banks (run under torchrun for several GPUs)")
    t.add_argument("--crops", nargs="+", required=True, help="crops.npy of every sample")
    t.add_argument("--outdir", required=True)
    t.add_argument("--tables", nargs="+", help="nuclei.parquet of every sample, in --crops order (objective "
                   "'features'; default: the nuclei.parquet beside each crops.npy)")
    t.add_argument("--config", help="JSON file holding the foundation: block (a mapping of FoundationParams keys)")
    t.add_argument("--no-resume", action="store_true", help="ignore an existing last.pt")
    t.add_argument("--no-progress", action="store_true")
    e = sub.add_parser("embed", help="embed one crop bank")
    e.add_argument("--model", required=True)
    e.add_argument("--crops", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--device", default=None)
    a = ap.parse_args(argv)
    if a.cmd == "train":
        cfg = {}
        if a.config:
            cfg = json.loads(Path(a.config).read_text())
            if isinstance(cfg, dict) and "foundation" in cfg and isinstance(cfg["foundation"], dict):
                cfg = cfg["foundation"]
        summary = train(a.crops, a.outdir, FoundationParams.from_config(cfg), resume=not a.no_resume,
                        progress=not a.no_progress, feature_tables=a.tables)
        if _dist_info()[1] == 0:
            print(json.dumps(summary))
    else:
        model = load_model(a.model, a.device)
        emb = embed_crops(model, a.crops, a.batch_size)
        with atomic_path(a.out) as tmp:
            np.save(tmp, emb)
    return 0
