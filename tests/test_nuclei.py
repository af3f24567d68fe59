"""Per-nucleus table, features and the crop bank."""

import numpy as np
import pandas as pd
import pytest
import tifffile

from cosmic.errors import CosmicInputError
from cosmic.imageio import ImageData
from cosmic.nuclei import (
    CropParams,
    NucleiParams,
    build_nuclei_outputs,
    extract_crops,
    feature_columns,
    measure_nuclei,
)
from synthetic_nuclei import make_synthetic_nuclei


def _two_nuclei(ratio=2.0, bg=200.0, seed=0):
    """Two identical disks (radius 12) on a noisy background; the second has `ratio` x DNA."""
    yy, xx = np.mgrid[0:100, 0:160]
    labels = np.zeros((100, 160), np.int32)
    labels[(yy - 50) ** 2 + (xx - 40) ** 2 <= 144] = 1
    labels[(yy - 50) ** 2 + (xx - 115) ** 2 <= 144] = 2
    rng = np.random.default_rng(seed)
    dna = bg + rng.normal(0, 5, labels.shape)
    tex = 1 + 0.2 * rng.normal(size=labels.shape)
    dna[labels == 1] += (500 * tex)[labels == 1]
    dna[labels == 2] += (500 * ratio * tex)[labels == 2]
    other = np.full(labels.shape, 50.0)
    other[labels == 2] = 80.0
    pixels = np.stack([dna, other]).astype(np.float32)
    return labels, ImageData(pixels, ["DAPI", "CellMask"], 0)


def test_table_columns_and_feature_sanity():
    labels, img = _two_nuclei()
    t = measure_nuclei(labels, img, "img1", sample="s1")
    assert list(t["nucleus_id"]) == ["s1:img1:1", "s1:img1:2"]
    assert list(t["label"]) == [1, 2]
    for col in ["centroid_y", "centroid_x", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "qc_border",
                "qc_too_small", "qc_too_large", "qc_low_contrast", "qc_pass", "morph_area",
                "morph_perimeter", "morph_eccentricity", "morph_solidity", "morph_major_axis_length",
                "morph_minor_axis_length", "morph_form_factor", "morph_dna_integrated", "morph_dna_mean",
                "morph_dna_std", "morph_texture_contrast_d1", "morph_cellmask_mean"]:
        assert col in t.columns, col
    assert t["centroid_y"].tolist() == pytest.approx([50, 50])
    assert t["morph_area"].tolist() == [441, 441]
    assert t["morph_form_factor"].between(0.8, 1.2).all()
    assert t["qc_pass"].all()
    # background-subtracted: twice the DNA -> about twice the integrated intensity
    ratio = t["morph_dna_integrated"][1] / t["morph_dna_integrated"][0]
    assert ratio == pytest.approx(2.0, rel=0.05)
    assert t["dna_background"].tolist() == pytest.approx([200, 200], abs=3)
    assert t["morph_cellmask_mean"].tolist() == pytest.approx([50, 80])
    radial = t[[f"morph_dna_radial_{k}" for k in range(1, 5)]].sum(axis=1)
    assert radial.tolist() == pytest.approx([1, 1])
    assert all(c.startswith("morph_") for c in feature_columns(t))
    assert np.isfinite(t[feature_columns(t)].to_numpy()).all()


def test_qc_flags():
    labels, img = _two_nuclei()
    labels[0:5, 0:5] = 3  # tiny object in the corner
    t = measure_nuclei(labels, img, "i", params={"qc_min_area": 50}).set_index("label")
    assert t.loc[3, "qc_border"] and t.loc[3, "qc_too_small"] and not t.loc[3, "qc_pass"]
    assert t.loc[3, "qc_low_contrast"]  # it sits on background
    big = measure_nuclei(labels, img, "i", params={"qc_max_area": 100}).set_index("label")
    assert big.loc[1, "qc_too_large"] and not big.loc[1, "qc_pass"]


def test_single_nucleus_crop_and_empty():
    labels, img = _two_nuclei()
    crop_lab = labels[25:75, 15:65]
    crop_img = ImageData(img.pixels[:, 25:75, 15:65], img.channel_names, 0)
    one = measure_nuclei(crop_lab, crop_img, "crop")
    assert len(one) == 1 and one["morph_area"].iloc[0] == 441
    empty = measure_nuclei(np.zeros_like(labels), img, "img1", sample="s1")
    full = measure_nuclei(labels, img, "img1", sample="s1")
    assert len(empty) == 0
    assert list(empty.columns) == list(full.columns)
    assert (empty.dtypes == full.dtypes).all()
    # a bare 2-D array is accepted as the DNA channel
    assert len(measure_nuclei(labels, img.pixels[0], "x")) == 2


def test_mask_shape_mismatch():
    labels, img = _two_nuclei()
    with pytest.raises(CosmicInputError, match="does not match"):
        measure_nuclei(labels[:50], img, "i", sample="s1")


def test_params_validation():
    with pytest.raises(CosmicInputError, match="unknown key.*crop_sise"):
        NucleiParams.from_config({"crop_sise": 32})
    with pytest.raises(CosmicInputError, match="normalization must be one of"):
        NucleiParams.from_config({"normalization": "minmax"})
    assert NucleiParams.from_config({"crop_size": 32}).crop().crop_size == 32


def test_extract_crops_order_shape_padding():
    labels, img = _two_nuclei()
    labels[0:6, 150:160] = 3  # at the border -> padded
    t = measure_nuclei(labels, img, "i")
    crops = extract_crops(labels, img.pixels, t, CropParams(crop_size=32, normalization="none"))
    assert crops.shape == (3, 2, 32, 32) and crops.dtype == np.float16
    # centre pixel of each crop is the image pixel at the centroid
    for i, row in t.iterrows():
        cy, cx = int(row["centroid_y"]), int(row["centroid_x"])
        assert float(crops[i, 0, 16, 16]) == pytest.approx(img.pixels[0, cy, cx], rel=1e-3)
    assert (crops[2, :, :13, :] == 0).all()  # above the image: zero padding
    masked = extract_crops(labels, img.pixels, t, CropParams(crop_size=48, mask_to_nucleus=True))
    assert masked[0, 0, 0, 0] == 0 and masked[0, 0, 24, 24] > 0
    z = extract_crops(labels, img.pixels, t, CropParams(normalization="zscore"))
    assert np.isfinite(z.astype(np.float32)).all()


def _write_sample(tmp_path, n_images=3, empty_last=False):
    images = []
    for k in range(n_images):
        img, gt = make_synthetic_nuclei((160, 200), n_nuclei=6, seed=k)
        if empty_last and k == n_images - 1:
            gt[:] = 0
        p, m = tmp_path / f"img{k}.ome.tif", tmp_path / f"img{k}.mask.tif"
        tifffile.imwrite(p, np.stack([img, img // 3]),
                         metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CellMask"]}})
        tifffile.imwrite(m, gt.astype(np.uint16))
        images.append((f"img{k}", p, m))
    return images


def test_build_nuclei_outputs(tmp_path):
    images = _write_sample(tmp_path, empty_last=True)
    out = tmp_path / "nuclei" / "s1"
    table = build_nuclei_outputs("s1", images, out / "nuclei.parquet", out / "crops.npy",
                                 seg_params={"nucleus_diameter": 30},
                                 nuclei_params={"crop_size": 40}, dna_channel="DAPI", progress=False)
    t = pd.read_parquet(out / "nuclei.parquet")
    bank = np.load(out / "crops.npy", mmap_mode="r")
    assert isinstance(bank, np.memmap)
    assert bank.shape == (len(t), 2, 40, 40) and bank.dtype == np.float16
    assert len(t) == len(table) > 10
    assert t["crop_index"].tolist() == list(range(len(t)))
    assert t["image"].unique().tolist() == ["img0", "img1"]
    assert t["nucleus_id"].is_unique
    # row i of the bank is the crop of row i of the table
    for i in [0, len(t) // 2, len(t) - 1]:
        row = t.iloc[i]
        k = int(row["image"][3:])
        labels = tifffile.imread(images[k][2])
        from cosmic.imageio import read_image

        img = read_image(images[k][1])
        expect = extract_crops(labels, img.pixels, t.iloc[[i]], CropParams(crop_size=40))
        np.testing.assert_array_equal(bank[i], expect[0])
    assert sorted(p.name for p in out.iterdir()) == ["crops.npy", "nuclei.parquet"]


def test_build_nuclei_outputs_no_nuclei(tmp_path):
    images = _write_sample(tmp_path, n_images=1, empty_last=True)
    out = tmp_path / "o"
    build_nuclei_outputs("s1", images, out / "nuclei.parquet", out / "crops.npy", progress=False)
    t = pd.read_parquet(out / "nuclei.parquet")
    bank = np.load(out / "crops.npy", mmap_mode="r")
    assert len(t) == 0 and "morph_area" in t.columns and "crop_index" in t.columns
    assert bank.shape == (0, 2, 64, 64) and bank.dtype == np.float16


def test_build_nuclei_outputs_mismatched_mask(tmp_path):
    images = _write_sample(tmp_path, n_images=1)
    tifffile.imwrite(images[0][2], np.zeros((10, 10), np.uint16))
    with pytest.raises(CosmicInputError, match=r"img0\.mask\.tif.*does not match.*re-run segmentation"):
        build_nuclei_outputs("s1", images, tmp_path / "t.parquet", tmp_path / "c.npy", progress=False)
    assert not (tmp_path / "c.npy").exists()
