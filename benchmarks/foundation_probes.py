"""Benchmark nuclei foundation-model pretraining recipes by held-out linear probes (issue #5).

Trains each recipe on the crop banks of a finished demo run, in this one process and under
the same thread settings, embeds every crop and prints the held-out linear-probe accuracy
for the demo's true cell type, cell-cycle phase and treatment, beside the region-property
features (``morph_*`` columns of nuclei.parquet) and a randomly initialised encoder of the
same architecture, exactly as the ``foundation_evaluation`` rule computes them
(:func:`cosmic.truth.nuclei.annotate_nuclei`, :func:`cosmic.truth.nuclei.probe_representations`; probe
split seed 0 as in the workflow, and the mean over ``--seeds`` splits), plus training wall
time and how collapsed the embedding is (standardised PCs holding 90% of the variance).

Recipes:

``old``
    the default before issue #5: all-token mean readout, augmentations with +-10% scale and
    intensity gain/offset jitter, 70 VICReg steps.
``center``
    VICReg on the ViT with the mean of the central-window tokens only.
``vicreg``
    the default before the ``features`` objective: VICReg on the tiny ViT, statistics pooling.
``new``
    the current defaults of :class:`cosmic.foundation.FoundationParams` and
    :data:`cosmic.foundation.AUGMENT`.

Run (after ``snakemake --cores 2 --configfile config/config.yaml`` made a demo run)::

    PYTHONPATH=workflow/scripts python benchmarks/foundation_probes.py results
    PYTHONPATH=workflow/scripts python benchmarks/foundation_probes.py /tmp/wfd3/results --recipes old new \\
        --extra '{"max_steps": 200}'

``--threads`` sets torch's intra-op threads (default: all cores). On a shared machine set it
to 1: two processes each running 2 OpenMP threads on 2 cores slow down ~8x.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

from cosmic import foundation as fm  # noqa: E402
from cosmic.truth import nuclei as truth  # noqa: E402
from cosmic.nuclei import feature_columns  # noqa: E402

OLD_AUGMENT = dict(scale=0.1, gain_sd=0.1, offset_sd=0.02, shift=0.0, noise_sd=0.0)
RECIPES = {
    "old": dict(params=dict(objective="vicreg", pool="mean", max_steps=70, warmup_steps=7, lr=2e-3), augment=OLD_AUGMENT),
    "center": dict(params=dict(objective="vicreg", pool="center"), augment=None),
    "vicreg": dict(params=dict(objective="vicreg"), augment=None),  # defaults before the features objective
    "new": dict(params={}, augment=None),  # current defaults
}


@contextlib.contextmanager
def augmentations(aug):
    saved = dict(fm.AUGMENT)
    if aug is not None:
        fm.AUGMENT.clear()
        fm.AUGMENT.update(aug)
    try:
        yield dict(fm.AUGMENT)
    finally:
        fm.AUGMENT.clear()
        fm.AUGMENT.update(saved)


def load_demo(results: Path):
    samples = sorted(p.parent.name for p in (results / "nuclei").glob("*/crops.npy"))
    if not samples:
        sys.exit(f"{results}: no nuclei/*/crops.npy; run the demo workflow first")
    crops = [str(results / "nuclei" / s / "crops.npy") for s in samples]
    tables = pd.concat([pd.read_parquet(results / "nuclei" / s / "nuclei.parquet") for s in samples],
                       ignore_index=True)
    pairs = []
    for s in samples:
        for m in sorted(glob.glob(str(results / "segmentation" / s / "*.mask.tif"))):
            image = Path(m).name.removesuffix(".mask.tif")
            pairs.append((m, str(results / "demo" / s / "truth_masks" / f"{image}.tif")))
    gt = pd.read_csv(results / "demo" / "ground_truth.tsv", sep="\t", dtype={"barcode": str})
    annotated = truth.annotate_nuclei(tables, pairs, gt)
    return samples, crops, tables, annotated


def pcs90(X) -> int:
    X = np.asarray(X, np.float64)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    ev = np.linalg.svd(X, compute_uv=False) ** 2
    return int(np.searchsorted(np.cumsum(ev) / ev.sum(), 0.9) + 1)


def probes(annotated, reps: dict, seeds) -> pd.DataFrame:
    rows = []
    for s in seeds:
        t = truth.probe_representations(annotated, reps, seed=s)
        t["seed"] = s
        rows.append(t)
    t = pd.concat(rows)
    seed0 = t[t["seed"] == seeds[0]].set_index(["representation", "target"])["accuracy"]
    mean = t.groupby(["representation", "target"])["accuracy"].mean()
    return pd.DataFrame({f"acc_seed{seeds[0]}": seed0, f"acc_mean{len(seeds)}": mean})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="?", default="results", help="results dir of a demo run")
    ap.add_argument("--recipes", nargs="+", default=["vicreg", "new"], choices=list(RECIPES))
    ap.add_argument("--extra", default="{}", help="JSON foundation params applied to every recipe")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="probe split seeds")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--json", help="write the table here")
    a = ap.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    results = Path(a.results)
    samples, crops, tables, annotated = load_demo(results)
    keep = (annotated["true_label"] > 0).to_numpy()
    print(f"{results}: {len(tables)} nuclei in {len(samples)} samples, {int(keep.sum())} matched to truth; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    morph = tables[feature_columns(tables)].to_numpy(float)
    out, timing = [], {}
    for name in a.recipes:
        r = RECIPES[name]
        params = fm.FoundationParams.from_config({**r["params"], **json.loads(a.extra)})
        with augmentations(r["augment"]) as aug, tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = fm.train(crops, Path(tmp) / "m", params, resume=False, progress=False)
            train_s = time.perf_counter() - t0
            model = fm.load_model(Path(tmp) / "m" / "model.pt", "cpu")
            t0 = time.perf_counter()
            emb = np.concatenate([fm.embed_crops(model, c) for c in crops])
            embed_s = time.perf_counter() - t0
        rand = fm.random_encoder_embeddings(crops, params, device="cpu")
        reps = {"foundation": emb, "region_properties": morph, "random_encoder": rand}
        t = probes(annotated, reps, a.seeds)
        t["recipe"] = name
        out.append(t.reset_index())
        timing[name] = dict(train_s=round(train_s, 1), embed_s=round(embed_s, 1), steps=summary["steps"],
                            pcs90_foundation=pcs90(emb[keep]), pcs90_random=pcs90(rand[keep]),
                            dim=int(emb.shape[1]), params={k: v for k, v in params.to_dict().items()
                                                           if k in ("pool", "max_steps", "warmup_steps",
                                                                    "batch_size", "lr", "recon_weight",
                                                                    "objective", "encoder")},
                            augment=aug)
        print(f"[{name}] {json.dumps(timing[name])}", flush=True)
    table = pd.concat(out)
    col = [c for c in table.columns if c.startswith("acc_mean")][0]
    wide = table.pivot_table(index=["recipe", "target"], columns="representation", values=col)
    wide0 = table.pivot_table(index=["recipe", "target"], columns="representation",
                              values=[c for c in table.columns if c.startswith("acc_seed")][0])
    cols = ["foundation", "region_properties", "random_encoder"]
    pd.set_option("display.width", 200)
    print(f"\nheld-out linear-probe accuracy, mean over split seeds {a.seeds}:")
    print(wide[cols].round(3).to_string())
    print(f"\nsplit seed {a.seeds[0]} only (as the foundation_evaluation rule):")
    print(wide0[cols].round(3).to_string())
    print("\nwall time (s):")
    for name, t in timing.items():
        print(f"  {name}: train {t['train_s']} ({t['steps']} steps), embed {t['embed_s']}, "
              f"PCs for 90% variance: foundation {t['pcs90_foundation']}/{t['dim']}, random {t['pcs90_random']}")
    if a.json:
        Path(a.json).write_text(json.dumps({"table": table.to_dict(orient="records"), "timing": timing},
                                           indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
