"""``segmentation.nucleus_diameter: auto``: the size estimate, its use, the warnings and the folder CLI."""

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from scipy import ndimage as ndi

from cosmic.errors import CosmicInputError
from cosmic.segmentation import (
    SegmentationParams,
    SegmentationWarning,
    estimate_nucleus_diameter,
    segment_image_file,
    segment_nuclei,
)
from cosmic.segmentation_quality import match_instances

REPO = Path(__file__).resolve().parents[1]


def nuclei_field(diameter: float, shape=None, coverage: float = 0.2, seed: int = 0):
    """A DNA-stain-like field: elliptical nuclei (diameter +-15 %, aspect up to 1.4, a few
    touching pairs), uneven brightness and chromatin texture, a tilted background, blur, shot
    and read noise. Returns (uint16 image, int32 labels)."""
    rng = np.random.default_rng(seed)
    if shape is None:
        side = int(min(1400, max(256, 9 * diameter)))
        shape = (side, side)
    H, W = shape
    labels = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float32)
    n_target = int(coverage * H * W / (math.pi * diameter ** 2 / 4))
    centres = []
    for _ in range(n_target * 30):
        if len(centres) >= n_target:
            break
        d = diameter * rng.uniform(0.85, 1.15)
        aspect = rng.uniform(1.0, 1.4)
        a, b = d / 2 * math.sqrt(aspect), d / 2 / math.sqrt(aspect)
        if centres and rng.random() < 0.1:  # touching a previous nucleus
            y0, x0, r0 = centres[rng.integers(len(centres))]
            ang = rng.uniform(0, 2 * math.pi)
            cy, cx = y0 + (r0 + b) * math.sin(ang), x0 + (r0 + b) * math.cos(ang)
        else:
            cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        if any(math.hypot(cy - y, cx - x) < 0.95 * (r + b) for y, x, r in centres):
            continue
        r = int(a) + 2
        y0, y1, x0, x1 = max(0, int(cy) - r), min(H, int(cy) + r + 1), max(0, int(cx) - r), min(W, int(cx) + r + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        t = rng.uniform(0, math.pi)
        u = (xx - cx) * math.cos(t) + (yy - cy) * math.sin(t)
        v = -(xx - cx) * math.sin(t) + (yy - cy) * math.cos(t)
        inside = ((u / a) ** 2 + (v / b) ** 2 <= 1) & (labels[y0:y1, x0:x1] == 0)
        if inside.sum() < 10:
            continue
        centres.append((cy, cx, (a + b) / 2))
        labels[y0:y1, x0:x1][inside] = len(centres)
        texture = 1 + 0.2 * ndi.gaussian_filter(rng.normal(size=inside.shape), max(1.0, d / 15)) * 4
        signal[y0:y1, x0:x1][inside] = (rng.uniform(0.6, 1.4) * 800 * texture)[inside]
    blurred = ndi.gaussian_filter(signal, max(0.8, diameter / 25))
    yy, xx = np.mgrid[0:H, 0:W]
    background = 100 * (1 + 0.3 * xx / W)
    img = rng.poisson(np.clip(blurred + background, 0, None)).astype(np.float32) + rng.normal(0, 5, shape)
    return np.clip(np.round(img), 0, 65535).astype(np.uint16), labels


def true_diameter(labels) -> float:
    areas = np.bincount(labels.ravel())[1:]
    return math.sqrt(4 * float(np.median(areas[areas > 0])) / math.pi)


# Sizes are read at a low (log-Otsu) threshold, so the blurred rim counts (~+10 %); the growth the
# estimate's own smoothing adds (~1 px) is subtracted, which keeps 12 px nuclei within 15 % too.
@pytest.mark.parametrize("diameter", [12, 16, 30, 60, 110])
def test_the_estimate_is_close_to_the_true_size(diameter, tolerance=0.15):
    for seed in (1, 2):
        img, labels = nuclei_field(diameter, seed=seed)
        truth = true_diameter(labels)
        est = estimate_nucleus_diameter(img)
        assert abs(est / truth - 1) <= tolerance, f"d={diameter} seed={seed}: estimated {est:.1f}, true {truth:.1f}"


def test_the_estimate_ignores_dtype_offset_and_gain():
    img, labels = nuclei_field(40, seed=3)
    a = estimate_nucleus_diameter(img)
    b = estimate_nucleus_diameter(img.astype(np.float32) * 0.01 + 7)
    assert a == pytest.approx(b, rel=0.05)


def test_no_estimate_without_objects_and_2d_only():
    assert math.isnan(estimate_nucleus_diameter(np.full((64, 64), 5.0)))
    noise = np.random.default_rng(0).normal(100, 10, (256, 256))
    assert math.isnan(estimate_nucleus_diameter(noise))
    with pytest.raises(ValueError):
        estimate_nucleus_diameter(np.zeros((2, 8, 8)))


def test_auto_end_to_end_measures_the_size_and_segments_well():
    img, labels = nuclei_field(45, seed=4)
    info = {}
    out = segment_nuclei(img, SegmentationParams(nucleus_diameter="auto"), info=info)
    assert info["diameter_source"] == "auto"
    assert info["nucleus_diameter"] == pytest.approx(true_diameter(labels), rel=0.15)
    assert info["nuclei"] == int(out.max()) > 0
    assert match_instances(out, labels)["f1"] >= 0.85
    # the same image with a diameter far off: whole nuclei are filtered out, with a warning
    with pytest.warns(SegmentationWarning, match="size filters removed"):
        wrong = segment_nuclei(img, SegmentationParams(nucleus_diameter=8), info=info, name="far-off.tif")
    assert match_instances(wrong, labels)["f1"] < 0.5


def test_a_number_overrides_auto():
    img, _ = nuclei_field(30, seed=5, shape=(256, 256))
    info = {}
    segment_nuclei(img, SegmentationParams(nucleus_diameter=22), info=info)
    assert info["nucleus_diameter"] == 22.0 and info["diameter_source"] == "config"
    for key in ("nuclei", "candidates", "removed_specks", "removed_too_small", "removed_too_large", "removed_border"):
        assert isinstance(info[key], int)


def test_segment_image_file_records_the_diameter_used(tmp_path):
    img, labels = nuclei_field(30, seed=6, shape=(320, 320))
    tifffile.imwrite(tmp_path / "img.tif", img)
    info = {}
    n = segment_image_file(tmp_path / "img.tif", tmp_path / "mask.tif", {"nucleus_diameter": "auto"}, info=info)
    assert n == info["nuclei"] > 0 and info["diameter_source"] == "auto"
    with tifffile.TiffFile(tmp_path / "mask.tif") as tif:
        meta = tif.shaped_metadata[0]
        mask = tif.asarray()
    assert meta["diameter_source"] == "auto"
    assert meta["nucleus_diameter"] == pytest.approx(info["nucleus_diameter"])
    assert mask.shape == img.shape and int(mask.max()) == n


@pytest.mark.parametrize("diameter", ["auto", 30])
def test_an_image_without_nuclei_warns_and_names_the_image(diameter):
    noise = np.random.default_rng(1).normal(100, 10, (256, 256)).astype(np.float32)
    with pytest.warns(SegmentationWarning) as record:
        out = segment_nuclei(noise, SegmentationParams(nucleus_diameter=diameter), name="empty_well.tif")
    assert out.max() == 0
    messages = [str(w.message) for w in record]
    assert any(m.startswith("empty_well.tif: no nuclei found") for m in messages), messages
    if diameter == "auto":  # nothing to measure: the fallback diameter is used, and said so
        assert any("nothing nucleus-like" in m for m in messages), messages


def test_a_good_segmentation_does_not_warn():
    img, _ = nuclei_field(30, seed=7, shape=(384, 384))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SegmentationWarning)
        segment_nuclei(img, SegmentationParams(nucleus_diameter="auto"))


@pytest.mark.parametrize("value", ["big", -3, 0, float("nan"), True, "Auto ", None, [30]])
def test_bad_diameters_are_rejected(value):
    with pytest.raises(CosmicInputError, match="auto"):
        SegmentationParams(nucleus_diameter=value)
    with pytest.raises(CosmicInputError):
        SegmentationParams.from_config({"nucleus_diameter": value})


def test_auto_and_numbers_are_accepted_and_told_apart():
    assert SegmentationParams(nucleus_diameter="auto").fixed_diameter is None
    assert SegmentationParams(nucleus_diameter=25).fixed_diameter == 25.0
    assert SegmentationParams.from_config({"nucleus_diameter": "auto"}).nucleus_diameter == "auto"
    with pytest.raises(ValueError, match="auto"):
        SegmentationParams(nucleus_diameter="auto").area_min  # noqa: B018 - sizes need a number
    assert SegmentationParams(nucleus_diameter="auto").with_diameter(20).area_min == pytest.approx(
        0.2 * math.pi * 100)


def test_the_schema_accepts_auto_and_positive_numbers_only():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    validator = jsonschema.Draft202012Validator(schema["properties"]["segmentation"])
    for good in ("auto", 30, 7.5):
        assert not list(validator.iter_errors({"nucleus_diameter": good})), good
    for bad in ("big", -3, 0, None, True):
        assert list(validator.iter_errors({"nucleus_diameter": bad})), bad


def _run_cli(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "workflow" / "scripts"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "cosmic.segmentation", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_the_folder_cli_writes_masks_and_a_qc_table(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for k, d in enumerate((20, 36)):
        img, _ = nuclei_field(d, seed=10 + k, shape=(256, 300))
        tifffile.imwrite(images / f"well_{k}.ome.tif" if k else images / f"well_{k}.tif", img)
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "masks"
    proc = _run_cli(images, out, "--diameter", "auto", "--dna-channel", "0")
    assert proc.returncode == 0, proc.stderr
    qc = pd.read_csv(out / "qc.tsv", sep="\t")
    assert list(qc["image"]) == ["well_0.tif", "well_1.ome.tif"]
    assert list(qc["mask"]) == ["well_0.tif", "well_1.tif"]
    assert (qc["diameter_source"] == "auto").all() and (qc["nuclei"] > 0).all()
    assert qc.loc[0, "nucleus_diameter"] < qc.loc[1, "nucleus_diameter"]  # 20 px vs 36 px nuclei
    for col in ("candidates", "removed_specks", "removed_too_small", "removed_too_large", "removed_border"):
        assert col in qc.columns
    for name, n in zip(qc["mask"], qc["nuclei"]):
        mask = tifffile.imread(out / name)
        assert mask.shape == (256, 300) and int(mask.max()) == n

    fixed = _run_cli(images, tmp_path / "fixed", "--diameter", "25")
    assert fixed.returncode == 0, fixed.stderr
    qc = pd.read_csv(tmp_path / "fixed" / "qc.tsv", sep="\t")
    assert (qc["diameter_source"] == "config").all() and (qc["nucleus_diameter"] == 25).all()


def test_the_folder_cli_rejects_bad_arguments(tmp_path):
    assert _run_cli(tmp_path, tmp_path / "o", "--diameter", "big").returncode == 2
    assert _run_cli(tmp_path, tmp_path / "o").returncode == 2  # no images
    assert _run_cli(tmp_path, tmp_path).returncode == 2  # would overwrite the images
    assert "auto" in json.dumps(_run_cli("--help").stdout)


# ---- one diameter for the run (the workflow's `auto`) -----------------------------------------
def test_reference_diameter_is_the_median_over_reference_images(tmp_path):
    from cosmic.segmentation_size import reference_diameter, sample_diameter, write_sample_diameter

    paths = []
    for k, diameter in enumerate((24, 30, 36)):
        image, _ = nuclei_field(diameter, shape=(400, 400), seed=k)
        paths.append(tmp_path / f"img_{k}.tif")
        tifffile.imwrite(paths[-1], image)
    result = reference_diameter(paths)
    estimates = list(result["per_image"].values())
    assert result["nucleus_diameter"] == pytest.approx(np.median(estimates))
    assert 30 * 0.85 <= result["nucleus_diameter"] <= 30 * 1.25
    write_sample_diameter(paths, paths, tmp_path / "d.json")
    assert json.loads((tmp_path / "d.json").read_text())["nucleus_diameter"] == pytest.approx(result["nucleus_diameter"])
    # a sample 15 % larger (a treatment) keeps the run's diameter; one at another magnification gets its own
    bigger, _ = nuclei_field(34, shape=(400, 400), seed=5)
    tifffile.imwrite(tmp_path / "bigger.tif", bigger)
    assert sample_diameter(paths, [tmp_path / "bigger.tif"])["nucleus_diameter"] == result["nucleus_diameter"]
    zoomed, _ = nuclei_field(90, shape=(900, 900), seed=6)
    tifffile.imwrite(tmp_path / "zoomed.tif", zoomed)
    other = sample_diameter(paths, [tmp_path / "zoomed.tif"])
    assert other["nucleus_diameter"] == pytest.approx(other["sample"]) and other["nucleus_diameter"] > 70
    assert "magnification" in other["source"]


def test_reference_diameter_falls_back_with_a_warning(tmp_path):
    from cosmic.segmentation_size import reference_diameter

    noise = np.random.default_rng(0).normal(1000, 20, (256, 256)).clip(0).astype(np.uint16)
    tifffile.imwrite(tmp_path / "noise.tif", noise)
    with pytest.warns(UserWarning, match="nucleus-like"):
        assert reference_diameter([tmp_path / "noise.tif"])["nucleus_diameter"] == 30.0


def test_workflow_params_resolve_auto_and_per_image(tmp_path):
    from cosmic.segmentation_size import workflow_params

    (tmp_path / "d.json").write_text(json.dumps({"nucleus_diameter": 41.5}))
    assert workflow_params({"nucleus_diameter": "auto"}, tmp_path / "d.json")["nucleus_diameter"] == 41.5
    assert workflow_params({"nucleus_diameter": "per_image"}, None)["nucleus_diameter"] == "auto"
    assert workflow_params({"nucleus_diameter": 25}, tmp_path / "d.json")["nucleus_diameter"] == 25
    assert SegmentationParams(nucleus_diameter="per_image").fixed_diameter is None


def test_reference_images_come_from_the_first_sample_only():
    from cosmic.config import reference_images

    images = {"a": {f"i{k:02d}": f"a/{k}.tif" for k in range(40)}, "b": {"x": "b/x.tif"}}
    chosen = reference_images(images, limit=16)
    assert len(chosen) == 16 and all(p.startswith("a/") for p in chosen) and len(set(chosen)) == 16
    assert reference_images({"empty": {}, "b": {"x": "b/x.tif"}}) == ["b/x.tif"]


def test_an_image_far_from_the_reference_diameter_is_flagged(tmp_path):
    image, _ = nuclei_field(60, shape=(500, 500), seed=3)
    tifffile.imwrite(tmp_path / "big.tif", image)
    info = {}
    with pytest.warns(SegmentationWarning, match="big.tif.*another magnification.*its own"):
        segment_image_file(tmp_path / "big.tif", tmp_path / "big.mask.tif", {"nucleus_diameter": 30}, info=info,
                           compare_estimate=True)
    assert info["image_diameter_estimate"] > 45
    # the image's own estimate is used, not the reference
    assert info["nucleus_diameter"] == pytest.approx(info["image_diameter_estimate"])
    assert info["diameter_source"] == "auto"
    with tifffile.TiffFile(tmp_path / "big.mask.tif") as tif:
        assert tif.shaped_metadata[0]["nucleus_diameter"] == pytest.approx(info["image_diameter_estimate"])


def test_an_image_close_to_the_reference_diameter_keeps_it(tmp_path):
    image, _ = nuclei_field(33, shape=(400, 400), seed=3)
    tifffile.imwrite(tmp_path / "img.tif", image)
    info = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", SegmentationWarning)
        segment_image_file(tmp_path / "img.tif", tmp_path / "img.mask.tif", {"nucleus_diameter": 30}, info=info,
                           compare_estimate=True)
    assert info["nucleus_diameter"] == 30.0 and info["diameter_source"] == "config"


def test_fill_holes_and_upsampling_match_scipy():
    from cosmic.segmentation import _upsample
    from cosmic.segmentation_size import fill_holes

    rng = np.random.default_rng(0)
    mask = ndi.gaussian_filter(rng.normal(size=(120, 97)), 2) > 0.05
    assert np.array_equal(fill_holes(mask), ndi.binary_fill_holes(mask))
    for k, shape in ((2, (64, 64)), (3, (100, 101)), (7, (50, 43))):
        small = rng.random((-(-shape[0] // k), -(-shape[1] // k))).astype(np.float32)
        ref = ndi.zoom(small, k, order=1, grid_mode=True, mode="nearest")[: shape[0], : shape[1]]
        np.testing.assert_allclose(_upsample(small, shape, k), ref, atol=1e-5)
