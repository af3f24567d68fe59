"""The RNA -> nucleus image generator (cosmic.generate) at toy sizes: parameters and their errors,
output shapes, exact classifier-free guidance limits, seed reproducibility, save / load, exact
resumption after an interruption, and a learnability check on synthetic disks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmic.errors import CosmicInputError
from cosmic.generate import (ConditionalNucleusDiffusion, GenerateParams, fit_generator, generate,
                             generate_to_file, guide)

# 16 x 16 crops, a one-level U-Net (16 channels, 2 heads), 3 sampling steps.
TINY = dict(crop_size=16, block_out_channels=[16], attention_head_dim=8, layers_per_block=1, condition_tokens=2,
            cross_attention_dim=16, train_timesteps=100, pretrain_steps=3, finetune_steps=3, batch_size=4,
            warmup_steps=1, sampling_steps=3, checkpoint_every=2, device="cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine OpenMP threads contend (~6x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(n=24, size=20, d=3, seed=0):
    rng = np.random.default_rng(seed)
    crops = rng.gamma(2.0, 0.2, size=(n, 2, size, size)).astype(np.float16)
    conditions = rng.normal(size=(n, d)).astype(np.float32)
    paired = np.arange(n) < n * 2 // 3
    conditions[~paired] = np.nan  # unpaired rows may be anything
    return crops, conditions, paired


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("generator")
    crops, conditions, paired = _data()
    model = fit_generator(crops, conditions, paired, TINY, outdir=out, progress=False)
    return model, out, conditions[paired]


# ---------------------------------------------------------------------------------------
# parameters
def test_presets_fill_unset_values_and_keys_override_them():
    cpu = GenerateParams.from_config({})
    assert (cpu.preset, cpu.crop_size, cpu.channels, cpu.n_generated) == ("cpu", 32, (0,), 4)
    assert (cpu.condition_dropout, cpu.sampling_steps, cpu.block_out_channels) == (0.1, 20, (16, 32))
    gpu = GenerateParams.from_config({"preset": "gpu256", "batch_size": 7, "channels": [0, 1]})
    assert (gpu.crop_size, gpu.sampling_steps, gpu.batch_size, gpu.channels) == (256, 100, 7, (0, 1))
    assert GenerateParams.from_config({"preset": "gpu128"}).crop_size == 128
    assert GenerateParams.from_config(gpu.to_dict()) == gpu  # round trip through the config


def test_unknown_key_names_the_allowed_ones():
    with pytest.raises(CosmicInputError, match=r"unknown key\(s\) guidence_scale.*allowed keys:.*guidance_scale"):
        GenerateParams.from_config({"guidence_scale": 2})


@pytest.mark.parametrize("bad, match", [
    ({"preset": "huge"}, "preset must be one of cpu, gpu128, gpu256"),
    ({"crop_size": 0}, "crop_size must be an integer >= 1"),
    ({"crop_size": 30, "block_out_channels": [16, 32, 64]}, r"crop_size \(30\) must be divisible by 2\^2 = 4"),
    ({"channels": [0, 0]}, "channels must not repeat"),
    ({"channels": []}, "channels must be a non-empty list"),
    ({"block_out_channels": [16, 24], "attention_head_dim": 16}, "attention_head_dim .* must divide"),
    ({"condition_dropout": 1.5}, r"condition_dropout must be a number in \[0.0, 1.0\]"),
    ({"guidance_scale": -1}, "guidance_scale must be a number"),
    ({"lr": 0}, "lr must be a number"),
    ({"device": "tpu"}, "device must be one of auto, cpu, cuda"),
    ({"mixed_precision": "fp8"}, "mixed_precision must be one of"),
    ({"sampling_steps": 2000}, "sampling_steps .* at most train_timesteps"),
    ({"batch_size": 2.5}, "batch_size must be an integer"),
    ({"augment": "yes"}, "augment must be true or false"),
])
def test_bad_values_raise_a_clear_error(bad, match):
    with pytest.raises(CosmicInputError, match=match):
        GenerateParams.from_config(bad)


def test_bad_inputs_raise_a_clear_error():
    crops, conditions, paired = _data()
    with pytest.raises(CosmicInputError, match="one row per crop"):
        fit_generator(crops, conditions[:5], paired, TINY, progress=False)
    with pytest.raises(CosmicInputError, match="boolean mask"):
        fit_generator(crops, conditions, paired.astype(int), TINY, progress=False)
    with pytest.raises(CosmicInputError, match="2 channel.*generate.channels"):
        fit_generator(crops, conditions, paired, {**TINY, "channels": [2]}, progress=False)
    with pytest.raises(CosmicInputError, match="NaN"):
        fit_generator(crops, conditions, np.ones(len(paired), bool), TINY, progress=False)
    with pytest.raises(CosmicInputError, match="no paired crops"):
        fit_generator(crops, conditions, np.zeros(len(paired), bool), TINY, progress=False)
    with pytest.raises(CosmicInputError, match="N x C x S x S"):
        fit_generator(crops[:, 0], conditions, paired, TINY, progress=False)


# ---------------------------------------------------------------------------------------
# sampling
def test_generated_crops_have_the_documented_shape_and_units(fitted):
    model, out, cond = fitted
    x = generate(model, cond[:3], n_per_cell=2, seed=0, progress=False)
    assert x.shape == (2, 3, 1, 16, 16) and x.dtype == np.float32
    lo, hi = float(model.scale_lo), float(model.scale_hi)
    assert lo < hi and x.min() >= lo - 1e-5 and x.max() <= hi + 1e-5
    assert model.info["n_paired"] == 16 and model.info["n_crops"] == 24


def test_same_seed_same_images_other_seed_other_images_any_batch_size(fitted):
    model, out, cond = fitted
    a = generate(model, cond[:3], n_per_cell=2, seed=5, progress=False)
    b = generate(model, cond[:3], n_per_cell=2, seed=5, progress=False)
    c = generate(model, cond[:3], n_per_cell=2, seed=6, progress=False)
    d = generate(model, cond[:3], n_per_cell=2, seed=5, batch_size=4, progress=False)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-3
    np.testing.assert_allclose(a, d, atol=1e-5)  # the starting noise is per image, not per batch
    assert np.abs(a[0] - a[1]).mean() > 1e-3  # replicates of one cell differ


def test_guidance_zero_is_the_unconditional_model_and_one_the_conditional(fitted):
    model, out, cond = fitted
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 16, 16, generator=g)
    t = torch.tensor([10, 50, 90])
    c = torch.from_numpy(cond[:3])
    with torch.no_grad():
        uncond, conditional = model(x, t, None), model(x, t, c)
        dropped = model(x, t, c, drop=torch.ones(3, dtype=torch.bool))
    assert torch.equal(model.predict(x, t, c, guidance_scale=0.0), uncond)
    assert torch.equal(model.predict(x, t, c, guidance_scale=1.0), conditional)
    assert torch.equal(dropped, uncond)  # a dropped condition is the null condition
    assert torch.equal(guide(uncond, conditional, 0.0), uncond)
    assert not torch.equal(uncond, conditional)
    w0 = generate(model, cond[:3], n_per_cell=1, guidance_scale=0.0, progress=False)
    w0_other = generate(model, cond[3:6], n_per_cell=1, guidance_scale=0.0, progress=False)
    w2 = generate(model, cond[:3], n_per_cell=1, guidance_scale=2.0, progress=False)
    np.testing.assert_array_equal(w0, w0_other)  # unconditional: the condition is ignored
    assert np.abs(w0 - w2).mean() > 1e-4


def test_saved_model_loads_and_generates_the_same_crops(fitted, tmp_path):
    model, out, cond = fitted
    loaded = ConditionalNucleusDiffusion.load(out / "model.pt", device="cpu")
    a = generate(model, cond[:2], n_per_cell=1, progress=False)
    np.testing.assert_array_equal(a, generate(loaded, cond[:2], n_per_cell=1, progress=False))
    path = generate_to_file(loaded, cond[:2], tmp_path / "gen.npy", n_per_cell=1, progress=False)
    np.testing.assert_array_equal(a, np.load(path))
    with pytest.raises(CosmicInputError, match="not found"):
        ConditionalNucleusDiffusion.load(tmp_path / "missing.pt")
    with pytest.raises(CosmicInputError, match=r"M x 3 array"):
        generate(model, cond[:2, :2], progress=False)


# ---------------------------------------------------------------------------------------
# training
class _Interrupt(Exception):
    pass


def _interrupt_at(phase, step):
    def callback(ph, st, loss):
        if (ph, st) == (phase, step):
            raise _Interrupt
    return callback


def test_resuming_after_interruptions_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    crops, conditions, paired = _data(n=16)
    params = {**TINY, "pretrain_steps": 5, "finetune_steps": 4, "checkpoint_every": 3}
    whole = fit_generator(crops, conditions, paired, params, outdir=tmp_path / "a", progress=False)
    # checkpoints at pretrain 3, 5 (end), finetune 3, 4 (end): each interruption redoes steps
    for phase, step in (("pretrain", 4), ("finetune", 2)):
        with pytest.raises(_Interrupt):
            fit_generator(crops, conditions, paired, params, outdir=tmp_path / "b", progress=False,
                          callback=_interrupt_at(phase, step))
    seen = []
    resumed = fit_generator(crops, conditions, paired, params, outdir=tmp_path / "b", progress=False,
                            callback=lambda ph, st, loss: seen.append((ph, st)))
    assert seen == [("finetune", s) for s in (1, 2, 3, 4)]
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = (tmp_path / "b" / "train_log.tsv").read_text().splitlines()
    assert [int(line.split("\t")[0]) for line in log[1:]] == list(range(1, 10))
    # other parameters: the checkpoint's fingerprint differs, training starts over
    seen.clear()
    fit_generator(crops, conditions, paired, {**params, "pretrain_steps": 1, "finetune_steps": 0},
                  outdir=tmp_path / "b", progress=False, callback=lambda ph, st, loss: seen.append((ph, st)))
    assert seen == [("pretrain", 1)]


def test_a_finished_run_is_reused_when_snakemake_deleted_its_outputs(tmp_path):
    """A rerun (e.g. after an unrelated parameter of the rule changed) finds the finished checkpoint:
    nothing is retrained, and every declared output, the full training log included, is written again."""
    crops, conditions, paired = _data(n=16)
    params = {**TINY, "pretrain_steps": 2, "finetune_steps": 2}
    first = fit_generator(crops, conditions, paired, params, outdir=tmp_path, progress=False)
    log = (tmp_path / "train_log.tsv").read_text()
    for name in ("model.pt", "train_log.tsv", "summary.json"):  # what Snakemake removes before a rerun
        (tmp_path / name).unlink()
    seen = []
    again = fit_generator(crops, conditions, paired, params, outdir=tmp_path, progress=False,
                          callback=lambda ph, st, loss: seen.append((ph, st)))
    assert seen == []
    assert all((tmp_path / name).exists() for name in ("model.pt", "train_log.tsv", "summary.json"))
    assert (tmp_path / "train_log.tsv").read_text() == log
    assert [int(line.split("\t")[0]) for line in log.splitlines()[1:]] == [1, 2, 3, 4]
    a, b = first.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_made_on_other_training_cells_is_not_resumed(tmp_path):
    """Another split with the same sizes (other cells paired, other latents) trains from the start:
    resuming would hand this split a model that saw its test cells."""
    crops, conditions, paired = _data(n=16)
    params = {**TINY, "pretrain_steps": 2, "finetune_steps": 2}
    fit_generator(crops, conditions, paired, params, outdir=tmp_path, progress=False)
    other = np.roll(paired, 3)
    other_conditions = np.roll(conditions, 3, axis=0)
    assert other.sum() == paired.sum() and not np.array_equal(other, paired)
    seen = []
    fit_generator(crops, other_conditions, other, params, outdir=tmp_path, progress=False,
                  callback=lambda ph, st, loss: seen.append((ph, st)))
    assert seen == [("pretrain", 1), ("pretrain", 2), ("finetune", 1), ("finetune", 2)]
    # the same cells with other latents (e.g. another RNA embedding) start over too
    seen.clear()
    fit_generator(crops, other_conditions + 1.0, other, params, outdir=tmp_path, progress=False,
                  callback=lambda ph, st, loss: seen.append((ph, st)))
    assert seen[0] == ("pretrain", 1)


def _disks(n, size, rng):
    r = rng.uniform(2, 6, n)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    inside = np.hypot(yy, xx)[None] <= r[:, None, None]
    return inside.astype(np.float32)[:, None], r[:, None].astype(np.float32)


def test_generated_nuclei_follow_the_condition_after_brief_training():
    """Disks whose radius is the condition: the mean brightness of generated crops grows with it."""
    crops, radius = _disks(512, 16, np.random.default_rng(0))
    params = {**TINY, "cross_attention_dim": 32, "pretrain_steps": 0, "finetune_steps": 60, "batch_size": 16,
              "lr": 3e-3, "warmup_steps": 5, "ema_decay": 0.9, "sampling_steps": 10}
    model = fit_generator(crops, radius, np.ones(len(crops), bool), params, progress=False)
    x = generate(model, np.array([[2.5], [5.5]], np.float32), n_per_cell=8, guidance_scale=2.0, progress=False)
    small, large = x[:, 0].mean(), x[:, 1].mean()  # true: 0.08 and 0.37
    assert large - small > 0.08
