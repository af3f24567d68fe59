"""Masks made elsewhere (sample-sheet column `masks`), one channel order in the crop banks, and the
DNA channel name checked at `snakemake -n`."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from conftest import REPO, run_snakemake
from cosmic.config import resolve_masks
from cosmic.errors import CosmicInputError
from cosmic.nuclei import build_nuclei_outputs
from cosmic.segmentation import SegmentationWarning
from cosmic.segmentation_masks import import_mask
from synthetic_nuclei import make_synthetic_nuclei


@pytest.fixture
def cohort(tmp_path):
    """One sample of two images with counts and pairing, as a user would have it (demo generator),
    and the true masks of its images."""
    from cosmic import demo

    settings = demo.DemoSettings(cells_per_sample=30, nuclei_per_image=16, image_size=256,
                                 samples={"s1": "control"}, oracle_replicates=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # oracle statistics of a tiny dataset
        demo.generate(settings, tmp_path / "raw", progress=False)
    sheet = pd.read_csv(tmp_path / "raw" / "samples.tsv", sep="\t")
    truth = {p.stem: p for p in sorted((tmp_path / "raw" / "s1" / "truth_masks").glob("*.tif"))}
    assert sorted(truth) == ["fov_000", "fov_001"]
    return sheet, truth


def user_config(tmp_path, sheet: pd.DataFrame, **overrides) -> str:
    sheet_path = tmp_path / "samples.tsv"
    sheet.to_csv(sheet_path, sep="\t", index=False)
    config = yaml.safe_load((REPO / ".test" / "config" / "config.yaml").read_text())
    config.update(results="results", demo=False, samples=str(sheet_path), **overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def same_up_to_relabelling(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` hold the same regions with possibly other label values."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


# ------------------------------------------------------------------ masks column, end to end

def test_masks_column_imports_the_given_masks(tmp_path, cohort):
    sheet, truth = cohort
    masks = tmp_path / "cellpose"
    masks.mkdir()
    given = {name: tifffile.imread(path).astype(np.int64) for name, path in truth.items()}
    tifffile.imwrite(masks / "fov_000_cp_masks.tif", (given["fov_000"] * 3).astype(np.uint16))  # labels 3, 6, ...
    tifffile.imwrite(masks / "fov_001_cp_masks.tif", given["fov_001"].astype(np.float32))  # whole-number floats
    configfile = user_config(tmp_path, sheet.assign(masks=str(masks)))
    target = "results/nuclei/s1/nuclei.parquet"

    plan = run_snakemake("-n", target, "--configfile", configfile, "--directory", tmp_path)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert plan.stdout.count("rule segment:") == 2
    for name in truth:
        assert str(masks / f"{name}_cp_masks.tif") in plan.stdout

    run = run_snakemake("--cores", "1", target, "--configfile", configfile, "--directory", tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = pd.read_parquet(tmp_path / target)
    for name, labels in given.items():
        written = tifffile.imread(tmp_path / "results" / "segmentation" / "s1" / f"{name}.mask.tif")
        assert same_up_to_relabelling(written, labels)
        assert written.max() == len(np.unique(labels[labels > 0]))  # consecutive 1..n
        assert (table["image"] == name).sum() == written.max()
        log = (tmp_path / "results" / "logs" / "segment" / "s1" / f"{name}.log").read_text()
        assert "imported" in log


def test_a_missing_mask_stops_the_dry_run(tmp_path, cohort):
    sheet, truth = cohort
    masks = tmp_path / "masks"
    masks.mkdir()
    shutil.copy(truth["fov_000"], masks / "fov_000.tif")
    result = run_snakemake("-n", "--configfile", user_config(tmp_path, sheet.assign(masks=str(masks))),
                           "--directory", tmp_path)
    message = result.stdout + result.stderr
    assert result.returncode != 0
    for fragment in ("sample 's1'", "column 'masks'", "image 'fov_001'", "has no mask", "fov_001_cp_masks.tif"):
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------ matching masks to images

@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.ome.tif").write_bytes(b"x")
    return {name: str(folder / f"{name}.ome.tif") for name in ("a", "b")}


def _masks(tmp_path, *names):
    folder = tmp_path / "masks"
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return str(folder)


def test_masks_are_matched_by_image_name(tmp_path, images):
    folder = _masks(tmp_path, "a_cp_masks.tif", "b.mask.tiff")
    assert resolve_masks("s1", folder, images) == {"a": f"{folder}/a_cp_masks.tif", "b": f"{folder}/b.mask.tiff"}
    folder = _masks(tmp_path / "x", "a.ome_cp_masks.tif", "b_masks.tif", "notes.txt")  # cellpose on .ome.tif
    assert resolve_masks("s1", folder, images) == {"a": f"{folder}/a.ome_cp_masks.tif", "b": f"{folder}/b_masks.tif"}
    assert resolve_masks("s1", f"{folder}/*_masks.tif", images)["b"] == f"{folder}/b_masks.tif"


def test_masks_next_to_the_images_are_found(tmp_path, images):
    folder = tmp_path / "images"
    for name in ("a", "b"):
        (folder / f"{name}_cp_masks.tif").write_bytes(b"x")
    assert resolve_masks("s1", str(folder), images) == {n: str(folder / f"{n}_cp_masks.tif") for n in "ab"}


def test_missing_ambiguous_and_orphan_masks_are_reported(tmp_path, images):
    folder = _masks(tmp_path, "a.tif", "a_cp_masks.tif", "c_cp_masks.tif")
    with pytest.raises(CosmicInputError) as info:
        resolve_masks("s1", folder, images)
    message = str(info.value)
    assert "sample 's1', column 'masks'" in message
    assert "image 'a' has 2 masks" in message and "keep one" in message
    assert "image 'b'" in message and "has no mask" in message and "b_cp_masks.tif" in message
    assert "match no image" in message and "c_cp_masks.tif" in message
    with pytest.raises(CosmicInputError, match="no mask TIFFs found"):
        resolve_masks("s1", str(tmp_path / "nowhere"), images)


# ------------------------------------------------------------------ importing a mask

@pytest.fixture
def image_and_mask(tmp_path):
    img, gt = make_synthetic_nuclei((120, 150), n_nuclei=5, seed=3)
    path = tmp_path / "img.ome.tif"
    tifffile.imwrite(path, np.stack([img, img // 2]), metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CellMask"]}})
    return path, gt


def _import(tmp_path, image, mask):
    path = tmp_path / "given.tif"
    tifffile.imwrite(path, mask)
    out = tmp_path / "out.mask.tif"
    info = import_mask(path, image, out, dna_channel="DAPI", sample="s1", image="img")
    return info, tifffile.imread(out)


def test_import_relabels_and_accepts_whole_floats(tmp_path, image_and_mask):
    image, gt = image_and_mask
    info, written = _import(tmp_path, image, (gt * 10).astype(np.float32))
    assert same_up_to_relabelling(written, gt) and written.max() == info["nuclei"] == len(np.unique(gt)) - 1
    assert info["max_label"] == gt.max() * 10


@pytest.mark.parametrize("mask, fragment", [
    (np.zeros((10, 10), np.uint16), r"shape \(10, 10\) does not match.*\(120, 150\)"),
    (np.zeros((2, 120, 150), np.uint16), "expected one 2-D"),
    (np.full((120, 150), 0.5, np.float32), "non-integer values.*not a label mask"),
    (np.full((120, 150), -1, np.int16), "negative labels"),
])
def test_bad_masks_are_rejected(tmp_path, image_and_mask, mask, fragment):
    image, _ = image_and_mask
    with pytest.raises(CosmicInputError, match=fragment) as info:
        _import(tmp_path, image, mask)
    assert "sample 's1'" in str(info.value) and "mask of image 'img'" in str(info.value)
    assert not (tmp_path / "out.mask.tif").exists()


def test_an_empty_mask_warns(tmp_path, image_and_mask):
    image, _ = image_and_mask
    with pytest.warns(SegmentationWarning, match="no nuclei"):
        info, written = _import(tmp_path, image, np.zeros((120, 150), np.uint16))
    assert info["nuclei"] == 0 and not written.any()


# ------------------------------------------------------------------ one channel order in the crop banks

def _sample(tmp_path, name, names, order):
    """One image whose channels (DNA, membrane) are stored in ``order``, with its true mask."""
    img, gt = make_synthetic_nuclei((160, 200), n_nuclei=6, seed=1)
    planes = {"DAPI": img, "CellMask": (img // 3 + 50).astype(np.uint16)}
    path, mask = tmp_path / f"{name}{'.ome' if names else ''}.tif", tmp_path / f"{name}.mask.tif"
    metadata = {"axes": "CYX", "Channel": {"Name": names}} if names else None  # None: plain TIFF
    tifffile.imwrite(path, np.stack([planes[c] for c in order]), metadata=metadata)
    tifffile.imwrite(mask, gt.astype(np.uint16))
    return [("img", path, mask)]


def _build(tmp_path, name, images, order=("DAPI", "CellMask"), dna_channel="DAPI"):
    out = tmp_path / name
    table = build_nuclei_outputs("s1", images, out / "nuclei.parquet", out / "crops.npy", dna_channel=dna_channel,
                                 nuclei_params={"crop_size": 32}, progress=False,
                                 channel_order=None if order is None else list(order))
    return table, np.load(out / "crops.npy")


def test_crops_follow_the_cohort_channel_order(tmp_path):
    canonical = _sample(tmp_path, "canonical", ["DAPI", "CellMask"], ["DAPI", "CellMask"])
    swapped = _sample(tmp_path, "swapped", ["CellMask", "DAPI"], ["CellMask", "DAPI"])
    table_c, crops_c = _build(tmp_path, "c", canonical)
    table_s, crops_s = _build(tmp_path, "s", swapped)
    assert crops_c.shape[1] == 2 and np.array_equal(crops_c, crops_s)
    pd.testing.assert_frame_equal(table_c, table_s)
    assert "morph_cellmask_mean" in table_s.columns
    _, crops_own = _build(tmp_path, "own", swapped, order=None)  # before the fix: each file's own order
    assert np.array_equal(crops_own[:, ::-1], crops_c)


def test_an_image_without_a_cohort_channel_is_refused(tmp_path):
    other = _sample(tmp_path, "other", ["DAPI", "Tubulin"], ["DAPI", "CellMask"])
    with pytest.raises(CosmicInputError, match=r"other\.ome\.tif.*'DAPI', 'Tubulin'.*not 'CellMask'.*'DAPI', 'CellMask'"):
        _build(tmp_path, "o", other)


def test_images_without_channel_names_keep_their_order(tmp_path):
    plain = _sample(tmp_path, "plain", None, ["CellMask", "DAPI"])  # no channel names: ch0, ch1
    table, crops = _build(tmp_path, "p", plain, dna_channel=1)
    _, own = _build(tmp_path, "p_own", plain, order=None, dna_channel=1)
    assert np.array_equal(crops, own) and "morph_ch0_mean" in table.columns


# ------------------------------------------------------------------ dna_channel checked at `snakemake -n`

def test_an_unknown_dna_channel_name_stops_the_dry_run(tmp_path, cohort):
    sheet, _ = cohort
    result = run_snakemake("-n", "--configfile", user_config(tmp_path, sheet, imaging={"dna_channel": "NOPE"}),
                           "--directory", tmp_path)
    message = result.stdout + result.stderr
    assert result.returncode != 0
    for fragment in ("imaging.dna_channel 'NOPE'", "fov_000.ome.tif", "'DAPI', 'CellMask'", "Set imaging.dna_channel"):
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert not (tmp_path / "results").exists()
    ok = run_snakemake("-n", "--configfile", user_config(tmp_path, sheet, imaging={"dna_channel": "dapi"}),
                       "--directory", tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
