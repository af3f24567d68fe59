"""The demo generator: determinism, formats, and self-consistent ground truth."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import scipy.io
import tifffile

from cosmic import demo

SMALL = dict(cells_per_sample=150, nuclei_per_image=50, image_size=512, oracle_replicates=2)


def digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    settings = demo.DemoSettings(seed=3, **SMALL)
    summary = demo.generate(settings, out, progress=False)
    return settings, out, summary


def test_same_seed_gives_identical_files(dataset, tmp_path):
    settings, out, _ = dataset
    demo.generate(settings, tmp_path, progress=False)
    first, second = digest(out), digest(tmp_path)
    assert first.keys() == second.keys()
    differing = [k for k in first if first[k] != second[k] and not k.endswith("samples.tsv")]
    assert not differing
    other = tmp_path / "other"
    demo.generate(demo.DemoSettings(seed=4, **SMALL), other, progress=False)
    assert digest(other)["demo_control/pairing.tsv"] != first["demo_control/pairing.tsv"]


def test_files_follow_the_sample_sheet(dataset):
    settings, out, _ = dataset
    sheet = pd.read_csv(out / "samples.tsv", sep="\t")
    assert list(sheet["sample"]) == list(settings.samples)
    names = demo.image_names(settings)
    for _, row in sheet.iterrows():
        images = sorted(p.name for p in (out / row["sample"] / "images").iterdir())
        assert images == [f"{n}.ome.tif" for n in names[row["sample"]]]


def test_images_are_multichannel_ome_tiff_with_realistic_noise(dataset):
    _, out, _ = dataset
    path = out / "demo_control" / "images" / "fov_000.ome.tif"
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert tif.series[0].axes == "CYX"
        assert "DAPI" in tif.ome_metadata and "CellMask" in tif.ome_metadata
        pixels = tif.asarray()
    assert pixels.dtype == np.uint16 and pixels.shape == (2, 512, 512)
    mask = tifffile.imread(out / "demo_control" / "truth_masks" / "fov_000.tif")
    background = pixels[0][mask == 0].astype(float)
    # Uneven illumination: background differs between the centre and a corner.
    centre = pixels[0][200:312, 200:312][mask[200:312, 200:312] == 0].mean()
    corner = pixels[0][:64, :64][mask[:64, :64] == 0].mean()
    assert abs(centre - corner) > 10
    assert background.std() > 5  # noise
    assert pixels[0][mask > 0].mean() > 3 * np.median(background)


def test_counts_are_10x_with_realistic_libraries(dataset):
    settings, out, _ = dataset
    folder = out / "demo_docetaxel" / "counts"
    matrix = scipy.io.mmread(folder / "matrix.mtx.gz").tocsr()  # genes x cells
    barcodes = pd.read_csv(folder / "barcodes.tsv.gz", header=None)[0]
    features = pd.read_csv(folder / "features.tsv.gz", sep="\t", header=None)
    assert matrix.shape == (len(features), settings.cells_per_sample) == (len(features), len(barcodes))
    assert barcodes.is_unique and barcodes.str.fullmatch(r"[ACGT]{16}-1").all()
    assert (features[2] == "Gene Expression").all()
    genes = set(features[1])
    assert {"MKI67", "TOP2A", "PCNA", "ABCB1", "NUPR1", "MT-CO1"} <= genes
    library = np.asarray(matrix.sum(axis=0)).ravel()
    assert 2000 < np.median(library) < 12000
    assert matrix.data.min() > 0 and np.issubdtype(matrix.dtype, np.integer)
    # Negative binomial: variance exceeds the mean for well-expressed genes.
    dense = matrix.toarray().astype(float)
    expressed = dense.mean(axis=1) > 5
    assert np.median(dense[expressed].var(axis=1) / dense[expressed].mean(axis=1)) > 1.5


def test_pairing_positions_hit_the_true_nucleus(dataset):
    _, out, _ = dataset
    truth = pd.read_csv(out / "ground_truth.tsv", sep="\t")
    for sample in ("demo_control", "demo_docetaxel"):
        pairing = pd.read_csv(out / sample / "pairing.tsv", sep="\t")
        sequenced = truth[(truth["sample"] == sample) & truth["captured"]]
        merged = pairing.merge(sequenced, on="barcode", validate="one_to_one")
        assert len(merged) == len(pairing)
        hits = []
        for image, group in merged.groupby("image_x"):
            mask = tifffile.imread(out / sample / "truth_masks" / f"{image}.tif")
            ys = np.clip(np.round(group["y"]).astype(int), 0, mask.shape[0] - 1)
            xs = np.clip(np.round(group["x"]).astype(int), 0, mask.shape[1] - 1)
            hits.extend(mask[ys, xs] == group["true_label"].to_numpy())
        assert np.mean(hits) > 0.97


def test_true_labels_match_the_masks(dataset):
    _, out, _ = dataset
    truth = pd.read_csv(out / "ground_truth.tsv", sep="\t")
    assert truth["nucleus_uid"].is_unique
    for (sample, image), group in truth.groupby(["sample", "image"]):
        mask = tifffile.imread(out / sample / "truth_masks" / f"{image}.tif")
        labels, areas = np.unique(mask[mask > 0], return_counts=True)
        assert sorted(labels) == sorted(group["true_label"])
        by_label = dict(zip(labels, areas))
        assert all(by_label[r.true_label] == r.true_area for r in group.itertuples())


def test_ground_truth_is_biologically_consistent(dataset):
    _, out, _ = dataset
    truth = pd.read_csv(out / "ground_truth.tsv", sep="\t")
    assert set(truth["cell_type"]) == set(demo.CELL_TYPES)
    assert set(truth["phase"]) == {"G1", "S", "G2", "M"}
    assert set(truth["treatment"]) == {"control", "docetaxel"}
    assert set(truth["response"]) == {"responsive", "resistant"}
    control = truth[truth["treatment"] == "control"]
    assert not control["polyploid"].any() and not control["mitotic_arrest"].any()
    g1 = control[control["phase"] == "G1"]
    g2 = control[control["phase"] == "G2"]
    assert np.allclose(g2["dna_content"] / g1["dna_content"].mean(), 2.0)
    assert g2["true_area"].mean() > 1.3 * g1["true_area"].mean()
    treated = truth[truth["treatment"] != "control"]
    responsive = treated[treated["response"] == "responsive"]
    resistant = treated[treated["response"] == "resistant"]
    assert responsive["n_micronuclei"].mean() > 0.5 and resistant["n_micronuclei"].sum() == 0


def test_dna_content_measured_in_the_images_doubles_from_g1_to_g2(dataset):
    """Background-subtracted integrated DAPI inside the true masks: G2 ~ 2x G1."""
    from scipy import ndimage as ndi

    _, out, _ = dataset
    truth = pd.read_csv(out / "ground_truth.tsv", sep="\t")
    integrated = {}
    for (sample, image), group in truth.groupby(["sample", "image"]):
        dapi = tifffile.imread(out / sample / "images" / f"{image}.ome.tif")[0].astype(float)
        mask = tifffile.imread(out / sample / "truth_masks" / f"{image}.tif")
        # Grow the masks a little to collect the blurred signal; subtract the local background
        # (median of a ring around the nucleus, away from every nucleus).
        grown = ndi.grey_dilation(mask, size=5)
        for label, box in enumerate(ndi.find_objects(grown), start=1):
            if box is None or label not in set(group["true_label"]):
                continue
            box = tuple(slice(max(s.start - 12, 0), s.stop + 12) for s in box)
            local, pixels = grown[box], dapi[box]
            ring = ndi.binary_dilation(local == label, iterations=10) & (local == 0)
            level = np.median(pixels[ring])
            integrated[(sample, image, label)] = (pixels[local == label] - level).sum()
    truth["integrated_dapi"] = [integrated[(r.sample, r.image, r.true_label)] for r in truth.itertuples()]
    normal = truth[~truth["polyploid"] & (truth["n_micronuclei"] == 0)]
    ratio = normal.loc[normal["phase"] == "G2", "integrated_dapi"].mean() / normal.loc[
        normal["phase"] == "G1", "integrated_dapi"].mean()
    assert 1.7 < ratio < 2.3, ratio


def test_gene_table_records_drivers_and_oracle(dataset):
    _, out, summary = dataset
    genes = pd.read_csv(out / "genes.tsv", sep="\t")
    assert genes["gene"].is_unique
    assert {"cell_cycle_S", "cell_cycle_G2M", "resistance", "rna_private", "background"} <= set(genes["program"])
    assert genes["oracle_r2"].between(-0.2, 1.0).all()
    by_program = genes.groupby("program")["oracle_r2"].mean()
    # Shared programs are explainable from the shared state; RNA-private programs are not.
    assert by_program["cell_cycle_G2M"] > max(0.15, 5 * by_program["rna_private"])
    assert by_program["rna_private"] < 0.1 < by_program["marker_basal"]
    assert not genes.loc[genes["program"] == "rna_private", "driven_by_shared_state"].any()
    assert 0 < summary["rna_total_oracle_r2"] < 1
    saved = json.loads((out / "oracle.json").read_text())
    assert saved["rna_total_oracle_r2"] == pytest.approx(summary["rna_total_oracle_r2"])


def test_morphology_oracle_uses_workflow_features(dataset):
    _, out, summary = dataset
    morph = pd.read_csv(out / "morphology_oracle.tsv", sep="\t").set_index("feature")
    assert morph.index.str.startswith("morph_").all()
    area = [f for f in morph.index if "area" in f][0]
    assert morph.loc[area, "oracle_r2"] > 0.7  # area follows type, cycle and drug response
    traits = pd.read_csv(out / "morphology_traits.tsv", sep="\t")
    assert traits["shared"].any() and (~traits["shared"]).any()
    assert 0 < summary["morphology_total_oracle_r2_standardised"] < 1


def test_explained_fraction_matches_known_variance_split():
    rng = np.random.default_rng(0)
    state = rng.normal(0, 1, (1, 4000, 1))
    private = rng.normal(0, 1, (6, 4000, 1))
    frac, _ = demo.explained_fraction(state * np.sqrt(0.3) + private * np.sqrt(0.7))
    assert frac[0] == pytest.approx(0.3, abs=0.03)


def test_barcodes_do_not_depend_on_the_hash_seed():
    """Same seed, same barcodes in every process (string sets iterate in a per-process order)."""
    import os
    import subprocess
    import sys

    code = ("import numpy as np; from cosmic.demo import random_barcodes; "
            "print(random_barcodes(np.random.default_rng(3), 50))")
    outputs = set()
    for hash_seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        outputs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   check=True).stdout)
    assert len(outputs) == 1
