"""Nuclei foundation model: shapes, streaming data, training, resume, DDP (gloo), embeddings,
probes. Everything runs on CPU on tiny synthetic crop banks."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cosmic import foundation as fm
from cosmic.errors import CosmicInputError
from cosmic.foundation import nets as fm_nets

REPO = Path(__file__).resolve().parents[1]

# a model small enough to train in seconds on 16 x 16 crops
TINY = dict(embed_dim=32, depth=1, heads=2, patch_size=4, decoder_dim=32, decoder_depth=1,
            batch_size=16, lr=3e-3, warmup_steps=2, checkpoint_every=4, device="cpu", num_workers=0)


def blob_crops(n, C=2, S=16, seed=0):
    """Gaussian 'nuclei' of random radius and brightness (a learnable structure)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:S, 0:S] - (S - 1) / 2
    r = rng.uniform(2, 6, n)
    amp = rng.uniform(0.5, 1.5, n)
    img = amp[:, None, None] * np.exp(-(yy**2 + xx**2)[None] / (2 * r[:, None, None] ** 2))
    out = np.stack([img * (c + 1) / C for c in range(C)], axis=1)
    out += rng.normal(0, 0.02, out.shape)
    return out.astype(np.float16), r


def write_bank(path, arr, radius=None):
    """Save a crop bank; with ``radius``, also its nuclei table (the ``features`` objective's
    targets: label-free properties of each blob) as ``nuclei.parquet`` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    if radius is not None:
        write_table(path.with_name("nuclei.parquet"), arr, radius)
    return str(path)


def write_table(path, crops, radius):
    n = len(crops)
    pd.DataFrame({"crop_index": np.arange(n), "morph_radius": radius,
                  "morph_dna_integrated": crops[:, 0].astype(np.float64).sum(axis=(1, 2))}).to_parquet(path)
    return str(path)


@pytest.fixture
def banks(tmp_path):
    a, ra = blob_crops(40, seed=1)
    b, rb = blob_crops(24, seed=2)
    return [write_bank(tmp_path / "s1" / "crops.npy", a, ra), write_bank(tmp_path / "s2" / "crops.npy", b, rb)]


# ---------------------------------------------------------------------------------------
# parameters
def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(CosmicInputError, match="unknown key"):
        fm.FoundationParams.from_config({"preset": "tiny", "embedding_dim": 64})
    for bad in ({"objective": "simclr"}, {"preset": "huge"}, {"mask_ratio": 1.0}, {"amp": "yes"},
                {"embed_dim": 30, "heads": 4}, {"batch_size": 0}, {"lr": -1}, {"device": "tpu"}):
        with pytest.raises(CosmicInputError):
            fm.FoundationParams.from_config(bad)


def test_presets_fill_unset_values_and_overrides_win():
    p = fm.FoundationParams.from_config({"preset": "small", "depth": 2})
    assert p.embed_dim == fm.PRESETS["small"]["embed_dim"] and p.depth == 2
    assert fm.FoundationParams().objective == fm.DEFAULT_OBJECTIVE
    d = fm.FoundationParams.from_config({}).to_dict()
    assert all(v is not None for k, v in d.items() if k not in ("num_workers", "time_limit_s"))
    assert fm.FoundationParams.from_config(d) == fm.FoundationParams()


# ---------------------------------------------------------------------------------------
# model
@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
@pytest.mark.parametrize("objective", fm.OBJECTIVES)
def test_model_shapes(preset, objective):
    p = fm.FoundationParams(preset=preset, objective=objective)
    m = fm.build_model(p, 2, 64).eval()
    x = torch.rand(2, 2, 64, 64)
    with torch.no_grad():
        z = m.embed(x)
        assert z.shape == (2, m.embedding_dim) and m.embedding_dim == 2 * p.embed_dim  # center_stats
        assert m.decode(z).shape == x.shape
        if preset == "tiny":
            m.train()
            loss, parts = m(x, x.flip(-1), targets=torch.zeros(2, m.n_features))
            assert loss.ndim == 0 and torch.isfinite(loss) and "recon" in parts


def test_patchify_round_trip_and_bad_patch_size():
    m = fm.build_model(fm.FoundationParams(**TINY), 3, 16)
    x = torch.rand(2, 3, 16, 16)
    t = m.patchify(x)
    assert t.shape == (2, 16, 3 * 16)
    assert torch.equal(m.unpatchify(t), x)
    with pytest.raises(CosmicInputError, match="patch_size"):
        fm.build_model(fm.FoundationParams(**TINY), 2, 18)
    with pytest.raises(CosmicInputError, match="power of 2"):
        fm.FoundationParams(**dict(TINY, patch_size=6), encoder="cnn")
    with pytest.raises(CosmicInputError, match="power of 2"):
        fm.FoundationParams(**dict(TINY, patch_size=6), encoder="vit", decoder="conv")
    assert fm.FoundationParams(**dict(TINY, patch_size=6), encoder="vit", decoder="tokens").patch_size == 6
    with pytest.raises(CosmicInputError, match="decoder must be one of"):
        fm.FoundationParams(decoder="unet")
    with pytest.raises(CosmicInputError, match="needs encoder 'vit'"):
        fm.FoundationParams(objective="mae", encoder="cnn")
    assert fm.FoundationParams(objective="mae").encoder == "vit"  # the tiny preset's MAE keeps its ViT
    assert fm.FoundationParams(objective="features").decoder == "conv"
    assert fm.FoundationParams(objective="vicreg").decoder == "tokens"  # as measured before the conv decoder


def test_conv_decoder_renders_whole_crops_from_the_embedding():
    m = fm.build_model(fm.FoundationParams(**TINY, decoder="conv"), 2, 16).eval()
    assert isinstance(m.image_head, fm.ConvDecoder)
    z = torch.randn(3, m.embedding_dim)
    with torch.no_grad():
        img = m.decode(z)
        assert img.shape == (3, 2, 16, 16) and torch.isfinite(img).all()
        assert not torch.allclose(img[0], img[1])  # the image follows the embedding
        assert torch.allclose(m.decode(z[:1]), img[:1], atol=1e-5)  # and only its own embedding (eval mode)


def test_cnn_encoder_gives_one_token_per_patch_block():
    m = fm.build_model(fm.FoundationParams(**TINY, encoder="cnn"), 2, 16).eval()
    x = torch.rand(3, 2, 16, 16)
    with torch.no_grad():
        t = m.encode_tokens(x)
        assert t.shape == (3, 16, TINY["embed_dim"]) and (t >= 0).all()  # 4 x 4 grid, after ReLU
        # a change confined to the top-left corner leaves the far corner's token unchanged
        y = x.clone()
        y[:, :, :2, :2] += 5
        assert not torch.allclose(m.encode_tokens(y)[:, 0], t[:, 0])
        assert torch.allclose(m.encode_tokens(y)[:, -1], t[:, -1])


def test_augment_keeps_shape_and_is_seeded():
    x = torch.rand(8, 2, 16, 16)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = fm.augment(x, g1), fm.augment(x, g2)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    # dihedral part alone preserves the pixel multiset
    c = fm.augment(x, torch.Generator().manual_seed(3), scale=0, gain_sd=0, offset_sd=0, shift=0, noise_sd=0)
    assert torch.allclose(c.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    # whole-pixel shifts move content without resampling it; zeros come in at the border
    d = fm.augment(x, torch.Generator().manual_seed(4), scale=0, gain_sd=0, offset_sd=0, shift=2, noise_sd=0)
    assert d.shape == x.shape and d.is_contiguous()
    xs = set(x.flatten().tolist())
    assert all(v in xs or v == 0 for v in d.flatten().tolist())
    assert not torch.equal(d, fm.augment(x, torch.Generator().manual_seed(4), scale=0, gain_sd=0, offset_sd=0, shift=0))
    # nuclei-preserving defaults: no scale or intensity change, so DNA content survives
    e = fm.augment(x, torch.Generator().manual_seed(5), **dict(fm.AUGMENT, shift=0, noise_sd=0))
    assert torch.allclose(e.sum(dim=(2, 3)), x.sum(dim=(2, 3)), atol=1e-4)


def test_center_pool_reads_the_central_window():
    w = fm_nets._pool_weights("center", 8).reshape(8, 8)
    assert torch.isclose(w.sum(), torch.tensor(1.0)) and (w[2:6, 2:6] > 0).all() and w[:2].eq(0).all()
    assert torch.allclose(fm_nets._pool_weights("mean", 4), torch.full((16,), 1 / 16))
    assert (fm_nets._pool_weights("center", 3).reshape(3, 3) > 0).sum() == 4  # ceil(3/2)^2 tokens
    m = fm.build_model(fm.FoundationParams(**TINY, pool="center"), 2, 16).eval()
    x = torch.rand(3, 2, 16, 16)
    with torch.no_grad():
        t = m.encode_tokens(x).reshape(3, 4, 4, -1)
        assert torch.allclose(m.embed(x), t[:, 1:3, 1:3].mean(dim=(1, 2)), atol=1e-6)
        # MAE: only the visible tokens of the window; none visible -> mean of the visible tokens
        tok = torch.rand(2, 3, 5)
        keep = torch.tensor([[5, 6, 0], [0, 3, 12]])
        z = m.pool(tok, keep)
        assert torch.allclose(z[0], tok[0, :2].mean(0)) and torch.allclose(z[1], tok[1].mean(0))
    with pytest.raises(CosmicInputError, match="pool"):
        fm.FoundationParams(pool="cls")


def test_statistics_pooling_appends_the_window_sd():
    m = fm.build_model(fm.FoundationParams(**TINY, pool="center_stats"), 2, 16).eval()
    assert m.embedding_dim == 2 * TINY["embed_dim"]
    x = torch.rand(3, 2, 16, 16)
    with torch.no_grad():
        win = m.encode_tokens(x).reshape(3, 4, 4, -1)[:, 1:3, 1:3].reshape(3, 4, -1)
        z = m.embed(x)
        D = TINY["embed_dim"]
        assert torch.allclose(z[:, :D], win.mean(1), atol=1e-5)
        assert torch.allclose(z[:, D:], win.var(1, unbiased=False).add(1e-6).sqrt(), atol=1e-5)
        assert m.decode(z).shape == x.shape
        # MAE: statistics of the visible window tokens only
        tok = torch.rand(2, 3, D)
        keep = torch.tensor([[5, 6, 0], [0, 3, 12]])
        zk = m.pool(tok, keep)
        assert torch.allclose(zk[0, :D], tok[0, :2].mean(0), atol=1e-6)
        assert torch.allclose(zk[0, D:], tok[0, :2].var(0, unbiased=False).add(1e-6).sqrt(), atol=1e-6)


# ---------------------------------------------------------------------------------------
# data
def test_dataset_streams_from_memmap_in_order(banks):
    ds = fm.CropBankDataset(banks)
    assert len(ds) == 64 and ds.shape == (2, 16, 16)
    assert isinstance(ds.bank(0), np.memmap) and isinstance(ds.bank(1), np.memmap)
    full = np.concatenate([np.load(b) for b in banks]).astype(np.float32)
    idx = [63, 0, 41, 39, 40, 5, 5]
    np.testing.assert_array_equal(ds.__getitems__(idx).numpy(), full[idx])
    np.testing.assert_array_equal(ds[41].numpy(), full[41])
    # workers get the paths, never a loaded bank
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._banks == {}


def test_dataset_rejects_mismatched_banks(tmp_path, banks):
    other = write_bank(tmp_path / "s3" / "crops.npy", np.zeros((3, 1, 16, 16), np.float16))
    with pytest.raises(CosmicInputError, match="differ"):
        fm.CropBankDataset(banks + [other])


def test_feature_targets_are_standardised_in_crop_bank_order(tmp_path):
    crops = np.zeros((5, 2, 8, 8), np.float16)
    bank = write_bank(tmp_path / "s" / "crops.npy", crops)
    table = pd.DataFrame({"crop_index": [4, 0, 1, 2, 3], "label": range(5),
                          "morph_area": [50.0, 10.0, 20.0, 30.0, np.nan],  # crop 0 has area 10
                          "morph_constant": 7.0, "morph_outlier": [1e6, 0, 0, 0, 0], "not_a_feature": 1.0})
    table.to_parquet(tmp_path / "s" / "nuclei.parquet")
    info = fm.write_feature_targets([tmp_path / "s" / "nuclei.parquet"], [bank], tmp_path / "t.npy", clip=1.5)
    assert info["columns"] == ["morph_area", "morph_constant", "morph_outlier"]
    t = np.load(tmp_path / "t.npy")
    assert t.dtype == np.float32 and t.shape == (5, 3)
    area = np.array([10.0, 20.0, 30.0, np.nan, 50.0])  # rows sorted by crop_index
    z = (area - np.nanmean(area)) / np.nanstd(area)
    np.testing.assert_allclose(t[:, 0], np.nan_to_num(np.clip(z, -1.5, 1.5)), rtol=1e-5)
    assert t[3, 0] == 0  # missing -> the mean
    assert np.all(t[:, 1] == 0)  # a constant column carries nothing
    assert t[:, 2].max() == pytest.approx(1.5)  # outliers clipped
    assert info["mean"][0] == pytest.approx(27.5)


def test_feature_targets_bad_tables_are_clear_errors(tmp_path):
    crops = np.zeros((3, 1, 8, 8), np.float16)
    a = write_bank(tmp_path / "a" / "crops.npy", crops)
    b = write_bank(tmp_path / "b" / "crops.npy", crops)
    with pytest.raises(CosmicInputError, match=r"a/nuclei.parquet'.*not found.*nuclei step"):
        fm.write_feature_targets([tmp_path / "a" / "nuclei.parquet"], [a], tmp_path / "t.npy")
    pd.DataFrame({"morph_area": [1.0, 2.0]}).to_parquet(tmp_path / "a" / "nuclei.parquet")
    with pytest.raises(CosmicInputError, match="2 nuclei, but its crop bank .* holds 3 crops"):
        fm.write_feature_targets([tmp_path / "a" / "nuclei.parquet"], [a], tmp_path / "t.npy")
    pd.DataFrame({"morph_area": [1.0, 2.0, 3.0]}).to_parquet(tmp_path / "a" / "nuclei.parquet")
    pd.DataFrame({"morph_perimeter": [1.0, 2.0, 3.0]}).to_parquet(tmp_path / "b" / "nuclei.parquet")
    with pytest.raises(CosmicInputError, match="missing: morph_area; extra: morph_perimeter"):
        fm.write_feature_targets([tmp_path / "a" / "nuclei.parquet", tmp_path / "b" / "nuclei.parquet"], [a, b],
                                 tmp_path / "t.npy")
    with pytest.raises(CosmicInputError, match="1 nuclei tables for 2 crop banks"):
        fm.write_feature_targets([tmp_path / "a" / "nuclei.parquet"], [a, b], tmp_path / "t.npy")
    # training without tables beside the banks says what is missing and how to proceed
    lone = write_bank(tmp_path / "c" / "crops.npy", crops)
    with pytest.raises(CosmicInputError, match="objective to vicreg or mae"):
        fm.train([lone], tmp_path / "out", TINY, progress=False)
    assert not (tmp_path / "t.npy").exists()  # failed writes leave nothing behind


def test_features_objective_learns_the_region_properties(tmp_path):
    crops, radius = blob_crops(256, seed=5)
    bank = write_bank(tmp_path / "c.npy", crops, radius)
    fm.train([bank], tmp_path / "out", dict(TINY, max_steps=80, checkpoint_every=100), progress=False)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["feature_targets"]["columns"] == ["morph_radius", "morph_dna_integrated"]
    m = fm.load_model(tmp_path / "out" / "model.pt", device="cpu")
    assert m.n_features == 2
    x = torch.from_numpy(crops.astype(np.float32))
    with torch.no_grad():
        pred = m.feature_head(m.embed(x)).numpy()
    target = np.load(tmp_path / "out" / "feature_targets.npy")
    r2 = 1 - ((pred - target) ** 2).mean(0) / target.var(0)
    assert (r2 > 0.8).all(), r2  # the blob radius and brightness are read from the embedding


def test_step_sampler_is_a_function_of_step_and_shards_by_rank():
    s = fm.StepBatchSampler(50, 8, seed=3, start_step=0, end_step=20)
    batches = list(s)
    resumed = list(fm.StepBatchSampler(50, 8, seed=3, start_step=7, end_step=20))
    assert batches[7:] == resumed
    first_epoch = sum(batches[:7], [])[:50]
    assert sorted(first_epoch) == list(range(50))  # each epoch is a permutation
    r0 = fm.StepBatchSampler(50, 4, 3, 0, 5, rank=0, world_size=2)
    r1 = fm.StepBatchSampler(50, 4, 3, 0, 5, rank=1, world_size=2)
    for step in range(5):
        both = r0.batch(step) + r1.batch(step)
        assert sorted(both) == sorted(batches[step])


# ---------------------------------------------------------------------------------------
# training
def test_empty_corpus_is_a_clear_error(tmp_path):
    empty = write_bank(tmp_path / "e" / "crops.npy", np.zeros((0, 2, 16, 16), np.float16))
    with pytest.raises(CosmicInputError, match="corpus is empty"):
        fm.train([empty, empty], tmp_path / "out", TINY, progress=False)
    with pytest.raises(CosmicInputError, match="not found"):
        fm.train([tmp_path / "missing.npy"], tmp_path / "out", TINY, progress=False)


@pytest.mark.parametrize("objective", fm.OBJECTIVES)
def test_training_loss_decreases(tmp_path, objective):
    crops, radius = blob_crops(256, seed=5)
    bank = write_bank(tmp_path / "c.npy", crops, radius)
    params = dict(TINY, objective=objective, max_steps=60, checkpoint_every=100)
    summary = fm.train([bank], tmp_path / "out", params, progress=False)
    log = pd.read_csv(tmp_path / "out" / "train_log.tsv", sep="\t")
    assert list(log["step"]) == list(range(1, 61))
    assert {"loss", "lr", "crops_per_s"} <= set(log.columns)
    assert log["loss"].tail(10).mean() < 0.8 * log["loss"].head(10).mean()
    assert summary["steps"] == 60
    for f in ("model.pt", "last.pt", "config.json"):
        assert (tmp_path / "out" / f).exists()
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["input_shape"] == [2, 16] and cfg["params"]["objective"] == objective
    assert not list((tmp_path / "out").glob(".*tmp*"))  # atomic writes left nothing behind


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, banks):
    params = dict(TINY, max_steps=12, checkpoint_every=4)
    fm.train(banks, tmp_path / "a", params, progress=False)
    # "killed" after step 6: last.pt holds step 6 (and step 4 before it), no model.pt
    s1 = fm.train(banks, tmp_path / "b", params, progress=False, stop_after=6)
    assert s1["stopped_after"] == 6 and not (tmp_path / "b" / "model.pt").exists()
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["step"] == 6
    s2 = fm.train(banks, tmp_path / "b", params, progress=False)
    assert s2["start_step"] == 6 and s2["steps"] == 12
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:  # bitwise equal on CPU: batches, augmentations and masks are functions of the step
        assert torch.equal(a[k], b[k]), k
    log = pd.read_csv(tmp_path / "b" / "train_log.tsv", sep="\t")
    assert list(log["step"]) == list(range(1, 13))

    # a larger max_steps on a finished run continues from its checkpoint
    s3 = fm.train(banks, tmp_path / "b", dict(params, max_steps=16), progress=False)
    assert s3["start_step"] == 12 and s3["steps"] == 16
    # an incompatible architecture is refused, not silently mixed
    with pytest.raises(CosmicInputError, match="another architecture"):
        fm.train(banks, tmp_path / "b", dict(params, max_steps=20, embed_dim=64), progress=False)
    with pytest.raises(CosmicInputError, match="pool"):
        fm.train(banks, tmp_path / "b", dict(params, max_steps=20, pool="mean"), progress=False)
    # resume=False starts over
    s4 = fm.train(banks, tmp_path / "b", params, progress=False, resume=False)
    assert s4["start_step"] == 0


def test_a_finished_run_retrains_when_the_crops_change(tmp_path, banks):
    """A new sample (or re-made crops) reruns pretrain: resuming the finished checkpoint would train
    0 steps on them and hand back the old model; an unchanged corpus still resumes."""
    params = dict(TINY, max_steps=8, checkpoint_every=4)
    fm.train(banks, tmp_path / "out", params, progress=False)
    same = fm.train(banks, tmp_path / "out", params, progress=False)
    assert same["start_step"] == 8  # nothing to redo
    c, rc = blob_crops(16, seed=3)
    added = fm.train([*banks, write_bank(tmp_path / "s3" / "crops.npy", c, rc)], tmp_path / "out", params,
                     progress=False)
    assert added["start_step"] == 0 and added["steps"] == 8 and added["n_crops"] == 40 + 24 + 16
    log = pd.read_csv(tmp_path / "out" / "train_log.tsv", sep="\t")
    assert list(log["step"]) == list(range(1, 9))  # the old run's rows were dropped
    # the same number of crops with other pixels (re-segmented) starts over too
    first = np.load(banks[0])
    np.save(banks[0], (first * 1.5).astype(first.dtype))
    fm.train(banks, tmp_path / "out2", params, progress=False, stop_after=4)  # on the re-made crops
    np.save(banks[0], first)
    assert fm.train(banks, tmp_path / "out2", params, progress=False)["start_step"] == 0


def test_time_limit_stops_and_writes_model(tmp_path, banks):
    s = fm.train(banks, tmp_path / "t", dict(TINY, max_steps=100_000, time_limit_s=1.0), progress=False)
    assert s["stopped_by_time_limit"] and s["steps"] < 100_000
    assert (tmp_path / "t" / "model.pt").exists()


def test_distributed_gloo_two_processes(tmp_path, banks):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    cmd = ([torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"])
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"foundation": dict(TINY, max_steps=6, batch_size=8)}))
    env = dict(os.environ, PYTHONPATH=str(REPO / "workflow" / "scripts"), OMP_NUM_THREADS="1")
    out = tmp_path / "ddp"
    r = subprocess.run(cmd + ["--standalone", "--nproc_per_node=2", "-m", "cosmic.foundation", "train",
                              "--crops", *banks, "--outdir", str(out), "--config", str(cfg), "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    conf = json.loads((out / "config.json").read_text())
    assert conf["world_size"] == 2 and conf["summary"]["steps"] == 6
    log = pd.read_csv(out / "train_log.tsv", sep="\t")
    assert list(log["step"]) == list(range(1, 7))  # only rank 0 logs
    ck = torch.load(out / "last.pt", weights_only=False)
    assert ck["world_size"] == 2 and set(ck["rng"]) == {0, 1}
    m = fm.load_model(out / "model.pt", device="cpu")
    assert fm.embed_crops(m, banks[0]).shape == (40, 2 * TINY["embed_dim"])


# ---------------------------------------------------------------------------------------
# inference
@pytest.fixture
def trained(tmp_path, banks):
    fm.train(banks, tmp_path / "m", dict(TINY, max_steps=4), progress=False)
    return fm.load_model(tmp_path / "m" / "model.pt", device="cpu")


def test_embeddings_order_shape_and_empty_bank(tmp_path, trained, banks):
    emb = fm.embed_crops(trained, banks[0], batch_size=7)
    assert emb.shape == (40, 2 * TINY["embed_dim"]) and emb.dtype == np.float32
    rev = write_bank(tmp_path / "rev.npy", np.load(banks[0])[::-1].copy())
    np.testing.assert_allclose(fm.embed_crops(trained, rev, batch_size=16)[::-1], emb, rtol=1e-4, atol=1e-5)
    empty = write_bank(tmp_path / "empty.npy", np.zeros((0, 2, 16, 16), np.float16))
    assert fm.embed_crops(trained, empty).shape == (0, 2 * TINY["embed_dim"])
    wrong = write_bank(tmp_path / "wrong.npy", np.zeros((2, 2, 32, 32), np.float16))
    with pytest.raises(CosmicInputError, match="do not match"):
        fm.embed_crops(trained, wrong)
    dec = fm.decode_embeddings(trained, emb[:5])
    assert dec.shape == (5, 2, 16, 16) and dec.dtype == np.float32
    assert trained.input_shape == (2, 16)


def test_random_encoder_embeddings_follow_the_seed(banks):
    p = fm.FoundationParams(**TINY)
    a = fm.random_encoder_embeddings(banks, p, seed=1)
    b = fm.random_encoder_embeddings(banks, p, seed=1)
    c = fm.random_encoder_embeddings(banks, p, seed=2)
    assert a.shape == (64, 2 * TINY["embed_dim"])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_models_saved_before_pool_existed_load_with_mean_pooling(tmp_path):
    made_then = fm.build_model(fm.FoundationParams(**TINY, pool="mean", objective="vicreg", encoder="vit",
                                                   decoder="tokens"), 2, 16)
    params = made_then.params.to_dict()
    del params["pool"], params["encoder"], params["decoder"]  # none existed then: a ViT, mean pooling, tokens
    torch.save({"format": fm.FORMAT, "params": params, "input_shape": [2, 16],
                "state_dict": made_then.state_dict()}, tmp_path / "old.pt")
    old = fm.load_model(tmp_path / "old.pt", device="cpu")
    assert old.params.pool == "mean" and old.params.encoder == "vit" and old.params.decoder == "tokens"
    with torch.no_grad():
        x = torch.rand(2, 2, 16, 16)
        assert torch.allclose(old.embed(x), old.encode_tokens(x).mean(dim=1), atol=1e-6)


def test_cli_embed(tmp_path, trained, banks):
    torch.save({"format": fm.FORMAT, "params": trained.params.to_dict(), "input_shape": [2, 16],
                "n_features": trained.n_features, "state_dict": trained.state_dict()}, tmp_path / "model.pt")
    out = tmp_path / "emb.npy"
    assert fm.main(["embed", "--model", str(tmp_path / "model.pt"), "--crops", banks[1], "--out", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), fm.embed_crops(trained, banks[1]), rtol=1e-5, atol=1e-6)


def test_plot_reconstructions(tmp_path, trained, banks):
    path = tmp_path / "fig" / "recon.png"
    fm.plot_reconstructions(trained, np.load(banks[0], mmap_mode="r")[:10], path, n=4)
    assert path.stat().st_size > 1000


# ---------------------------------------------------------------------------------------
# evaluation
def test_linear_probe_finds_planted_signal_not_noise():
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, 10))
    X_signal = X.copy()
    X_signal[:, 0] += 3.0 * y
    good = fm.linear_probe(X_signal, y, seed=0)
    noise = fm.linear_probe(X, y, seed=0)
    assert good["accuracy"] > 0.85 and good["balanced_accuracy"] > 0.85
    assert noise["accuracy"] < 0.45
    assert good["n_test"] == 180 and good["n_train"] == 420
    table = fm.evaluate_representations({"signal": X_signal, "noise": X},
                                        {"y": y, "y_str": np.array(["a", "b", "c"])[y]}, seed=0)
    assert len(table) == 4 and {"representation", "target", "accuracy", "balanced_accuracy"} <= set(table.columns)
    # missing labels and singleton classes are dropped
    y2 = np.array(["a", "b"] * 50 + [None, "lonely"], dtype=object)
    r = fm.linear_probe(rng.normal(size=(102, 3)), y2, seed=0)
    assert r["n_classes"] == 2 and r["n_train"] + r["n_test"] == 100


def test_linear_probe_chooses_its_regularisation_without_the_test_split():
    """Many noise dimensions beside one informative one: inner cross-validation on the training
    split picks a stronger regularisation than C = 1, and does no worse on the held-out nuclei."""
    rng = np.random.default_rng(1)
    n = 300
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, 300))
    X[:, 0] += 1.5 * y
    tuned = fm.linear_probe(X, y, seed=0)
    fixed = fm.linear_probe(X, y, seed=0, Cs=[1.0])
    assert tuned["C"] in fm.PROBE_CS and tuned["C"] < 1.0 and fixed["C"] == 1.0
    assert tuned["accuracy"] > fixed["accuracy"]
