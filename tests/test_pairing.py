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
