"""The generator inside the repeated evaluation (cosmic.generate.run): crops read through the cohort's
(sample, crop_index), no test cell in training, the output aligned with the split's test cells, and
the generated crops placed in the crop bank's geometry for measurement."""

from __future__ import annotations

import numpy as np
import pytest

from cosmic.errors import CosmicInputError
from cosmic.generate import run as G
from test_crossmodal import synthetic_cohort
from test_generate import TINY, one_thread  # noqa: F401  (autouse: one torch thread here too)


def _cohort_with_banks(tmp_path, n=90):
    """A synthetic cohort whose cells point into per-sample crop banks; each crop's pixels encode its
    cell's position in the cohort (pixel value = row + 1), so a test can see which crops were read."""
    a = synthetic_cohort(n=n)
    samples = a.obs["sample"].astype(str).to_numpy()
    banks, crop_index = {}, np.zeros(n, dtype=int)
    for sample in np.unique(samples):
        rows = np.flatnonzero(samples == sample)
        order = np.random.default_rng(0).permutation(len(rows))  # bank order differs from cohort order
        bank = np.zeros((len(rows), 2, 12, 12), dtype=np.float16)
        bank[order] = (rows + 1)[:, None, None, None]
        crop_index[rows] = order
        np.save(tmp_path / f"{sample}.npy", bank)
        banks[sample] = str(tmp_path / f"{sample}.npy")
    a.obs["crop_index"] = crop_index
    return a, banks


def test_cell_crops_reads_each_cells_own_crop_in_any_order(tmp_path):
    a, banks = _cohort_with_banks(tmp_path)
    crops = G.CellCrops(banks, a.obs["sample"].to_numpy(), a.obs["crop_index"].to_numpy())
    assert crops.shape == (a.n_obs, 2, 12, 12)
    idx = np.array([5, 0, 77, 5, 31])
    assert crops[idx][:, 0, 0, 0].tolist() == (idx + 1).tolist()
    with pytest.raises(CosmicInputError, match="no crop bank for sample"):
        G.CellCrops({"other": banks[next(iter(banks))]}, a.obs["sample"].to_numpy(), a.obs["crop_index"].to_numpy())


def test_split_generator_never_reads_a_test_cell_and_writes_nuclei_for_test_cells(tmp_path, monkeypatch):
    from cosmic.generate import training

    a, banks = _cohort_with_banks(tmp_path)
    seen = {}
    original = training.fit_generator

    def spy(crops, conditions, paired, params=None, **kwargs):
        seen["values"] = np.unique(np.asarray(crops[np.arange(len(crops))])[:, 0, 0, 0]).astype(int) - 1
        seen["paired"] = np.asarray(paired).copy()
        return original(crops, conditions, paired, params, **kwargs)

    monkeypatch.setattr(training, "fit_generator", spy)
    out = tmp_path / "split_1.npz"
    summary = G.run_generate_split(a, banks, {"seed": 3}, {**TINY, "max_cells": 5, "n_generated": 2}, 1,
                                   tmp_path / "model", out, progress=False)
    cells, _, _, _ = G.split_latents(a, {"seed": 3}, 1)
    test_rows = np.flatnonzero((cells.split == "test").to_numpy())
    train_rows = np.flatnonzero((cells.split == "train").to_numpy())
    assert not set(seen["values"]) & set(test_rows)  # no test cell's crop in either phase
    assert seen["paired"].sum() == len(train_rows)  # conditional fine-tuning: training cells only
    written = G.read_generated(out)
    assert written["generated"].shape == (2, 5, 1, 16, 16) and written["generated"].dtype == np.float16
    assert set(written["cells"]) <= set(a.obs_names[test_rows])
    assert summary["n_generated_cells"] == 5 and summary["n_test"] == len(test_rows)
    assert (tmp_path / "model" / "model.pt").exists()


def test_generated_cells_are_a_seeded_subsample():
    names = np.array([f"c{i}" for i in range(50)])
    first = G.generated_cells(names, 10, seed=1)
    assert len(first) == 10 and np.all(np.diff(first) > 0)
    assert np.array_equal(first, G.generated_cells(names, 10, seed=1))
    assert np.array_equal(G.generated_cells(names, 80, seed=1), np.arange(50))


def test_generated_crops_take_the_bank_geometry():
    generated = np.ones((2, 3, 1, 16, 16), dtype=np.float32)
    out = G.to_bank_geometry(generated, [1], bank_channels=2, bank_size=32)
    assert out.shape == (2, 3, 2, 32, 32)
    assert np.allclose(out[:, :, 1], 1.0, atol=1e-5) and not out[:, :, 0].any()


def test_the_generator_rules_read_only_the_keys_that_decide_the_split_and_its_latent():
    from cosmic.crossmodal.params import SPLIT_KEYS, split_config

    a = synthetic_cohort(n=120)
    full = {"seed": 3, "split_fractions": [0.6, 0.2, 0.2], "n_rna_pcs": 5, "n_hvg": 30, "hidden_dim": 7,
            "n_heads": 2, "moment_matching": False, "epochs": 3, "representation": "morph"}
    narrowed = split_config(full)
    assert set(narrowed) == {"seed", "split_fractions", "n_rna_pcs", "n_hvg"} and set(narrowed) <= set(SPLIT_KEYS)
    cells, latent, _, _ = G.split_latents(a, full, 1)
    same_cells, same_latent, _, _ = G.split_latents(a, narrowed, 1)
    assert cells.split.equals(same_cells.split)
    np.testing.assert_array_equal(latent, same_latent)
    # and the rules pass exactly that to the generator
    from pathlib import Path

    rules = (Path(__file__).resolve().parents[1] / "workflow" / "rules" / "generate.smk").read_text()
    assert rules.count('cosmic=split_config(config["cosmic"])') == 2 and 'cosmic=config["cosmic"]' not in rules
