"""The pairing table split by image (one positions file per image) and the size-based resources."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from cosmic import resources
from cosmic.errors import CosmicInputError
from cosmic.pairing import read_pairing_table
from cosmic.pairing_by_image import position_file, read_positions, split_by_image

IMAGES = ["fov_000", "fov_001", "fov_002"]


def write_table(path, rows):
    pd.DataFrame(rows, columns=["barcode", "image", "y", "x"]).to_csv(path, sep="\t", index=False)


ROWS = [
    ("AAA-1", "fov_000", 10.25, 20.0),
    ("CCC-1", "fov_001", 0.1 + 0.2, 7),  # many digits; an integer
    ("GGG-1", "fov_000", 30.0, 40.5),
    ("TTT-1", "elsewhere", 1.0, 1.0),
]


def age(folder, seconds=1000):
    """Set every file's modification time `seconds` into the past; return the times."""
    times = {}
    for path in folder.iterdir():
        stamp = path.stat().st_mtime - seconds
        os.utime(path, (stamp, stamp))
        times[path.name] = path.stat().st_mtime_ns
    return times


def test_one_positions_file_per_image_in_table_order(tmp_path):
    table = tmp_path / "pairing.tsv"
    write_table(table, ROWS)
    counts = split_by_image(table, tmp_path / "split", IMAGES, sample="s1")
    assert counts == {"written": 3, "unchanged": 0, "removed": 0, "rows": 4, "rows_other_images": 1}
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == [f"{name}.tsv" for name in IMAGES]
    np.testing.assert_array_equal(read_positions(position_file(tmp_path / "split", "fov_000")),
                                  [[10.25, 20.0], [30.0, 40.5]])
    # exactly the positions segmentation read from the whole table before, not just close
    whole = read_pairing_table(table).set_index("barcode")
    back = read_positions(position_file(tmp_path / "split", "fov_001"))
    assert back.dtype == np.float64 and back[0, 0] == whole.loc["CCC-1", "y"] and back[0, 1] == 7.0
    assert read_positions(position_file(tmp_path / "split", "fov_002")).shape == (0, 2)  # no rows: header only


def test_changed_row_rewrites_only_its_image(tmp_path):
    """Snakemake reruns a segment job when its positions file is newer than its mask: a file
    whose rows did not change must keep its modification time."""
    table, folder = tmp_path / "pairing.tsv", tmp_path / "split"
    write_table(table, ROWS)
    split_by_image(table, folder, IMAGES, sample="s1")
    before = age(folder)

    moved = [row if row[0] != "CCC-1" else ("CCC-1", "fov_001", 5.0, 7) for row in ROWS]
    renamed = [(f"{b}-renamed", image, y, x) if image == "fov_000" else (b, image, y, x) for b, image, y, x in moved]
    write_table(table, renamed)  # fov_001: a position moved; fov_000: barcodes renamed only
    counts = split_by_image(table, folder, IMAGES, sample="s1")
    assert counts["written"] == 1 and counts["unchanged"] == 2
    after = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert after["fov_001.tsv"] > before["fov_001.tsv"]
    assert after["fov_000.tsv"] == before["fov_000.tsv"] and after["fov_002.tsv"] == before["fov_002.tsv"]


def test_images_gone_from_the_sample_lose_their_file(tmp_path):
    table, folder = tmp_path / "pairing.tsv", tmp_path / "split"
    write_table(table, ROWS)
    split_by_image(table, folder, IMAGES, sample="s1")
    (folder / ".snakemake_timestamp").touch()  # Snakemake's own marker in directory outputs stays
    counts = split_by_image(table, folder, IMAGES[:2], sample="s1")
    assert counts["removed"] == 1
    assert sorted(p.name for p in folder.iterdir()) == [".snakemake_timestamp", "fov_000.tsv", "fov_001.tsv"]


def test_bad_table_is_reported_with_sample_and_file(tmp_path):
    table = tmp_path / "pairing.tsv"
    table.write_text("barcode\timage\ty\n")
    with pytest.raises(CosmicInputError, match="sample 's1'.*pairing.tsv.*lacks columns"):
        split_by_image(table, tmp_path / "split", IMAGES, sample="s1")


def test_unreadable_positions_file_names_image_and_fix(tmp_path):
    path = tmp_path / "fov_000.tsv"
    path.write_text("a\tb\n1\t2\n")
    with pytest.raises(CosmicInputError, match="sample 's1', image 'fov_000'.*lack columns.*Delete"):
        read_positions(path, sample="s1", image="fov_000")


# ------------------------------------------------------------------ size-based resources

class JobInput(list):
    """What Snakemake hands a resource function: the input files, by position and by name."""

    def __init__(self, **named):
        super().__init__(p for value in named.values() for p in ([value] if isinstance(value, str) else value))
        self.named = named

    def keys(self):
        return self.named.keys()

    def __getattr__(self, name):
        try:
            return self.named[name]
        except KeyError:
            raise AttributeError(name) from None


def sized_file(path, megabytes):
    with open(path, "wb") as fh:
        fh.truncate(int(megabytes * resources.MB))
    return str(path)


def test_resources_grow_with_input_size_and_attempt(tmp_path):
    small = JobInput(image=sized_file(tmp_path / "small.tif", 2))
    large = JobInput(image=sized_file(tmp_path / "large.tif", 500))
    assert resources.segment_mem_mb(None, small) < resources.segment_mem_mb(None, large)
    assert resources.segment_runtime(None, small) < resources.segment_runtime(None, large)
    assert resources.segment_mem_mb(None, small, attempt=2) == 2 * resources.segment_mem_mb(None, small)
    images = [sized_file(tmp_path / f"img{i}.tif", 2) for i in range(50)]
    few, many = JobInput(images=images[:5]), JobInput(images=images)
    assert resources.nuclei_runtime(None, few) < resources.nuclei_runtime(None, many)
    assert resources.nuclei_mem_mb(None, JobInput(images=images[0])) > 4000  # one image: a string
    # 20 GB of images (10,000 of 2 MB, 10^6 nuclei: about 2.5 h measured): more, but within a day
    sample = JobInput(images=[sized_file(tmp_path / "all.tif", 20_000)])  # sparse: no disk used
    assert 150 < resources.nuclei_runtime(None, sample) < 24 * 60
    crops = JobInput(model=sized_file(tmp_path / "model.pt", 1), crops=sized_file(tmp_path / "crops.npy", 1024))
    assert resources.embed_runtime(None, crops) == 30 + 12


def test_cohort_level_memory_grows_with_the_cohort_file(tmp_path):
    request = resources.from_cohort_size("cohort", 2000, 10, floor=8000)
    demo = JobInput(cohort=sized_file(tmp_path / "demo.h5ad", 5))
    assert request(None, demo) == 8000 and request(None, demo, attempt=2) == 16000
    # 10^5 cells over 20,000 genes: a ~620 MB cohort file, 3.9 GB measured for cosmic
    cohort = JobInput(cohort=sized_file(tmp_path / "cohort.h5ad", 620))
    assert 2 * 3900 < request(None, cohort) < 12000
    # the cohort rule reads the paired samples: their sizes add up
    paired = JobInput(paired=[sized_file(tmp_path / f"s{i}.h5ad", 310) for i in range(2)])
    assert resources.from_cohort_size("paired", 2000, 10)(None, paired) == 2000 + 6200


def test_rna_memory_grows_with_the_count_matrix_file_or_folder(tmp_path):
    demo = JobInput(counts=sized_file(tmp_path / "demo.h5ad", 20))
    assert resources.rna_mem_mb(None, demo) == 8000 and resources.rna_mem_mb(None, demo, attempt=2) == 16000
    # a 10x folder counts as the files in it; 50,000 cells x 20,000 genes (480 MB): 2.7 GB measured
    folder = tmp_path / "filtered_feature_bc_matrix"
    folder.mkdir()
    for name, mb in (("matrix.mtx.gz", 1400), ("barcodes.tsv.gz", 1), ("features.tsv.gz", 1)):
        sized_file(folder / name, mb)
    assert resources.rna_mem_mb(None, JobInput(counts=str(folder))) == 2000 + 6 * 1402
    big = JobInput(counts=sized_file(tmp_path / "big.h5ad", 480 * 20))  # 10^6 cells: ~50 GB by extrapolation
    assert 50_000 < resources.rna_mem_mb(None, big) < 70_000


def test_resources_of_inputs_not_there_yet_are_left_to_be_determined(tmp_path):
    """A missing input (made by an earlier job), or a job waiting for a checkpoint, raises
    FileNotFoundError naming one of the job's inputs: Snakemake shows <TBD> until it can tell."""
    missing = str(tmp_path / "crops.npy")
    with pytest.raises(FileNotFoundError) as info:
        resources.embed_mem_mb(None, JobInput(model=sized_file(tmp_path / "model.pt", 1), crops=missing))
    assert info.value.filename == missing
    pending = JobInput(checkpoint=str(tmp_path / "pairing_by_image"))  # only the checkpoint's output
    with pytest.raises(FileNotFoundError) as info:
        resources.segment_runtime(None, pending)
    assert info.value.filename in pending
