"""Image-space features of crops (cosmic.evaluation.images): central-nucleus segmentation,
region properties measured on mosaics of crops, and foundation embeddings of in-memory crops."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cosmic import foundation as fm
from cosmic.errors import CosmicInputError
from cosmic.evaluation.images import image_space_features, measure_crops, segment_crop_nucleus

S = 64
BG, CH1_IN, CH1_OUT = 0.05, 0.4, 0.1


def ellipse_crop(a, b, amp=0.8, angle=0.0, centre=(0.0, 0.0), neighbour=False, noise=0.01, seed=0):
    """2-channel S x S crop (DNA at 0): a bright ellipse of semi-axes ``a`` (along ``angle``) and
    ``b`` on a dark background; channel 1 is CH1_IN inside the ellipse, CH1_OUT outside.
    Also returns the ellipse's pixel mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:S, 0:S] - S // 2
    yy, xx = yy - centre[0], xx - centre[1]
    c, s = math.cos(angle), math.sin(angle)
    u, v = xx * c + yy * s, -xx * s + yy * c
    inside = (u / a) ** 2 + (v / b) ** 2 <= 1
    dna = BG + amp * inside + rng.normal(0, noise, (S, S))
    if neighbour:  # a second, brighter nucleus near a corner
        dna += 1.0 * (((yy + S // 2 - 8) ** 2 + (xx + S // 2 - 8) ** 2) <= 36)
    ch1 = np.where(inside, CH1_IN, CH1_OUT)
    return np.stack([dna, ch1]).astype(np.float32), inside


def test_segment_crop_nucleus_keeps_the_central_component():
    crop, inside = ellipse_crop(12, 7, neighbour=True)
    m = segment_crop_nucleus(crop[0])
    assert m.shape == (S, S) and m.dtype.kind == "i" and set(np.unique(m)) == {0, 1}
    assert m[S // 2, S // 2] == 1 and m[8, 8] == 0  # the neighbour is left out
    assert abs(int(m.sum()) - int(inside.sum())) <= 0.05 * inside.sum()
    # off-centre nucleus: the component nearest to the centre
    off, inside = ellipse_crop(5, 5, centre=(14, 0))
    m = segment_crop_nucleus(off[0])
    assert m[S // 2, S // 2] == 0 and m[S // 2 + 14, S // 2] == 1
    for blank in (np.zeros((S, S)), np.full((S, S), 0.3), np.full((S, S), np.nan)):
        assert not segment_crop_nucleus(blank).any()


def test_measured_ellipse_matches_its_geometry_and_brightness():
    a, b = 14.0, 8.0
    amps = (0.3, 0.6, 0.9)
    crops = np.stack([ellipse_crop(a, b, amp, angle=0.5, seed=i)[0] for i, amp in enumerate(amps)])
    t = measure_crops(crops, dna_channel=0)
    assert list(t.columns[-1:]) == ["found"] and t["found"].all()
    assert all(c.startswith("morph_") for c in t.columns[:-1])
    area = t["morph_area"].to_numpy()
    np.testing.assert_allclose(area, math.pi * a * b, rtol=0.05)
    np.testing.assert_allclose(t["morph_eccentricity"], math.sqrt(1 - (b / a) ** 2), atol=0.02)
    axes = t[["morph_major_axis_length", "morph_minor_axis_length"]]
    np.testing.assert_allclose(axes, [[2 * a, 2 * b]] * 3, rtol=0.05)
    # background-subtracted: integrated DNA = brightness x area
    integ = t["morph_dna_integrated"].to_numpy()
    np.testing.assert_allclose(integ / (np.array(amps) * area), 1.0, rtol=0.03)
    np.testing.assert_allclose(t["morph_dna_mean"], amps, rtol=0.03)
    np.testing.assert_allclose(t["morph_ch1_mean"], CH1_IN, rtol=0.01)  # other channels: raw means


def test_blank_crops_are_not_found_and_have_nan_features():
    good, _ = ellipse_crop(10, 8)
    crops = np.stack([np.zeros((2, S, S), np.float32), good, np.full((2, S, S), 0.5, np.float32)])
    t = measure_crops(crops.astype(np.float16))
    assert t["found"].tolist() == [False, True, False]
    feats = t.drop(columns="found")
    assert feats.iloc[[0, 2]].isna().all().all() and feats.iloc[1].notna().all()
    empty = measure_crops(np.zeros((0, 2, S, S), np.float32))
    assert len(empty) == 0 and list(empty.columns) == list(t.columns)
    all_blank = measure_crops(np.zeros((3, 2, S, S), np.float32))
    assert (~all_blank["found"]).all() and all_blank.drop(columns="found").isna().all().all()


@pytest.fixture(scope="module")
def mixed():
    """13 crops of nuclei of mixed sizes (radius 4..20) in shuffled order, some with a
    neighbour, one blank."""
    rng = np.random.default_rng(3)
    radii = rng.permutation(np.linspace(4, 20, 13))
    crops = np.stack([ellipse_crop(r, 0.8 * r, angle=float(rng.uniform(0, 3)), neighbour=i % 3 == 0, seed=i)[0]
                      for i, r in enumerate(radii)])
    crops[6] = 0  # blank
    return crops, radii


def test_rows_follow_crop_order_in_mosaic_batches(mixed):
    crops, radii = mixed
    t = measure_crops(crops, batch_size=5)  # three mosaics, the last one ragged
    assert t.index.tolist() == list(range(13)) and t["found"].sum() == 12 and not t["found"][6]
    ok = t["found"].to_numpy()
    area, expected = t["morph_area"][ok].to_numpy(), math.pi * 0.8 * radii[ok] ** 2
    assert (np.argsort(area) == np.argsort(expected)).all()
    np.testing.assert_allclose(area, expected, rtol=0.05, atol=8)  # ~1 px of boundary on the small ones


def test_a_crop_gives_the_same_numbers_alone_and_in_any_batch(mixed):
    crops, _ = mixed
    ref = measure_crops(crops, batch_size=len(crops))
    for bs in (1, 4):
        pd.testing.assert_frame_equal(measure_crops(crops, batch_size=bs), ref, rtol=1e-9, atol=1e-12)
    alone = measure_crops(crops[[9]])
    pd.testing.assert_frame_equal(alone, ref.iloc[[9]].reset_index(drop=True), rtol=1e-9, atol=1e-12)


def test_neighbours_do_not_enter_the_background():
    """Neighbours covering most of the background ring are labelled, as in a whole image, so
    the DNA background stays that of the dark pixels (left as background, they would raise it
    to the nucleus's own brightness: morph_dna_mean ~0.01 instead of 0.5)."""
    lone, _ = ellipse_crop(6, 6, amp=0.5, seed=1)
    ay, ax = np.abs(np.mgrid[0:S, 0:S] - S // 2)
    crowded = lone.copy()
    crowded[0] += 0.5 * (((ax >= 9) & (ax <= 16) & (ay <= 20)) | ((ay >= 9) & (ay <= 16) & (ax <= 5)))
    t = measure_crops(np.stack([lone, crowded]), nuclei_params={"background_ring_width": 6})
    np.testing.assert_allclose(t["morph_dna_mean"], 0.5, rtol=0.03)
    np.testing.assert_allclose(t["morph_area"], 113, atol=2)


def test_measure_crops_options_and_errors():
    crops = np.stack([ellipse_crop(10, 8)[0]])
    named = measure_crops(crops, channel_names=["DAPI", "Tubulin"], nuclei_params={"texture_distances": [2]})
    assert "morph_tubulin_mean" in named and "morph_texture_contrast_d2" in named
    assert "morph_texture_contrast_d1" not in named
    swapped = measure_crops(crops[:, ::-1], dna_channel=1)
    np.testing.assert_allclose(swapped["morph_area"], named["morph_area"])
    with pytest.raises(CosmicInputError, match="N x C x S x S"):
        measure_crops(crops[0])
    with pytest.raises(CosmicInputError, match="DNA channel"):
        measure_crops(crops, dna_channel=2)
    with pytest.raises(CosmicInputError):
        measure_crops(crops, nuclei_params={"no_such_key": 1})


# ---------------------------------------------------------------------------------------
# foundation embeddings
TINY = dict(embed_dim=32, depth=1, heads=2, patch_size=4, decoder_dim=32, decoder_depth=1, device="cpu",
            num_workers=0)


@pytest.fixture(scope="module")
def tiny_model():
    import torch

    torch.manual_seed(0)
    return fm.build_model(fm.FoundationParams(**TINY), 2, 16).eval()


def test_embed_array_equals_embed_crops_on_a_saved_bank(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    crops = rng.uniform(0, 1, (23, 2, 16, 16)).astype(np.float16)
    crops[3, 0, 2, 2] = np.nan  # non-finite pixels count as 0 on both paths
    path = tmp_path / "crops.npy"
    np.save(path, crops)
    ref = fm.embed_crops(tiny_model, path, batch_size=7)
    got = fm.embed_array(tiny_model, crops, batch_size=7)
    assert got.dtype == np.float32 and got.shape == ref.shape == (23, tiny_model.embedding_dim)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(fm.embed_array(tiny_model, crops.astype(np.float32)), ref, rtol=1e-5, atol=1e-6)
    assert np.isnan(crops[3, 0, 2, 2])  # the caller's array is untouched
    assert fm.embed_array(tiny_model, crops[:0]).shape == (0, tiny_model.embedding_dim)
    with pytest.raises(CosmicInputError, match="do not match"):
        fm.embed_array(tiny_model, np.zeros((2, 2, 32, 32), np.float32))


def test_image_space_features_bundles_properties_and_embedding(tiny_model):
    crops = np.stack([ellipse_crop(4, 3)[0][:, 24:40, 24:40], np.zeros((2, 16, 16), np.float32)])
    out = image_space_features(crops, 0, tiny_model)
    assert out["properties"]["found"].tolist() == [True, False]
    np.testing.assert_array_equal(out["embedding"], fm.embed_array(tiny_model, crops))
    assert image_space_features(crops, 0)["embedding"] is None
