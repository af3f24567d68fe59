"""Parameters of the RNA -> nucleus image generator: :class:`GenerateParams` (the ``generate:``
config block), the presets that fill its unset values, and the checkpoint format tag."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np

from ..errors import CosmicInputError, require_flag

FORMAT = "cosmic-generate/1"
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp16", "off")

# Architecture, optimisation and sampling defaults per preset.
#
# ``cpu`` makes the demo (~2,100 nuclei, ~300 test cells x 4 generated crops) feasible on 2 CPU
# cores: 32 x 32 crops and a two-level U-Net (16 -> 32 channels, attention with 1 / 2 heads at
# 16 x 16 and in the middle block; 0.25 M parameters, 0.16 GFLOP per image and forward pass).
# ``benchmarks/generate.py`` with one torch thread on this shared 2-core machine: ~110 training
# images/s and ~7 sampled images/s (20 guided DDIM steps, 2 passes each); with 2 threads, while
# other processes held a core, 3-6x slower. The preset trains 150 + 150 steps of 16 crops (~45 s)
# and draws 4 nuclei for 40 test cells per split (~25 s), so the 5 evaluation splits add a few
# minutes to the demo. Twice the width (32 -> 64, 0.65 GFLOP) cost ~4x as much, too slow for
# sampling the demo. On the demo (2,128 nuclei, a 4-d morphology proxy as the condition) this
# trains in ~2 minutes to blob-like nuclei whose size follows the condition. Enough to run the
# workflow end to end, not for realistic nuclei: that needs the GPU presets (or many more steps).
# ``gpu128`` / ``gpu256``: real cohorts on a GPU, 128 x 128 / 256 x 256 crops (set the nuclei
# crop_size to at least that), four / five U-Net levels with attention from 32 x 32 down,
# 100 DDIM steps: 38 M / 103 M parameters, 84 / 319 GFLOP per image and forward pass; at 100
# sustained TFLOP/s ~14 / ~51 GPU hours of training and ~19 / ~71 GPU hours to generate 400,000
# crops (``benchmarks/generate.py --flops-only``).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(crop_size=32, block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=16,
                attention_resolution=16, condition_tokens=4, pretrain_steps=150, finetune_steps=150, batch_size=16,
                lr=2e-3, warmup_steps=20, ema_decay=0.99, sampling_steps=20, sample_batch_size=64,
                checkpoint_every=50, max_cells=40),
    "gpu128": dict(crop_size=128, block_out_channels=(64, 128, 256, 256), layers_per_block=2, attention_head_dim=64,
                   attention_resolution=32, condition_tokens=8, pretrain_steps=100_000, finetune_steps=50_000,
                   batch_size=128, lr=2e-4, warmup_steps=1_000, ema_decay=0.9999, sampling_steps=100,
                   sample_batch_size=512, checkpoint_every=1_000, max_cells=2000),
    "gpu256": dict(crop_size=256, block_out_channels=(64, 128, 256, 256, 512), layers_per_block=2,
                   attention_head_dim=64, attention_resolution=32, condition_tokens=8, pretrain_steps=200_000,
                   finetune_steps=100_000, batch_size=64, lr=1e-4, warmup_steps=2_000, ema_decay=0.9999,
                   sampling_steps=100, sample_batch_size=128, checkpoint_every=1_000, max_cells=2000),
}

# Parameters that do not change what training computes: a checkpoint made with other values of
# these resumes (the rest, with the data's shape, make the checkpoint's fingerprint).
_NOT_FINGERPRINTED = ("enabled", "max_cells", "guidance_scale", "sampling_steps", "sample_batch_size",
                      "n_generated", "device", "checkpoint_every")


@dataclass
class GenerateParams:
    """The ``generate:`` config block. ``None`` means "take the preset's value".

    ``attention_head_dim`` is the number of channels per attention head (a level with 64
    channels and head dim 32 has 2 heads; diffusers' own argument of that name is a head count).
    ``cross_attention_dim`` is the width of the condition tokens the U-Net attends to; ``None``
    takes the width of the conditioning latent. ``condition_tokens``: how many tokens the latent
    is projected to. ``attention_resolution``: U-Net levels whose feature maps are at most this
    size have (self- and cross-) attention; the lowest level and the middle block always do.
    """

    enabled: bool = True  # when the cohort has nuclei crops: train the generator in every evaluation split
    preset: str = "cpu"
    max_cells: int | None = None  # test cells per split nuclei are drawn for (seeded subsample)
    crop_size: int | None = None
    channels: tuple = (0,)
    block_out_channels: tuple | None = None
    layers_per_block: int | None = None
    attention_head_dim: int | None = None
    attention_resolution: int | None = None
    condition_tokens: int | None = None
    cross_attention_dim: int | None = None
    train_timesteps: int = 1000
    pretrain_steps: int | None = None
    finetune_steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    ema_decay: float | None = None
    augment: bool = True
    condition_dropout: float = 0.1
    guidance_scale: float = 2.0
    sampling_steps: int | None = None
    sample_batch_size: int | None = None
    n_generated: int = 4
    checkpoint_every: int | None = None
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "auto"

    def __post_init__(self):
        _choice("preset", self.preset, PRESETS)
        for k, v in PRESETS[self.preset].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        _choice("device", self.device, DEVICES)
        _choice("mixed_precision", self.mixed_precision, PRECISIONS)
        self.enabled = require_flag("generate", "enabled", self.enabled)
        self.augment = require_flag("generate", "augment", self.augment)
        for name in ("crop_size", "layers_per_block", "attention_head_dim", "attention_resolution",
                     "condition_tokens", "train_timesteps", "batch_size", "sampling_steps", "sample_batch_size",
                     "n_generated", "checkpoint_every", "max_cells"):
            setattr(self, name, _int(name, getattr(self, name), minimum=1))
        for name in ("pretrain_steps", "finetune_steps", "warmup_steps", "seed"):
            setattr(self, name, _int(name, getattr(self, name), minimum=0))
        if self.cross_attention_dim is not None:
            self.cross_attention_dim = _int("cross_attention_dim", self.cross_attention_dim, minimum=1)
        self.channels = _int_tuple("channels", self.channels, minimum=0)
        if len(set(self.channels)) != len(self.channels):
            raise CosmicInputError(f"generate parameter channels must not repeat a channel, got {list(self.channels)}")
        self.block_out_channels = _int_tuple("block_out_channels", self.block_out_channels, minimum=1)
        _float("lr", self.lr, lo=0.0, lo_open=True)
        _float("weight_decay", self.weight_decay, lo=0.0)
        _float("ema_decay", self.ema_decay, lo=0.0, hi=1.0, hi_open=True)
        _float("condition_dropout", self.condition_dropout, lo=0.0, hi=1.0)
        _float("guidance_scale", self.guidance_scale, lo=0.0)
        self._check_architecture()

    def _check_architecture(self):
        levels = len(self.block_out_channels)
        if self.crop_size % 2 ** (levels - 1):
            raise CosmicInputError(
                f"generate parameter crop_size ({self.crop_size}) must be divisible by 2^{levels - 1} = "
                f"{2 ** (levels - 1)}: the U-Net halves it between its {levels} levels (block_out_channels); "
                "choose another crop_size or fewer levels")
        bad = [c for c in self.block_out_channels if c % self.attention_head_dim]
        if bad:
            raise CosmicInputError(
                f"generate parameter attention_head_dim ({self.attention_head_dim}) must divide every entry of "
                f"block_out_channels {list(self.block_out_channels)} (not {bad}); choose a common divisor")
        if self.sampling_steps > self.train_timesteps:
            raise CosmicInputError(
                f"generate parameter sampling_steps ({self.sampling_steps}) must be at most train_timesteps "
                f"({self.train_timesteps})")

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any] | None = None, **overrides) -> "GenerateParams":
        """Build from ``config["generate"]``: the preset's values, then the given keys. Unknown keys
        are errors that list the allowed ones."""
        from ..config import params_from_config

        return params_from_config(cls, "generate", mapping, **overrides)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def fingerprint(self, **data) -> str:
        """Hex digest of the parameters that change training, and of ``data`` (shapes, sizes)."""
        keep = {k: v for k, v in self.to_dict().items() if k not in _NOT_FINGERPRINTED}
        text = json.dumps({"params": keep, "data": data}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


PARAM_NAMES = tuple(f.name for f in fields(GenerateParams))


def _choice(name, value, allowed):
    if value not in allowed:
        raise CosmicInputError(f"generate parameter {name} must be one of {', '.join(allowed)}, got {value!r}")


def _is_int(v, minimum):
    return (not isinstance(v, (bool, np.bool_)) and isinstance(v, (int, np.integer, float, np.floating))
            and math.isfinite(v) and float(v).is_integer() and v >= minimum)


def _int(name, v, minimum=0) -> int:
    if not _is_int(v, minimum):
        raise CosmicInputError(f"generate parameter {name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _int_tuple(name, v, minimum=0) -> tuple:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) == 0 \
            or not all(_is_int(x, minimum) for x in v):
        raise CosmicInputError(f"generate parameter {name} must be a non-empty list of integers >= {minimum}, "
                               f"got {v!r}")
    return tuple(int(x) for x in v)


def _float(name, v, lo=None, hi=None, lo_open=False, hi_open=False):
    ok = not isinstance(v, (bool, np.bool_)) and isinstance(v, (int, float, np.integer, np.floating)) \
        and math.isfinite(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}{')' if hi_open or hi is None else ']'}"
        raise CosmicInputError(f"generate parameter {name} must be a number in {rng}, got {v!r}")
