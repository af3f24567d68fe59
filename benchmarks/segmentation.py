"""Benchmark nucleus segmentation: throughput, peak memory and accuracy against a baseline.

Compares, in the same run and single-threaded,
- ``cosmic``: the workflow's segmentation (``cosmic.segmentation.segment_nuclei``, defaults,
  with ``nucleus_diameter`` per image), and
- ``otsu_cc``: a plain baseline, global Otsu threshold + connected components (objects
  smaller than the same minimum area removed, so noise specks do not dominate).

Data:
- the real annotated nuclei in ``../shared/data/nuclei_gt`` (Coelho 2009 U2OS and NIH3T3,
  one DSB2018 image), when present; ``nucleus_diameter`` comes from each image's
  ``median_area_px`` in ``manifest.csv`` (diameter = sqrt(4 A / pi)), a user-level setting;
- a synthetic demo-like set (1024 x 1024, nuclei ~30 px, touching, uneven background)
  generated here, always.

Prints megapixels/s and nuclei/s (one core), peak traced memory (tracemalloc, in a separate
untimed pass) and mean F1 at IoU 0.5 per collection.

    PYTHONPATH=workflow/scripts python benchmarks/segmentation.py [--gt-dir DIR] [--repeats 2]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tifffile  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402
from skimage import filters, morphology  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

from cosmic.segmentation import SegmentationParams, segment_nuclei  # noqa: E402
from cosmic.segmentation_quality import make_synthetic_nuclei, match_instances  # noqa: E402


def otsu_cc(img: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """Baseline: global Otsu + connected components + removal of specks."""
    img = np.asarray(img, dtype=np.float32)
    mask = img > filters.threshold_otsu(img)
    mask = morphology.remove_small_objects(mask, max_size=max(1, int(params.area_min) - 1))
    return ndi.label(mask)[0]


METHODS = {"cosmic": segment_nuclei, "otsu_cc": otsu_cc}


def load_gt(gt_dir: Path):
    man = pd.read_csv(gt_dir / "manifest.csv")
    for _, row in man.iterrows():
        img = tifffile.imread(gt_dir / "images" / f"{row['name']}.tif")
        gt = tifffile.imread(gt_dir / "masks" / f"{row['name']}.tif")
        d = math.sqrt(4 * float(row["median_area_px"]) / math.pi)
        line = str(row["cell_line"]).split(" ")[0]
        collection = {"U2OS": "U2OS (Coelho gnf)", "NIH3T3": "NIH3T3 (Coelho ic100)"}.get(line, "DSB2018")
        yield collection, row["name"], img, gt, d


def synthetic(n_images: int):
    for k in range(n_images):
        img, gt = make_synthetic_nuclei((1024, 1024), n_nuclei=300, diameter=30, seed=100 + k)
        yield "synthetic 1024^2 d=30", f"synthetic-{k}", img, gt, 30.0


def run(items, repeats: int):
    rows = []
    for collection, name, img, gt, d in items:
        params = SegmentationParams(nucleus_diameter=d)
        for method, fn in METHODS.items():
            fn(img, params)  # warm-up (imports, caches)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                lab = fn(img, params)
                times.append(time.perf_counter() - t0)
            tracemalloc.start()
            fn(img, params)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            m = match_instances(lab, gt, 0.5)
            rows.append({
                "collection": collection, "image": name, "method": method,
                "megapixels": img.size / 1e6, "seconds": min(times), "n_pred": m["n_pred"],
                "n_true": m["n_true"], "f1": m["f1"], "precision": m["precision"],
                "recall": m["recall"], "peak_mib": peak / 2**20,
            })
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(["collection", "method"], sort=False)
    out = pd.DataFrame({
        "images": g.size(),
        "MPix/s": g["megapixels"].sum() / g["seconds"].sum(),
        "nuclei/s": g["n_pred"].sum() / g["seconds"].sum(),
        "peak MiB": g["peak_mib"].max(),
        "F1@0.5": g["f1"].mean(),
        "precision": g["precision"].mean(),
        "recall": g["recall"].mean(),
    })
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gt-dir", type=Path, default=ROOT.parent / "shared" / "data" / "nuclei_gt")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per image (best is kept)")
    ap.add_argument("--synthetic-images", type=int, default=2)
    ap.add_argument("--per-image", action="store_true", help="also print per-image rows")
    args = ap.parse_args(argv)

    frames = []
    if (args.gt_dir / "manifest.csv").exists():
        frames.append(run(load_gt(args.gt_dir), args.repeats))
    else:
        print(f"note: {args.gt_dir} not found; real-image accuracy not measured", file=sys.stderr)
    frames.append(run(synthetic(args.synthetic_images), args.repeats))
    df = pd.concat(frames, ignore_index=True)

    pd.set_option("display.width", 160)
    print("Segmentation benchmark (single thread; best of", args.repeats, "runs per image)")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}")
    if args.per_image:
        print(df.round(3).to_string(index=False))
    summary = summarise(df)
    print(summary.round(3).to_string())
    real = df[~df["collection"].str.startswith("synthetic")]
    if len(real):
        for method in METHODS:
            sel = real[real["method"] == method]
            print(f"{method:8s} real set: mean F1@0.5 = {sel['f1'].mean():.3f} over {len(sel)} images, "
                  f"{sel['megapixels'].sum() / sel['seconds'].sum():.1f} MPix/s")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process max RSS: {rss:.0f} MiB (includes the loaded data sets)")


if __name__ == "__main__":
    main()
