"""Benchmark nucleus segmentation: accuracy and throughput of the diameter settings against a baseline.

Compares, in the same run and single-threaded (``cosmic.segmentation.segment_nuclei``):
- ``shipped``: the shipped defaults (``SegmentationParams()``, i.e. the schema's default
  ``nucleus_diameter``), what a new user gets;
- ``auto``: ``nucleus_diameter: auto``, measured on every image
  (``cosmic.segmentation_size.estimate_nucleus_diameter``; its time is included);
- ``truth``: the diameter derived from the image's annotated nuclei (sqrt(4 A / pi) of the
  median annotated area), what a user who measured their nuclei would set;
- ``otsu_cc``: a plain baseline, global Otsu threshold + connected components (objects smaller
  than the truth-derived minimum area removed, so noise specks do not dominate).

Data:
- the real annotated nuclei in ``../shared/data/nuclei_gt`` (Coelho 2009 U2OS and NIH3T3,
  one DSB2018 image), when present;
- a synthetic 2048 x 2048 field (nuclei ~30 px, touching, uneven background), always;
- with ``--demo``, a small embedded demo dataset (``cosmic.demo``, nuclei ~25 px, true masks).

Prints, per image group and pooled over the real images: F1 at IoU 0.5 pooled over the
images' nuclei (2 x matched / (predicted + true)), the mean per-image F1, megapixels/s (one
core, best of ``--repeats``), the auto diameter relative to the truth-derived one, and peak
traced memory (tracemalloc, a separate untimed pass).

    PYTHONPATH=workflow/scripts python benchmarks/segmentation.py [--gt-dir DIR] [--repeats 2] [--demo]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tifffile  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402
from skimage import filters, morphology  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))  # synthetic_nuclei: the tests' synthetic fields of view

from cosmic.segmentation import SegmentationParams, segment_nuclei  # noqa: E402
from cosmic.segmentation_quality import match_instances  # noqa: E402
from cosmic.segmentation_size import estimate_nucleus_diameter  # noqa: E402
from synthetic_nuclei import make_synthetic_nuclei  # noqa: E402

REAL = ("U2OS (Coelho gnf)", "NIH3T3 (Coelho ic100)", "DSB2018")


def otsu_cc(img: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """Baseline: global Otsu + connected components + removal of specks."""
    img = np.asarray(img, dtype=np.float32)
    mask = img > filters.threshold_otsu(img)
    mask = morphology.remove_small_objects(mask, max_size=max(1, int(params.area_min) - 1))
    return ndi.label(mask)[0]


def methods(truth_d: float) -> dict:
    """name -> labels function of the image, for an image whose annotated diameter is truth_d."""
    truth = SegmentationParams(nucleus_diameter=truth_d)
    return {
        "shipped": lambda img: segment_nuclei(img, SegmentationParams()),
        "auto": lambda img: segment_nuclei(img, SegmentationParams(nucleus_diameter="auto")),
        "truth": lambda img: segment_nuclei(img, truth),
        "otsu_cc": lambda img: otsu_cc(img, truth),
    }


def true_diameter(labels: np.ndarray) -> float:
    areas = np.bincount(labels.ravel())[1:]
    return math.sqrt(4 * float(np.median(areas[areas > 0])) / math.pi)


def load_gt(gt_dir: Path):
    man = pd.read_csv(gt_dir / "manifest.csv")
    for _, row in man.iterrows():
        img = tifffile.imread(gt_dir / "images" / f"{row['name']}.tif")
        gt = tifffile.imread(gt_dir / "masks" / f"{row['name']}.tif")
        d = math.sqrt(4 * float(row["median_area_px"]) / math.pi)
        line = str(row["cell_line"]).split(" ")[0]
        collection = {"U2OS": REAL[0], "NIH3T3": REAL[1]}.get(line, REAL[2])
        yield collection, row["name"], img, gt, d


def synthetic(n_images: int):
    for k in range(n_images):
        img, gt = make_synthetic_nuclei((2048, 2048), n_nuclei=1200, diameter=30, seed=100 + k)
        yield "synthetic 2048^2 d~30", f"synthetic-{k}", img, gt, true_diameter(gt)


def demo_images(cells: int):
    from cosmic import demo
    from cosmic.imageio import read_image

    with tempfile.TemporaryDirectory() as tmp:
        demo.generate(demo.DemoSettings(cells_per_sample=cells, oracle_replicates=1), tmp, progress=False)
        for path in sorted(Path(tmp).glob("*/images/*.ome.tif")):
            gt = tifffile.imread(path.parent.parent / "truth_masks" / path.name.replace(".ome.tif", ".tif"))
            img = read_image(path, dna_channel=0).dna
            yield "demo", f"{path.parent.parent.name}/{path.name}", img, gt, true_diameter(gt)


def _time(fn, img, repeats: int):
    fn(img)  # warm-up (imports, caches)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        lab = fn(img)
        best = min(best, time.perf_counter() - t0)
    return lab, best


def run(items, repeats: int):
    rows = []
    for collection, name, img, gt, d in items:
        for method, fn in methods(d).items():
            lab, seconds = _time(fn, img, repeats)
            tracemalloc.start()
            fn(img)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            m = match_instances(lab, gt, 0.5)
            rows.append({
                "collection": collection, "image": name, "method": method, "megapixels": img.size / 1e6,
                "seconds": seconds, "n_pred": m["n_pred"], "n_true": m["n_true"], "n_matched": m["n_matched"],
                "f1": m["f1"], "truth_diameter": d, "peak_mib": peak / 2**20,
                "auto_diameter": estimate_nucleus_diameter(img) if method == "auto" else np.nan,
            })
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    groups = [(c, df[df["collection"] == c]) for c in df["collection"].unique()]
    real = df[df["collection"].isin(REAL)]
    if real["image"].nunique() > 1 and real["collection"].nunique() > 1:
        groups.append(("POOLED real", real))
    rows = []
    for name, sub in groups:
        for method, s in sub.groupby("method", sort=False):
            rows.append({
                "group": name, "method": method, "images": len(s),
                "F1 pooled": 2 * s["n_matched"].sum() / (s["n_pred"].sum() + s["n_true"].sum()),
                "F1 mean": s["f1"].mean(),
                "MPix/s/core": s["megapixels"].sum() / s["seconds"].sum(),
                "auto/truth d": (s["auto_diameter"] / s["truth_diameter"]).median() if method == "auto" else np.nan,
                "peak MiB": s["peak_mib"].max(),
            })
    return pd.DataFrame(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gt-dir", type=Path, default=ROOT.parent / "shared" / "data" / "nuclei_gt")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per image (best is kept)")
    ap.add_argument("--synthetic-images", type=int, default=1)
    ap.add_argument("--demo", action="store_true", help="also generate and score a small demo dataset")
    ap.add_argument("--demo-cells", type=int, default=300, help="cells per demo sample (100 per image)")
    ap.add_argument("--per-image", action="store_true", help="also print per-image rows")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # the shipped diameter warns on most real images; counted in the table

    frames = []
    if (args.gt_dir / "manifest.csv").exists():
        frames.append(run(load_gt(args.gt_dir), args.repeats))
    else:
        print(f"note: {args.gt_dir} not found; real-image accuracy not measured", file=sys.stderr)
    frames.append(run(synthetic(args.synthetic_images), args.repeats))
    if args.demo:
        frames.append(run(demo_images(args.demo_cells), args.repeats))
    df = pd.concat(frames, ignore_index=True)

    pd.set_option("display.width", 200)
    print("Segmentation benchmark (single thread; best of", args.repeats, "runs per image)")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}; shipped nucleus_diameter = "
          f"{SegmentationParams().nucleus_diameter!r}")
    if args.per_image:
        print(df.round(3).to_string(index=False))
    summary = summarise(df)
    print(summary.round(3).to_string(index=False))
    wide = summary.pivot(index="group", columns="method", values="F1 pooled")
    print("\nF1@0.5 pooled over nuclei:")
    print(wide.reindex(index=summary["group"].unique(), columns=list(methods(30.0))).round(3).to_string())
    for collection, _, img, _, _ in synthetic(1):
        estimate_nucleus_diameter(img)
        t0 = time.perf_counter()
        estimate_nucleus_diameter(img)
        rate = img.size / 1e6 / (time.perf_counter() - t0)
        print(f"\ndiameter estimate alone ({collection}): {rate:.0f} MPix/s per core")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process max RSS: {rss:.0f} MiB (includes the loaded data sets)")


if __name__ == "__main__":
    main()
