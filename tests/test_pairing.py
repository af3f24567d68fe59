"""Pairing barcodes to nuclei, the paired AnnData and the cohort."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cosmic import pairing
from cosmic.errors import CosmicInputError

PARAMS = pairing.PairingParams(max_distance=10, ambiguity_ratio=1.5)


def disc_mask(shape, centres, radius=6):
    mask = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for label, (cy, cx) in enumerate(centres, start=1):
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = label
    return mask


def nuclei_table(centres, image="img0", sample="s1"):
    return pd.DataFrame({
        "nucleus_id": [f"{sample}:{image}:{i + 1}" for i in range(len(centres))],
        "sample": sample,
        "image": image,
        "label": np.arange(1, len(centres) + 1),
        "centroid_y": [c[0] for c in centres],
        "centroid_x": [c[1] for c in centres],
        "qc_pass": True,
        "morph_area": np.linspace(100, 200, len(centres)),
        "morph_dna_integrated": np.linspace(1, 2, len(centres)),
    })


def rna_object(barcodes, n_genes=5, seed=0):
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(rng.poisson(3, (len(barcodes), n_genes)).astype(np.float32),
                       obs=pd.DataFrame(index=list(barcodes)),
                       var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    adata.obsm["X_pca"] = rng.normal(size=(len(barcodes), 3)).astype(np.float32)
    return adata


CENTRES = [(20, 20), (20, 60), (60, 20), (60, 60)]


def test_position_inside_mask_pairs_to_that_nucleus():
    mask = disc_mask((80, 80), CENTRES)
    table = pd.DataFrame({"barcode": ["a", "b"], "image": "img0", "y": [22.0, 58.0], "x": [18.0, 61.0]})
    out = pairing.assign_nuclei(table, nuclei_table(CENTRES), {"img0": mask}, PARAMS)
    assert list(out["nucleus_row"]) == [0, 3]
    assert set(out["status"]) == {pairing.PAIRED}


def test_position_outside_masks_uses_nearest_centroid_within_reach():
    mask = disc_mask((80, 80), CENTRES)
    table = pd.DataFrame({"barcode": ["near", "far"], "image": "img0", "y": [20.0, 40.0], "x": [28.0, 40.0]})
    out = pairing.assign_nuclei(table, nuclei_table(CENTRES), {"img0": mask}, PARAMS).set_index("barcode")
    assert out.loc["near", "status"] == pairing.PAIRED_NEAREST and out.loc["near", "nucleus_row"] == 0
    assert out.loc["near", "distance"] == pytest.approx(8.0)
    # (40, 40) is 28 px from every centre: nothing within reach.
    assert out.loc["far", "status"] == pairing.NO_NUCLEUS and out.loc["far", "nucleus_row"] == -1


def test_position_between_two_nuclei_is_ambiguous():
    centres = [(20, 20), (20, 36)]
    mask = disc_mask((40, 60), centres, radius=5)
    table = pd.DataFrame({"barcode": ["mid"], "image": "img0", "y": [20.0], "x": [28.0]})
    out = pairing.assign_nuclei(table, nuclei_table(centres), {"img0": mask}, PARAMS)
    assert out.loc[0, "status"] == pairing.AMBIGUOUS and out.loc[0, "nucleus_row"] == -1


def test_two_barcodes_on_one_nucleus_are_both_dropped():
    mask = disc_mask((80, 80), CENTRES)
    table = pd.DataFrame({"barcode": ["a", "b", "c"], "image": "img0",
                          "y": [19.0, 21.0, 60.0], "x": [19.0, 21.0, 60.0]})
    out = pairing.assign_nuclei(table, nuclei_table(CENTRES), {"img0": mask}, PARAMS).set_index("barcode")
    assert list(out.loc[["a", "b"], "status"]) == [pairing.CLAIMED_TWICE] * 2
    assert out.loc["c", "status"] == pairing.PAIRED


def test_unknown_image_is_recorded():
    mask = disc_mask((80, 80), CENTRES)
    table = pd.DataFrame({"barcode": ["a"], "image": "other", "y": [20.0], "x": [20.0]})
    out = pairing.assign_nuclei(table, nuclei_table(CENTRES), {"img0": mask}, PARAMS)
    assert out.loc[0, "status"] == pairing.UNKNOWN_IMAGE


def test_pair_sample_builds_scanpy_ready_object(tmp_path):
    mask = disc_mask((80, 80), CENTRES)
    barcodes = ["AAA-1", "CCC-1", "GGG-1", "TTT-1"]
    table = pd.DataFrame({"barcode": barcodes, "image": "img0",
                          "y": [c[0] + 1 for c in CENTRES], "x": [c[1] - 1 for c in CENTRES]})
    rna = rna_object(barcodes[:3] + ["unpaired-1"])
    with pytest.warns(UserWarning, match="paired 3 cells of 4"):
        paired, qc = pairing.pair_sample("s1", rna, nuclei_table(CENTRES), {"img0": mask}, table, PARAMS,
                                         metadata={"treatment": "docetaxel", "meta_batch": "b1", "other": 1})
    assert list(paired.obs_names) == ["s1:AAA-1", "s1:CCC-1", "s1:GGG-1"]
    assert list(paired.obs["crop_index"]) == [0, 1, 2]
    assert (paired.obs["treatment"] == "docetaxel").all() and "meta_batch" in paired.obs and "other" not in paired.obs
    assert paired.obsm["X_morph"].shape == (3, 2) and paired.uns["morph_features"] == ["morph_area", "morph_dna_integrated"]
    np.testing.assert_allclose(paired.obsm["X_rna"], rna.obsm["X_pca"][:3])
    statuses = qc.set_index("barcode")["status"]
    assert statuses["TTT-1"] == pairing.NOT_SEQUENCED
    assert statuses["unpaired-1"] == "barcode_not_in_pairing_table"
    path = tmp_path / "paired.h5ad"
    paired.write_h5ad(path)
    import scanpy as sc

    back = sc.read_h5ad(path)
    assert back.obsm["X_morph"].shape == (3, 2)


def test_no_overlap_between_pairing_and_counts_is_an_error():
    mask = disc_mask((80, 80), CENTRES)
    table = pd.DataFrame({"barcode": ["x", "y"], "image": "img0", "y": [20.0, 60.0], "x": [20.0, 60.0]})
    with pytest.raises(CosmicInputError, match="shares no barcode with the count matrix.*'-1' suffix"):
        pairing.pair_sample("s1", rna_object(["a", "b"]), nuclei_table(CENTRES), {"img0": mask}, table, PARAMS,
                            pairing_path="pairing.tsv")


def test_missing_embedding_is_an_error():
    mask = disc_mask((80, 80), CENTRES)
    table = pd.DataFrame({"barcode": ["a"], "image": "img0", "y": [20.0], "x": [20.0]})
    params = pairing.PairingParams(embedding="scgpt")
    with pytest.raises(CosmicInputError, match="obsm\\['X_scgpt'\\]"), pytest.warns(UserWarning):
        pairing.pair_sample("s1", rna_object(["a", "b"]), nuclei_table(CENTRES), {"img0": mask}, table, params)


@pytest.mark.parametrize("content, message", [
    ("barcode\timage\ty\n", "lacks columns \\['x'\\]"),
    ("barcode\timage\ty\tx\na\timg0\t1\t2\na\timg0\t3\t4\n", "more than once"),
    ("barcode\timage\ty\tx\na\timg0\tnope\t2\n", "numeric"),
])
def test_bad_pairing_tables(tmp_path, content, message):
    path = tmp_path / "pairing.tsv"
    path.write_text(content)
    with pytest.raises(CosmicInputError, match=message) as info:
        pairing.read_pairing_table(path, sample="s1")
    assert "sample 's1'" in str(info.value) and "pairing.tsv" in str(info.value)


def test_cohort_keeps_samples_apart_and_recomputes_pca():
    parts = []
    for k, sample in enumerate(["s1", "s2"]):
        rna = rna_object(["AAA-1", "CCC-1", "GGG-1", "TTT-1"], n_genes=30, seed=k)
        mask = disc_mask((80, 80), CENTRES)
        table = pd.DataFrame({"barcode": list(rna.obs_names), "image": "img0",
                              "y": [c[0] for c in CENTRES], "x": [c[1] for c in CENTRES]})
        paired, _ = pairing.pair_sample(sample, rna, nuclei_table(CENTRES, sample=sample), {"img0": mask},
                                        table, PARAMS, metadata={"treatment": sample})
        parts.append(paired)
    cohort = pairing.build_cohort(parts, n_pcs=2, seed=0)
    assert cohort.n_obs == 8 and cohort.obs_names.is_unique  # same barcodes, different samples
    assert list(cohort.obs["sample"].cat.categories) == ["s1", "s2"]
    assert cohort.obsm["X_rna"].shape == (8, 2)
    np.testing.assert_allclose(cohort.obsm["X_rna"], cohort.obsm["X_pca"])


def test_summarise_qc_counts_statuses():
    qc = pd.DataFrame({"sample": ["s1"] * 4, "barcode": list("abcd"),
                       "status": [pairing.PAIRED, pairing.PAIRED_NEAREST, pairing.CLAIMED_TWICE, pairing.NOT_SEQUENCED]})
    summary = pairing.summarise_qc(qc).set_index("sample")
    assert summary.loc["s1", "paired_total"] == 2
    assert summary.loc["s1", "paired_fraction_of_cells"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------ masks streamed image by image

def reference_assign(pairing_table, nuclei, masks, params):
    """The per-row assignment as first written (one barcode at a time), for comparison."""
    from scipy.spatial import cKDTree

    out = pairing_table.copy()
    out["nucleus_row"], out["status"], out["distance"] = -1, pairing.NO_NUCLEUS, np.nan
    nuclei = nuclei.reset_index(drop=True)
    for image, rows in out.groupby("image", sort=False):
        in_image = nuclei.index[nuclei["image"] == image].to_numpy()
        if image not in masks:
            out.loc[rows.index, "status"] = pairing.UNKNOWN_IMAGE
            continue
        mask = masks[image]
        label_to_row = dict(zip(nuclei.loc[in_image, "label"].astype(int), in_image))
        ys, xs = rows["y"].to_numpy(), rows["x"].to_numpy()
        iy = np.clip(np.round(ys).astype(int), 0, mask.shape[0] - 1)
        ix = np.clip(np.round(xs).astype(int), 0, mask.shape[1] - 1)
        inside = (ys >= -0.5) & (ys < mask.shape[0] - 0.5) & (xs >= -0.5) & (xs < mask.shape[1] - 0.5)
        hit = np.where(inside, mask[iy, ix], 0)
        centroids = nuclei.loc[in_image, ["centroid_y", "centroid_x"]].to_numpy(float)
        tree = cKDTree(centroids) if len(centroids) else None
        for k, idx in enumerate(rows.index):
            row = label_to_row.get(int(hit[k]), -1)
            if row >= 0:
                out.loc[idx, ["nucleus_row", "status"]] = row, pairing.PAIRED
                out.at[idx, "distance"] = float(np.hypot(nuclei.at[row, "centroid_y"] - ys[k],
                                                         nuclei.at[row, "centroid_x"] - xs[k]))
                continue
            if tree is None:
                continue
            dists, near = tree.query((ys[k], xs[k]), k=min(2, len(centroids)))
            dists, near = np.atleast_1d(dists), np.atleast_1d(near)
            if dists[0] > params.max_distance:
                continue
            if len(dists) > 1 and dists[1] <= params.max_distance and dists[1] < params.ambiguity_ratio * dists[0]:
                out.loc[idx, ["status", "distance"]] = pairing.AMBIGUOUS, float(dists[0])
                continue
            out.loc[idx, ["nucleus_row", "status", "distance"]] = int(in_image[near[0]]), pairing.PAIRED_NEAREST, float(dists[0])
    claimed = out["nucleus_row"] >= 0
    counts = out.loc[claimed, "nucleus_row"].value_counts()
    twice = out["nucleus_row"].isin(counts.index[counts > 1]) & claimed
    out.loc[twice, "status"], out.loc[twice, "nucleus_row"] = pairing.CLAIMED_TWICE, -1
    return out


def synthetic_sample(n_images=6, seed=0):
    """Masks, nucleus table and a pairing table whose positions hit nuclei, fall near them,
    between two, far from all, outside the image or on an image the sample lacks."""
    rng = np.random.default_rng(seed)
    masks, tables, rows = {}, [], []
    for i in range(n_images):
        image = f"img{i}"
        centres = [(int(y), int(x)) for y, x in rng.integers(8, 92, size=(int(rng.integers(0, 9)), 2))]
        masks[image] = disc_mask((100, 100), centres, radius=5)
        tables.append(nuclei_table(centres, image=image))
        n = 40
        rows.append(pd.DataFrame({"image": image, "y": rng.uniform(-5, 105, n).round(1),
                                  "x": rng.uniform(-5, 105, n).round(1)}))
    rows.append(pd.DataFrame({"image": ["missing"] * 3, "y": [1.0, 2.0, 3.0], "x": [1.0, 2.0, 3.0]}))
    table = pd.concat(rows, ignore_index=True).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    table.insert(0, "barcode", [f"BC{i}-1" for i in range(len(table))])
    return masks, pd.concat(tables, ignore_index=True), table


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_assignment_matches_per_row_reference(seed):
    masks, nuclei, table = synthetic_sample(seed=seed)
    params = pairing.PairingParams(max_distance=12, ambiguity_ratio=1.5)
    got = pairing.assign_nuclei(table, nuclei, masks, params)
    want = reference_assign(table, nuclei, masks, params)
    assert set(got["status"]) >= {pairing.PAIRED, pairing.PAIRED_NEAREST, pairing.NO_NUCLEUS, pairing.UNKNOWN_IMAGE}
    pd.testing.assert_frame_equal(got, want.astype(got.dtypes.to_dict()))


def test_pair_sample_streams_masks_one_at_a_time(tmp_path, monkeypatch):
    """Masks read from their files as each image is paired give the same result as masks held in
    memory, and no more than one mask is alive at any time."""
    import tifffile
    import weakref

    masks, nuclei, table = synthetic_sample(seed=3)
    paths = {}
    for image, mask in masks.items():
        paths[image] = tmp_path / f"{image}.mask.tif"
        tifffile.imwrite(paths[image], mask)
    rna = rna_object(list(table["barcode"]))
    with pytest.warns(UserWarning):
        expected, expected_qc = pairing.pair_sample("s1", rna, nuclei, masks, table, PARAMS)

    alive, peak = [0], [0]
    read = tifffile.imread

    def counting_read(path, *args, **kwargs):
        array = read(path, *args, **kwargs)
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(array, lambda: alive.__setitem__(0, alive[0] - 1))
        return array

    monkeypatch.setattr(pairing.tifffile, "imread", counting_read)
    streamed_masks = pairing.read_masks(paths)
    assert set(streamed_masks) == set(masks) and len(streamed_masks) == len(masks)
    with pytest.warns(UserWarning):
        paired, qc = pairing.pair_sample("s1", rna, nuclei, streamed_masks, table, PARAMS)
    assert peak[0] == 1
    pd.testing.assert_frame_equal(qc, expected_qc)
    pd.testing.assert_frame_equal(paired.obs, expected.obs)
    np.testing.assert_array_equal(paired.obsm["X_morph"], expected.obsm["X_morph"])
