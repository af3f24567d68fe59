"""Parameters of the foundation model: :class:`FoundationParams` (the ``foundation:`` config
block), the presets that fill its unset values, the allowed choices, and the checkpoint
constants (format tag, architecture keys, legacy values) that training and loading share."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from ..errors import CosmicInputError, require_flag

FORMAT = "cosmic-foundation/1"
OBJECTIVES = ("features", "vicreg", "mae")
ENCODERS = ("cnn", "vit")
DECODERS = ("conv", "tokens")
POOLS = ("center_stats", "center", "mean")
DEFAULT_OBJECTIVE = "features"
AMP_MODES = ("auto", "bf16", "fp16", "off")
DEVICES = ("auto", "cpu", "cuda")

# Architecture and optimisation defaults per preset. ``tiny`` trains on ~2,000 crops of
# 64 x 64 x 2 in a few minutes on 2 CPU cores; ``small`` (ViT-S width) and ``base`` (ViT-B)
# are meant for GPUs.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(encoder="cnn", decoder="conv", embed_dim=128, depth=4, heads=4, patch_size=8, decoder_dim=96,
                 decoder_depth=1, batch_size=64, max_steps=250, lr=2e-3, warmup_steps=25, checkpoint_every=50),
    "small": dict(encoder="vit", decoder="tokens", embed_dim=384, depth=8, heads=6, patch_size=8, decoder_dim=256,
                  decoder_depth=2, batch_size=512, max_steps=50_000, lr=1e-3, warmup_steps=2_000, checkpoint_every=1_000),
    "base": dict(encoder="vit", decoder="tokens", embed_dim=768, depth=12, heads=12, patch_size=8, decoder_dim=512,
                 decoder_depth=4, batch_size=512, max_steps=100_000, lr=6e-4, warmup_steps=5_000, checkpoint_every=1_000),
}
# Per-objective overrides of a preset. On the CPU preset: the feature-prediction objective
# trains the small CNN for 600 steps of 64 crops (~3 minutes on 2 laptop cores); VICReg
# encodes two full views per crop (~3.5x the cost of a MAE step), so it takes fewer steps; both
# ViT objectives keep the ViT and token decoder they were measured with (MAE needs patch tokens
# to mask). The features objective renders through a 64-wide convolutional decoder (~1.3x the
# step cost of the token decoder; renders outlines, orientation and neighbours instead of seamed blobs).
PRESET_OBJECTIVE = {"tiny": {"features": dict(max_steps=600, warmup_steps=60, decoder_dim=64),
                             "vicreg": dict(encoder="vit", decoder="tokens", max_steps=150, warmup_steps=15,
                                            lr=5e-3),
                             "mae": dict(encoder="vit", decoder="tokens")}}


@dataclass
class FoundationParams:
    """The ``foundation:`` config block. ``None`` means "take the preset's value".

    Crop channels and size are not parameters: they are read from the crop banks and stored
    with the model.
    """

    preset: str = "tiny"
    objective: str = DEFAULT_OBJECTIVE
    encoder: str | None = None
    decoder: str | None = None
    embed_dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    patch_size: int | None = None
    decoder_dim: int | None = None
    decoder_depth: int | None = None
    pool: str = "center_stats"
    mask_ratio: float = 0.75
    recon_weight: float = 1.0
    batch_size: int | None = None
    max_steps: int | None = None
    time_limit_s: float | None = None
    lr: float | None = None
    weight_decay: float = 0.05
    warmup_steps: int | None = None
    checkpoint_every: int | None = None
    seed: int = 0
    amp: str = "auto"
    num_workers: int | None = None
    device: str = "auto"
    compile: bool = False

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise CosmicInputError(f"foundation parameter preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.objective not in OBJECTIVES:
            raise CosmicInputError(
                f"foundation parameter objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.pool not in POOLS:
            raise CosmicInputError(f"foundation parameter pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        defaults = {**PRESETS[self.preset], **PRESET_OBJECTIVE.get(self.preset, {}).get(self.objective, {})}
        for k, v in defaults.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if self.encoder not in ENCODERS:
            raise CosmicInputError(
                f"foundation parameter encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if self.decoder not in DECODERS:
            raise CosmicInputError(
                f"foundation parameter decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.objective == "mae" and self.encoder != "vit":
            raise CosmicInputError(
                "foundation: objective 'mae' hides patch tokens, which needs encoder 'vit'; "
                f"set foundation.encoder to vit or choose another objective (got encoder {self.encoder!r})")
        if self.amp not in AMP_MODES:
            raise CosmicInputError(f"foundation parameter amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.device not in DEVICES:
            raise CosmicInputError(
                f"foundation parameter device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        for name in ("embed_dim", "depth", "heads", "patch_size", "decoder_dim", "decoder_depth",
                     "batch_size", "max_steps", "checkpoint_every"):
            _int(name, getattr(self, name), minimum=1)
            setattr(self, name, int(getattr(self, name)))
        for name in ("warmup_steps", "seed"):
            _int(name, getattr(self, name), minimum=0)
            setattr(self, name, int(getattr(self, name)))
        if self.num_workers is not None:
            _int("num_workers", self.num_workers, minimum=0)
            self.num_workers = int(self.num_workers)
        p = self.patch_size
        if (self.encoder == "cnn" or self.decoder == "conv") and (p < 2 or p & (p - 1)):
            raise CosmicInputError(
                f"foundation parameter patch_size must be a power of 2 (>= 2) for encoder 'cnn' and decoder "
                f"'conv' (they halve / double the resolution log2(patch_size) times), got {p}")
        if self.embed_dim % self.heads:
            raise CosmicInputError(
                f"foundation parameter embed_dim ({self.embed_dim}) must be divisible by heads ({self.heads})")
        _float("mask_ratio", self.mask_ratio, lo=0.0, hi=1.0, hi_open=True)
        _float("lr", self.lr, lo=0.0, lo_open=True)
        _float("weight_decay", self.weight_decay, lo=0.0)
        _float("recon_weight", self.recon_weight, lo=0.0)
        if self.time_limit_s is not None:
            _float("time_limit_s", self.time_limit_s, lo=0.0, lo_open=True)
        require_flag("foundation", "compile", self.compile)

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any] | None = None, **overrides) -> "FoundationParams":
        """Build from ``config["foundation"]``; unknown keys are errors."""
        from ..config import params_from_config

        return params_from_config(cls, "foundation", mapping, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


def _int(name, v, minimum=0):
    ok = not isinstance(v, bool) and isinstance(v, (int, np.integer, float)) and float(v).is_integer() and v >= minimum
    if not ok:
        raise CosmicInputError(f"foundation parameter {name} must be an integer >= {minimum}, got {v!r}")


def _float(name, v, lo=None, hi=None, lo_open=False, hi_open=False):
    ok = not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}{')' if hi_open or hi is None else ']'}"
        raise CosmicInputError(f"foundation parameter {name} must be a number in {rng}, got {v!r}")


# Parameters that fix the architecture: a checkpoint made with other values cannot be resumed.
_ARCH_KEYS = ("objective", "encoder", "decoder", "embed_dim", "depth", "heads", "patch_size", "decoder_dim",
              "decoder_depth", "pool")
# value of a parameter in checkpoints written before it existed
_LEGACY = {"pool": "mean", "encoder": "vit", "decoder": "tokens"}
