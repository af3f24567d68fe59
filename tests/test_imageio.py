"""Reading microscope images: axis orders, z-stacks, dtypes, OME channel names, bad inputs."""

import numpy as np
import pytest
import tifffile

from cosmic.errors import CosmicInputError
from cosmic.imageio import (ImageData, channel_order, check_dna_channel, crop_banks_by_sample, crop_dna_channel,
                            file_channel_names, order_channels, read_image)


def _planes(c=2, h=40, w=50, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((c, h, w)) * 1000).astype(np.uint16)


def test_yx_single_channel(tmp_path):
    a = _planes(1)[0]
    tifffile.imwrite(tmp_path / "a.tif", a)
    img = read_image(tmp_path / "a.tif")
    assert img.pixels.shape == (1, 40, 50)
    assert img.pixels.dtype == np.float32
    assert img.channel_names == ["ch0"]
    np.testing.assert_array_equal(img.dna, a)


@pytest.mark.parametrize("layout", ["CYX", "YXC"])
@pytest.mark.parametrize("with_axes", [True, False])
def test_multichannel_axis_orders(tmp_path, layout, with_axes):
    cyx = _planes(3)
    data = cyx if layout == "CYX" else np.moveaxis(cyx, 0, -1)
    kw = {"metadata": {"axes": layout}} if with_axes else {}
    if layout == "CYX":
        kw["photometric"] = "minisblack"
    tifffile.imwrite(tmp_path / "a.tif", data, **kw)
    img = read_image(tmp_path / "a.tif", dna_channel=2)
    assert img.pixels.shape == (3, 40, 50)
    assert img.dna_index == 2
    np.testing.assert_array_equal(img.pixels, cyx)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_dtypes(tmp_path, dtype):
    a = (_planes(1)[0] % 200).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", a)
    img = read_image(tmp_path / "a.tif")
    assert img.pixels.dtype == np.float32
    np.testing.assert_allclose(img.dna, a.astype(np.float32))


def test_ome_channel_names_and_name_lookup(tmp_path):
    cyx = _planes(2)
    tifffile.imwrite(tmp_path / "a.ome.tif", cyx,
                     metadata={"axes": "CYX", "Channel": {"Name": ["CellMask", "DAPI"]}})
    img = read_image(tmp_path / "a.ome.tif", dna_channel="DAPI")
    assert img.channel_names == ["CellMask", "DAPI"]
    assert img.dna_index == 1
    np.testing.assert_array_equal(img.dna, cyx[1])


def _stack(z=5, c=2):
    """Z x C x Y x X stack whose plane 3 is sharp (textured) and others blurred/dim."""
    rng = np.random.default_rng(1)
    sharp = (rng.random((c, 40, 50)) * 1000).astype(np.float32)
    out = np.empty((z, c, 40, 50), np.float32)
    for k in range(z):
        out[k] = sharp if k == 3 else 300 + 0.1 * sharp + 5 * k
    return out.astype(np.uint16)


@pytest.mark.parametrize("layout", ["ZCYX", "CZYX", "ZYX"])
def test_zstack_max_and_best_focus(tmp_path, layout):
    zcyx = _stack()
    if layout == "ZCYX":
        data = zcyx
    elif layout == "CZYX":
        data = np.moveaxis(zcyx, 0, 1)
    else:
        zcyx = zcyx[:, :1]
        data = zcyx[:, 0]
    tifffile.imwrite(tmp_path / "z.tif", data, metadata={"axes": layout})
    img = read_image(tmp_path / "z.tif", z_projection="max")
    np.testing.assert_array_equal(img.pixels, zcyx.max(axis=0))
    best = read_image(tmp_path / "z.tif", z_projection="best_focus")
    np.testing.assert_array_equal(best.pixels, zcyx[3])


def test_zstack_without_metadata_uses_heuristic(tmp_path):
    zcyx = _stack(z=6, c=2)
    tifffile.imwrite(tmp_path / "z.tif", zcyx)  # no axes metadata: shape 6 x 2 x Y x X
    img = read_image(tmp_path / "z.tif", z_projection="best_focus")
    assert img.pixels.shape == (2, 40, 50)
    np.testing.assert_array_equal(img.pixels, zcyx[3])


def test_imagej_hyperstack(tmp_path):
    zcyx = _stack()
    tifffile.imwrite(tmp_path / "ij.tif", zcyx, imagej=True, metadata={"axes": "ZCYX"})
    img = read_image(tmp_path / "ij.tif")
    np.testing.assert_array_equal(img.pixels, zcyx.max(axis=0))


# ---- bad inputs ---------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(CosmicInputError, match=r"sample 's1'.*nope\.tif.*not found"):
        read_image(tmp_path / "nope.tif", sample="s1")


def test_corrupt_file(tmp_path):
    p = tmp_path / "bad.tif"
    p.write_bytes(b"this is not a tiff at all" * 10)
    with pytest.raises(CosmicInputError, match=r"bad\.tif.*not a readable TIFF"):
        read_image(p, sample="s1")


def test_truncated_file(tmp_path):
    p = tmp_path / "t.tif"
    tifffile.imwrite(p, _planes(2, 200, 200))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CosmicInputError, match=r"t\.tif.*(corrupt or truncated)"):
        read_image(p, sample="s1")


def test_empty_file(tmp_path):
    p = tmp_path / "e.tif"
    p.write_bytes(b"")
    with pytest.raises(CosmicInputError, match="empty"):
        read_image(p)


def test_constant_image(tmp_path):
    p = tmp_path / "c.tif"
    tifffile.imwrite(p, np.full((30, 30), 7, np.uint16))
    with pytest.raises(CosmicInputError, match=r"c\.tif.*constant.*7"):
        read_image(p, sample="s1")


def test_wrong_ndim(tmp_path):
    p = tmp_path / "n.tif"
    tifffile.imwrite(p, np.ones((2, 3, 4, 5, 6, 7), np.uint8))
    with pytest.raises(CosmicInputError, match=r"n\.tif.*dimensions"):
        read_image(p, sample="s1")


def test_channel_out_of_range(tmp_path):
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, _planes(2), metadata={"axes": "CYX"})
    with pytest.raises(CosmicInputError, match=r"dna_channel 5 is out of range.*2 channel.*ch0, ch1"):
        read_image(p, dna_channel=5, sample="s1")


def test_unknown_channel_name_lists_available(tmp_path):
    p = tmp_path / "a.ome.tif"
    tifffile.imwrite(p, _planes(2), metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CellMask"]}})
    with pytest.raises(CosmicInputError, match=r"unknown channel name 'Hoechst'.*'DAPI', 'CellMask'"):
        read_image(p, dna_channel="Hoechst")


def test_bad_z_projection(tmp_path):
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, _planes(1)[0])
    with pytest.raises(CosmicInputError, match="z_projection"):
        read_image(p, z_projection="median")


def test_crop_dna_channel_index_name_and_fallback(tmp_path):
    p = tmp_path / "named.ome.tif"
    tifffile.imwrite(p, _planes(2), metadata={"axes": "CYX", "Channel": {"Name": ["CellMask", "DAPI"]}})
    assert crop_dna_channel(1) == 1
    assert crop_dna_channel("DAPI", p) == 1  # crops keep the images' channel order
    assert crop_dna_channel("DAPI", None) == 0  # nothing to resolve the name on


def test_crop_banks_by_sample_pairs_in_order_or_not_at_all():
    assert crop_banks_by_sample(["a/crops.npy", "b/crops.npy"], ["a", "b"]) == {"a": "a/crops.npy", "b": "b/crops.npy"}
    assert crop_banks_by_sample(["a/crops.npy"], ["a", "b"]) is None
    assert crop_banks_by_sample([], []) is None


def test_channel_names_come_from_the_metadata_alone(tmp_path, monkeypatch):
    named, plain, ids = tmp_path / "named.ome.tif", tmp_path / "plain.tif", tmp_path / "ids.ome.tif"
    tifffile.imwrite(named, _planes(2), metadata={"axes": "CYX", "Channel": {"Name": ["CellMask", "DAPI"]}})
    tifffile.imwrite(plain, _planes(3), photometric="minisblack")
    tifffile.imwrite(ids, _planes(2))  # OME without names: IDs Channel:0:<i>

    def no_pixels(*args, **kwargs):
        raise AssertionError("pixel data read")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_pixels)
    assert file_channel_names(named) == (["CellMask", "DAPI"], True)
    assert file_channel_names(plain) == (["ch0", "ch1", "ch2"], False)
    assert channel_order(named) == ["CellMask", "DAPI"]
    assert channel_order(plain) is None and channel_order(ids) is None
    assert channel_order(tmp_path / "absent.tif") is None and channel_order(None) is None
    check_dna_channel("dapi", named)  # names match ignoring case
    check_dna_channel("NOPE", tmp_path / "absent.tif")  # demo data not generated yet: skipped
    with pytest.raises(CosmicInputError, match=r"imaging\.dna_channel 'NOPE'.*named\.ome\.tif.*'CellMask', 'DAPI'"):
        check_dna_channel("NOPE", named)


def test_order_channels_by_name(caplog):
    pixels = np.stack([np.full((4, 4), v, np.float32) for v in (1, 2, 3)])
    image = ImageData(pixels, ["cellmask", "Tubulin", "DAPI"], dna_index=2)
    ordered = order_channels(image, ["DAPI", "CellMask"], "img")
    assert ordered.channel_names == ["DAPI", "CellMask"] and ordered.dna_index == 0
    assert ordered.pixels[:, 0, 0].tolist() == [3, 1]
    assert "Tubulin" in caplog.text  # left out, with a warning
    with pytest.raises(CosmicInputError, match=r"img: has the channels .*not 'Hoechst'"):
        order_channels(image, ["Hoechst", "CellMask"], "img")
    plain = ImageData(pixels, ["ch0", "ch1", "ch2"])
    assert order_channels(plain, ["DAPI", "CellMask"]) is plain
