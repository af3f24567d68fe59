"""Nuclei foundation model: self-supervised encoder (crop -> embedding) and decoder
(embedding -> crop), trained on the unpaired corpus of all single-nucleus crops.

Encoders (``encoder``): a small CNN (``cnn``: 3 x 3 conv stages, one output position per
``patch_size`` block; the ``tiny`` CPU preset) or a ViT (``vit``: ``patch_size`` patches; the
``small``/``base`` GPU presets). Both give a grid of output tokens. Three objectives share the
encoder and one image decoder:

``features`` (default)
    feature prediction: a linear head on the embedding predicts the nucleus's own region
    properties (the ``morph_*`` columns of its ``nuclei.parquet``: size, shape, DNA intensity
    and GLCM texture, measured from the image and its segmentation, no labels), z-scored over
    the corpus; MSE. Handcrafted targets for self-supervision, as MaskFeat predicts HOG.
``vicreg``
    augmentation invariance: two augmented views of each crop, VICReg loss (invariance +
    variance + covariance) on a projector MLP of the embeddings.
``mae``
    masked autoencoding (ViT only): a random ``mask_ratio`` of the patches is hidden, the
    encoder sees the visible ones and a light transformer decoder reconstructs the hidden ones.

The embedding is read out from the encoder's output tokens (``pool``): by default the mean
and the SD of the tokens of the crop's central window (``center_stats``, statistics pooling;
crops are centred on the nucleus and include its neighbours), the mean alone (``center``), or
the mean of all tokens (``mean``, models made before ``pool`` existed).

Every objective adds an *image head* trained with a reconstruction loss from the pooled
embedding alone, so that :func:`decode_embeddings` renders any embedding (including embeddings
generated from RNA downstream) as a nucleus crop. Reconstruction losses are divided by the
variance of the target pixels in the batch (scale-free, ~1 for a constant predictor).

Why ``features`` on a CNN (issue #5, ``benchmarks/foundation_probes.py``; demo, 2,074 nuclei
matched to truth, held-out linear probes for cell type / phase / treatment): the tiny ViT
trained by VICReg for ~2 CPU minutes stayed near a random encoder (0.70 / 0.72 / 0.69 against
region properties 0.80 / 0.74 / 0.70 and random 0.68 / 0.69 / 0.64), and neither longer
training, MAE, other augmentations, a convolutional stem nor masked crops changed that. A
supervised CNN showed the crops hold the information (cell type ~0.83), and even regressing
the region properties did not teach the ViT much (cell type 0.71), while the small CNN learns
them within 600 steps. Nuclei-preserving augmentations (:data:`AUGMENT`: dihedral group and
whole-pixel shifts; no scale or intensity jitter, which erase nuclear size and DNA content)
keep the region properties unchanged, so they stay valid targets for every view.
In the workflow's own probe on the default demo (``results/qc/foundation_probes.tsv``; mean of
3 random 70/30 splits, each probe's regularisation chosen by cross-validation inside its
training split): foundation 0.822 / 0.736 / 0.735, region properties 0.809 / 0.729 / 0.717,
random-init CNN 0.732 / 0.705 / 0.646 (split SD ~0.01-0.02); 600 steps took 144 s on 2 cores.
The embedding is trained to hold the region properties, so matching them is by design; it
exceeds them because the CNN learns more of the image than the 34 targets name.

One code path for CPU and GPUs: the same :func:`train` runs a tiny model on a laptop or, when
launched by ``torchrun`` (``WORLD_SIZE > 1``), DistributedDataParallel over several GPUs
(NCCL) or CPU processes (gloo). Crops are streamed from the memory-mapped banks; training
checkpoints every ``checkpoint_every`` steps to ``last.pt`` and resumes from it.

Command line (the ``pretrain`` rule)::

    python -m cosmic.foundation train --crops a/crops.npy b/crops.npy --outdir models/foundation \\
        --config foundation.json
    torchrun --standalone --nproc_per_node=4 -m cosmic.foundation train --crops ... --outdir ...
    python -m cosmic.foundation embed --model models/foundation/model.pt --crops a/crops.npy \\
        --out a/embedding.npy
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .atomic import atomic_path, write_json
from .errors import CosmicInputError
from .plotting import save_figure

__all__ = [
    "FoundationParams",
    "PRESETS",
    "OBJECTIVES",
    "DEFAULT_OBJECTIVE",
    "FoundationModel",
    "CropBankDataset",
    "CropsWithTargets",
    "write_feature_targets",
    "StepBatchSampler",
    "augment",
    "train",
    "load_model",
    "embed_crops",
    "decode_embeddings",
    "random_encoder_embeddings",
    "linear_probe",
    "evaluate_representations",
    "plot_reconstructions",
    "plot_umap",
    "main",
]

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


# ---------------------------------------------------------------------------------------
# parameters
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
        if not isinstance(self.compile, (bool, np.bool_)):
            raise CosmicInputError(f"foundation parameter compile must be true or false, got {self.compile!r}")

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any] | None = None, **overrides) -> "FoundationParams":
        """Build from ``config["foundation"]``; unknown keys are errors."""
        from .config import params_from_config

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


# ---------------------------------------------------------------------------------------
# model
class Block(nn.Module):
    """Pre-norm transformer block (fused scaled-dot-product attention)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        B, T, D = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.norm2(x))


class TokenDecoder(nn.Module):
    """Light transformer mapping a token sequence (all patch positions) to patch pixels."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, n_tokens: int, patch_pixels: int):
        super().__init__()
        self.inp = nn.Linear(in_dim, dim)
        self.pos = nn.Parameter(torch.zeros(1, n_tokens, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, patch_pixels)
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, tokens):
        x = tokens + self.pos
        for b in self.blocks:
            x = b(x)
        return self.out(self.norm(x))


def _pool_weights(pool: str, grid: int) -> torch.Tensor:
    """Readout weights over the ``grid x grid`` patch tokens (sum 1).

    ``center`` and ``center_stats``: uniform over the central ``ceil(grid / 2)`` x
    ``ceil(grid / 2)`` tokens, i.e. the middle half of the crop's side. Crops are cut centred on the nucleus with room for its
    neighbours, so the mean over *all* tokens is dominated by background and neighbouring
    nuclei (a median demo nucleus covers ~15% of a 64 px crop); the central window holds the
    nucleus itself while attention still lets those tokens read the context. ``mean``: all
    tokens (models trained before ``pool`` existed)."""
    w = torch.zeros(grid, grid)
    if pool == "mean":
        w[:] = 1
    else:
        k = max(1, -(-grid // 2))
        a = (grid - k) // 2
        w[a:a + k, a:a + k] = 1
    w = w.flatten()
    return w / w.sum()


class ConvEncoder(nn.Module):
    """Small CNN encoder: 3 x 3 conv-BatchNorm-ReLU stages, each followed by a 2 x 2 max-pool,
    until one position per ``patch_size`` x ``patch_size`` block of the crop, then a conv to
    ``dim`` channels. Returns the same B x T x D token grid as the ViT, so pooling, the image
    head and the objectives are shared. Convolutions see the chromatin texture at the pixel
    scale, which an 8 px ViT patch embedding (one linear map per patch) does not."""

    def __init__(self, channels: int, dim: int, patch_size: int):
        super().__init__()
        n_pool = int(round(math.log2(patch_size)))
        widths = [max(16, dim // 4)] + [max(16, dim // 2)] * (n_pool - 1)
        layers: list[nn.Module] = []
        c = channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = w
        layers += [nn.Conv2d(c, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten(2).transpose(1, 2)


class ConvDecoder(nn.Module):
    """Embedding -> image by convolutions: a linear map to a ``dim`` x grid x grid feature map
    (one position per ``patch_size`` block), then log2(patch_size) stages of 2x nearest
    upsampling + 3 x 3 conv-BatchNorm-ReLU (``depth`` convs per stage, width halving), and a
    3 x 3 conv to the crop channels. Unlike a per-patch linear read-out it has no seams at patch
    borders, and neighbouring pixels share features, which keeps outlines and texture smooth."""

    def __init__(self, in_dim: int, dim: int, depth: int, channels: int, grid: int, patch_size: int):
        super().__init__()
        self.dim, self.grid = dim, grid
        self.inp = nn.Linear(in_dim, dim * grid * grid)
        layers: list[nn.Module] = []
        c = dim
        for _ in range(int(round(math.log2(patch_size)))):
            w = max(16, c // 2)
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            for k in range(depth):
                layers += [nn.Conv2d(c if k == 0 else w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                           nn.ReLU(inplace=True)]
            c = w
        layers.append(nn.Conv2d(c, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(self.inp(z).view(-1, self.dim, self.grid, self.grid))


def _dec_heads(dim: int) -> int:
    for h in (8, 4, 2, 1):
        if dim % h == 0 and dim // h >= 16:
            return h
    return 1


class FoundationModel(nn.Module):
    """Encoder (ViT or CNN; crop -> embedding) + image head (embedding -> crop) + objective heads.

    ``embed(x)``: B x C x S x S -> B x E, read out from the encoder's output tokens by ``pool``
    (E = ``embedding_dim``: 2 x embed_dim for ``center_stats``, embed_dim otherwise).
    ``decode(z)``: B x E -> B x C x S x S.
    ``forward(x1, x2=None, noise=None, targets=None)``: training loss (scalar) and a dict of its
    parts (``targets``: B x ``n_features`` standardised region properties, objective ``features``).
    """

    def __init__(self, params: FoundationParams, channels: int, crop_size: int, n_features: int = 1):
        super().__init__()
        p = params.patch_size
        if crop_size % p:
            raise CosmicInputError(
                f"foundation: crop size {crop_size} is not a multiple of patch_size {p}; "
                "choose a patch_size dividing the crop size (nuclei: crop_size)")
        self.params = params
        self.channels, self.crop_size = int(channels), int(crop_size)
        self.grid = crop_size // p
        self.n_patches = self.grid ** 2
        D, dd = params.embed_dim, params.decoder_dim
        # statistics pooling reads out the mean *and* the SD of the window's tokens
        self.embedding_dim = 2 * D if params.pool == "center_stats" else D
        E = self.embedding_dim
        patch_pixels = channels * p * p
        self.n_features = int(n_features)
        if params.encoder == "cnn":
            self.cnn = ConvEncoder(channels, D, p)
        else:
            self.patch_embed = nn.Linear(patch_pixels, D)
            self.pos = nn.Parameter(torch.zeros(1, self.n_patches, D))
        self.register_buffer("pool_weights", _pool_weights(params.pool, self.grid), persistent=False)
        if params.encoder == "vit":
            self.blocks = nn.ModuleList(Block(D, params.heads) for _ in range(params.depth))
            self.norm = nn.LayerNorm(D)
        # embedding -> image: convolutions from a coarse grid, or one token per patch position
        if params.decoder == "conv":
            self.image_head = ConvDecoder(E, dd, params.decoder_depth, channels, self.grid, p)
        else:
            self.image_head = TokenDecoder(E, dd, params.decoder_depth, _dec_heads(dd), self.n_patches, patch_pixels)
        if params.objective == "mae":
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
            self.mae_decoder = TokenDecoder(D, dd, params.decoder_depth, _dec_heads(dd), self.n_patches, patch_pixels)
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        elif params.objective == "vicreg":
            h = 4 * D
            self.projector = nn.Sequential(nn.Linear(E, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Linear(h, h))
        else:
            if self.n_features < 1:
                raise CosmicInputError("foundation: objective 'features' needs at least one region-property column")
            self.feature_head = nn.Linear(E, self.n_features)
        if params.encoder == "vit":
            nn.init.trunc_normal_(self.pos, std=0.02)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # -- geometry
    def patchify(self, x):
        B, C, S, _ = x.shape
        p, g = self.params.patch_size, self.grid
        return x.reshape(B, C, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, C * p * p)

    def unpatchify(self, t):
        B = t.shape[0]
        p, g, C = self.params.patch_size, self.grid, self.channels
        return t.reshape(B, g, g, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, C, g * p, g * p)

    # -- encoder / decoder
    def encode_tokens(self, x, keep=None):
        if self.params.encoder == "cnn":
            return self.cnn(x)  # keep (token masking) is MAE-only, which needs the ViT
        t = self.patch_embed(self.patchify(x)) + self.pos
        if keep is not None:
            t = torch.gather(t, 1, keep.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
        for b in self.blocks:
            t = b(t)
        return self.norm(t)

    def pool(self, tokens, keep=None):
        """Embedding from output tokens: weighted mean with ``pool_weights`` (the tokens of the
        central window for ``pool="center"``, all tokens for ``"mean"``). With ``keep`` (MAE:
        indices of the visible patches) the weights of the visible tokens are renormalised;
        crops with no visible token in the window fall back to all their tokens. ``center_stats``
        appends the weighted SD of the tokens to their mean (statistics pooling)."""
        w = self.pool_weights.to(tokens.dtype)
        if keep is None:
            wk = w.expand(tokens.shape[0], -1)
        else:
            wk = w[keep]
            den = wk.sum(dim=1, keepdim=True)
            wk = torch.where(den > 0, wk / den.clamp_min(1e-12), torch.full_like(wk, 1.0 / wk.shape[1]))
        mean = torch.einsum("btd,bt->bd", tokens, wk)
        if self.params.pool != "center_stats":
            return mean
        var = torch.einsum("btd,bt->bd", (tokens - mean[:, None]).pow(2), wk)
        return torch.cat([mean, torch.sqrt(var + 1e-6)], dim=1)

    def embed(self, x):
        return self.pool(self.encode_tokens(x))

    def decode(self, z):
        if isinstance(self.image_head, ConvDecoder):
            return self.image_head(z)
        tokens = self.image_head.inp(z).unsqueeze(1).expand(-1, self.n_patches, -1)
        return self.unpatchify(self.image_head(tokens))

    @staticmethod
    def _recon_loss(pred, target):
        return F.mse_loss(pred.float(), target.float()) / target.float().var().clamp_min(1e-6).detach()

    def forward(self, x1, x2=None, noise=None, targets=None):
        if self.params.objective == "mae":
            return self._mae(x1, noise)
        if self.params.objective == "vicreg":
            return self._vicreg(x1, x2)
        return self._features(x1, targets)

    def _features(self, x, targets):
        """Predict the nucleus's own (standardised, label-free) region properties from its
        embedding through a linear head, so that what they measure must be linearly readable
        from the embedding; the encoder is free to carry more."""
        z = self.embed(x)
        feat = F.mse_loss(self.feature_head(z).float(), targets.float())
        rec = self._recon_loss(self.decode(z), x)
        loss = feat + self.params.recon_weight * rec
        return loss, {"features": feat.detach(), "recon": rec.detach()}

    def _mae(self, x, noise):
        B, N = x.shape[0], self.n_patches
        n_keep = max(1, int(round(N * (1 - self.params.mask_ratio))))
        if noise is None:
            noise = torch.rand(B, N, device=x.device)
        order = torch.argsort(noise, dim=1)
        keep = order[:, :n_keep]
        tokens = self.encode_tokens(x, keep)
        z = self.pool(tokens, keep)
        dd = self.mask_token.shape[-1]
        dec_in = self.mae_decoder.inp(tokens)
        full = self.mask_token.expand(B, N, dd).to(dec_in.dtype).clone()
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, dd), dec_in)
        pred = self.mae_decoder(full)
        target = self.patchify(x)
        masked = torch.ones(B, N, device=x.device, dtype=torch.bool)
        masked[torch.arange(B, device=x.device)[:, None], keep] = False
        if not bool(masked.any()):
            masked = ~masked
        mae = self._recon_loss(pred[masked], target[masked])
        rec = self._recon_loss(self.decode(z), x)
        loss = mae + self.params.recon_weight * rec
        return loss, {"mae": mae.detach(), "recon": rec.detach()}

    def _vicreg(self, x1, x2):
        z1, z2 = self.embed(x1), self.embed(x2)
        p1, p2 = self.projector(z1).float(), self.projector(z2).float()
        inv = F.mse_loss(p1, p2)

        def var_cov(p):
            p = p - p.mean(dim=0)
            std = torch.sqrt(p.var(dim=0) + 1e-4)
            var = F.relu(1 - std).mean()
            n, d = p.shape
            cov = (p.T @ p) / max(n - 1, 1)
            off = cov.pow(2).sum() - cov.diagonal().pow(2).sum()
            return var, off / d

        v1, c1 = var_cov(p1)
        v2, c2 = var_cov(p2)
        # standard VICReg weights (25, 25, 1), divided by 25 so the reconstruction term is comparable
        vic = inv + (v1 + v2) / 2 + (c1 + c2) / 50
        rec = 0.5 * (self._recon_loss(self.decode(z1), x1) + self._recon_loss(self.decode(z2), x2))
        loss = vic + self.params.recon_weight * rec
        return loss, {"vicreg": vic.detach(), "recon": rec.detach()}


# ---------------------------------------------------------------------------------------
# augmentations (batched, in torch, on the training device)
# What :func:`train` passes to :func:`augment` (read at each step). Nuclei-preserving: the
# dihedral group plus whole-pixel shifts of up to 4 px; no scale or intensity changes, because
# nuclear area and integrated DNA intensity are what cell type and cycle phase show in. The
# recipe before issue #5 was scale 0.1, gain_sd 0.1, offset_sd 0.02, no shift, no noise.
AUGMENT = dict(scale=0.0, gain_sd=0.0, offset_sd=0.0, shift=4, noise_sd=0.0)
def augment(x: torch.Tensor, generator: torch.Generator | None = None, scale: float = AUGMENT["scale"],
            gain_sd: float = AUGMENT["gain_sd"], offset_sd: float = AUGMENT["offset_sd"],
            shift: float = AUGMENT["shift"], noise_sd: float = AUGMENT["noise_sd"]) -> torch.Tensor:
    """Random dihedral transform (flips, 90 degree rotations), a small translation (up to
    ``int(shift)`` whole pixels along each axis), an optional isotropic scale change (factor in
    [1/(1+scale), 1+scale]), per-channel intensity jitter (gain ``exp(N(0, gain_sd))``, offset
    ``N(0, offset_sd)``) and additive pixel noise ``N(0, noise_sd)``.

    Nuclei have no canonical orientation or position in the crop, so the dihedral group and
    small shifts are exact invariances. Scale and intensity changes are not: nuclear size and
    integrated DNA intensity carry cell type and cell-cycle phase, and an objective made
    invariant to them discards exactly that signal (see :data:`AUGMENT`)."""
    B, C, S, S2 = x.shape
    dev = x.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=dev)

    flip = rand(B) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    k = (rand(B) * 4).long().clamp_(max=3)
    out = x.clone()
    for r in (1, 2, 3):
        sel = k == r
        if bool(sel.any()):
            out[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
    x = out
    if scale > 0:
        s = torch.exp((rand(B) * 2 - 1) * math.log1p(scale))
        theta = torch.zeros(B, 2, 3, device=dev, dtype=x.dtype)
        theta[:, 0, 0] = 1 / s
        theta[:, 1, 1] = 1 / s
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    m = int(shift)
    if m > 0:  # whole-pixel translations, zeros shifted in (exact: no resampling)
        t = torch.floor(rand(B, 2) * (2 * m + 1)).long().clamp_(max=2 * m)
        ar = torch.arange(S, device=dev)
        iy = ar[None, :] + t[:, :1]
        ix = ar[None, :] + t[:, 1:]
        xp = F.pad(x, (m, m, m, m))
        x = xp[torch.arange(B, device=dev)[:, None, None], :, iy[:, :, None], ix[:, None, :]]
        x = x.permute(0, 3, 1, 2).contiguous()
    if gain_sd > 0 or offset_sd > 0:
        gain = torch.exp(torch.randn(B, C, 1, 1, generator=generator, device=dev) * gain_sd)
        off = torch.randn(B, C, 1, 1, generator=generator, device=dev) * offset_sd
        x = x * gain + off
    if noise_sd > 0:
        x = x + torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype) * noise_sd
    return x


# ---------------------------------------------------------------------------------------
# data: streamed from memory-mapped crop banks
def _open_bank(path):
    try:
        arr = np.load(path, mmap_mode="r")
    except FileNotFoundError as exc:
        raise CosmicInputError(f"file '{path}': crop bank not found; run the nuclei step first") from exc
    except Exception as exc:
        raise CosmicInputError(f"file '{path}': unreadable crop bank ({exc}); delete it and re-run the nuclei step") from exc
    if arr.ndim != 4 or arr.shape[2] != arr.shape[3]:
        raise CosmicInputError(f"file '{path}': crop bank must be N x C x S x S, got shape {arr.shape}")
    return arr


class CropBankDataset(torch.utils.data.Dataset):
    """All crops of several banks as one corpus of (bank, row) pairs, read lazily.

    Each bank is opened with ``np.load(mmap_mode="r")`` (shape, dtype and the data offset
    of the ``.npy``; memmaps are not pickled to DataLoader workers, they reopen in each
    process). Rows are then read with positioned reads (``os.pread``) at the memmap's
    offset, one read per run of consecutive rows, so only the requested crops are copied
    and no file pages are mapped into the process: resident memory stays flat in the
    corpus size (touching a memmap at random maps whole read-ahead windows, which piles up
    in the resident set over a long run).
    """

    def __init__(self, paths: Sequence):
        self.paths = [str(p) for p in paths]
        shapes = []
        for p in self.paths:
            arr = _open_bank(p)
            shapes.append(arr.shape)
            del arr
        nonempty = [s for s in shapes if s[0] > 0]
        geo = {tuple(s[1:]) for s in nonempty}
        if len(geo) > 1:
            raise CosmicInputError(
                "foundation: crop banks differ in channels or crop size: "
                + "; ".join(f"'{p}' {s[1:]}" for p, s in zip(self.paths, shapes) if s[0] > 0)
                + "; all samples need the same channels and nuclei crop_size")
        self.sizes = np.array([s[0] for s in shapes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.shape = tuple(nonempty[0][1:]) if nonempty else (tuple(shapes[0][1:]) if shapes else None)
        self._banks: dict[int, np.ndarray] = {}
        self._fds: dict[int, int] = {}

    def __len__(self):
        return int(self.offsets[-1])

    def bank(self, b: int) -> np.ndarray:
        """The memory-mapped bank ``b`` (opened once per process)."""
        if b not in self._banks:
            self._banks[b] = _open_bank(self.paths[b])
        return self._banks[b]

    def _fd(self, b: int) -> int:
        if b not in self._fds:
            self._fds[b] = os.open(self.paths[b], os.O_RDONLY)
        return self._fds[b]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_banks"], state["_fds"] = {}, {}
        return state

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def locate(self, idx):
        idx = np.asarray(idx, dtype=np.int64)
        b = np.searchsorted(self.offsets, idx, side="right") - 1
        return b, idx - self.offsets[b]

    def read_rows(self, b: int, rows: np.ndarray) -> np.ndarray:
        """Rows (sorted ascending) of bank ``b`` as float32, via positioned reads."""
        mm = self.bank(b)
        if not mm.flags.c_contiguous or not isinstance(mm, np.memmap):
            return np.asarray(mm[rows], dtype=np.float32)
        row_bytes = int(np.prod(mm.shape[1:])) * mm.dtype.itemsize
        out = np.empty((len(rows),) + mm.shape[1:], dtype=mm.dtype)
        mv = memoryview(out.reshape(-1).view(np.uint8))
        fd = self._fd(b)
        # runs of consecutive rows -> one read each, straight into ``out``
        breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
        for seg in np.split(np.arange(len(rows)), breaks):
            if not len(seg):
                continue
            start, want = int(seg[0]) * row_bytes, len(seg) * row_bytes
            pos, got = mm.offset + int(rows[seg[0]]) * row_bytes, 0
            while got < want:
                k = os.preadv(fd, [mv[start + got:start + want]], pos + got)
                if k <= 0:
                    raise CosmicInputError(f"file '{self.paths[b]}': crop bank is truncated; re-run the nuclei step")
                got += k
        return out.astype(np.float32, copy=False)

    def __getitem__(self, i):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices):
        b, rows = self.locate(indices)
        out = np.empty((len(rows),) + tuple(self.shape), dtype=np.float32)
        for bank in np.unique(b):
            sel = np.nonzero(b == bank)[0]
            r = rows[sel]
            order = np.argsort(r, kind="stable")
            out[sel[order]] = self.read_rows(int(bank), r[order])
        np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------
# region-property targets of the ``features`` objective
def _feature_table(path, n_crops: int, bank, columns=None):
    """The morphology feature columns of one sample's nuclei table, rows in crop-bank order."""
    import pandas as pd

    from .nuclei import feature_columns

    try:
        table = pd.read_parquet(path)
    except FileNotFoundError as exc:
        raise CosmicInputError(
            f"file '{path}': nuclei table not found; objective 'features' predicts each nucleus's region "
            "properties from the nuclei.parquet written beside its crops.npy (run the nuclei step), or set "
            "foundation.objective to vicreg or mae") from exc
    except Exception as exc:
        raise CosmicInputError(f"file '{path}': unreadable nuclei table ({exc}); delete it and re-run the nuclei step") from exc
    if len(table) != n_crops:
        raise CosmicInputError(
            f"file '{path}': {len(table)} nuclei, but its crop bank '{bank}' holds {n_crops} crops; "
            "re-run the nuclei step for this sample so both come from the same segmentation")
    if "crop_index" in table.columns:
        table = table.sort_values("crop_index", kind="stable")
        if not np.array_equal(table["crop_index"].to_numpy(), np.arange(n_crops)):
            raise CosmicInputError(f"file '{path}': crop_index is not 0..{n_crops - 1}; re-run the nuclei step")
    cols = feature_columns(table)
    if columns is not None and cols != columns:
        missing, extra = sorted(set(columns) - set(cols)), sorted(set(cols) - set(columns))
        raise CosmicInputError(
            f"file '{path}': its region-property columns differ from the other samples' (missing: "
            f"{', '.join(missing) or 'none'}; extra: {', '.join(extra) or 'none'}); all samples need the "
            "same nuclei feature settings")
    values = table[cols].to_numpy(dtype=np.float64)
    values[~np.isfinite(values)] = np.nan
    return cols, values


def write_feature_targets(table_paths: Sequence, crop_paths: Sequence, out_path, clip: float = 5.0) -> dict:
    """Standardise the region properties of every crop of the corpus (``morph_*`` columns of each
    sample's nuclei table, rows in crop-bank order) and write them as one float32 N x F ``.npy``
    (atomically) that training memory-maps. Columns are z-scored over the whole corpus and
    clipped to +-``clip``; missing values become 0 (the mean). Tables are read one at a time, so
    memory holds one sample's table. Returns the columns and their mean and SD."""
    table_paths, crop_paths = [str(p) for p in table_paths], [str(p) for p in crop_paths]
    if len(table_paths) != len(crop_paths):
        raise CosmicInputError(
            f"foundation: {len(table_paths)} nuclei tables for {len(crop_paths)} crop banks; objective "
            "'features' needs each sample's nuclei.parquet, in the order of its crops.npy")
    sizes = [int(_open_bank(c).shape[0]) for c in crop_paths]
    columns, total, total_sq, count = None, None, None, None
    for path, n, bank in zip(table_paths, sizes, crop_paths):
        columns, v = _feature_table(path, n, bank, columns)
        if total is None:
            total, total_sq, count = (np.zeros(len(columns)) for _ in range(3))
        ok = np.isfinite(v)
        total += np.where(ok, v, 0).sum(0)
        total_sq += np.where(ok, v * v, 0).sum(0)
        count += ok.sum(0)
    if not columns:
        raise CosmicInputError(
            f"file '{table_paths[0]}': no region-property (morph_*) columns to predict; objective 'features' "
            "needs them (nuclei step), or set foundation.objective to vicreg or mae")
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    var = np.divide(total_sq, count, out=np.zeros_like(total), where=count > 0) - mean ** 2
    sd = np.sqrt(np.clip(var, 0, None))
    sd[sd <= 1e-12 * (1 + np.abs(mean))] = 1.0  # constant column: all zeros after centring
    with atomic_path(out_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(sum(sizes), len(columns)))
        start = 0
        for path, n, bank in zip(table_paths, sizes, crop_paths):
            _, v = _feature_table(path, n, bank, columns)
            z = np.clip((v - mean) / sd, -clip, clip)
            out[start:start + n] = np.nan_to_num(z, nan=0.0)
            start += n
        out.flush()
        del out
    return {"columns": columns, "mean": mean.tolist(), "sd": sd.tolist(), "path": str(out_path)}


class CropsWithTargets(torch.utils.data.Dataset):
    """A :class:`CropBankDataset` paired with a memory-mapped N x F target array in corpus order;
    a batch is ``(crops, targets)``."""

    def __init__(self, crops: CropBankDataset, targets_path):
        self.crops, self.targets_path = crops, str(targets_path)
        self._targets = None
        n, self.n_features = np.load(self.targets_path, mmap_mode="r").shape
        if n != len(crops):
            raise CosmicInputError(f"file '{targets_path}': {n} target rows for {len(crops)} crops; delete it")

    def __len__(self):
        return len(self.crops)

    def __getstate__(self):
        return {**self.__dict__, "_targets": None}

    def __getitems__(self, indices):
        if self._targets is None:
            self._targets = np.load(self.targets_path, mmap_mode="r")
        idx = np.asarray(indices, dtype=np.int64)
        return self.crops.__getitems__(idx), torch.from_numpy(np.asarray(self._targets[idx], dtype=np.float32))


def _identity(x):
    return x


def _mix(*ints) -> int:
    """Deterministic 63-bit seed from integers (splitmix64-style)."""
    h = 0x9E3779B97F4A7C15
    for v in ints:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class StepBatchSampler(torch.utils.data.Sampler):
    """Batches of random corpus indices, a pure function of (seed, step, rank).

    Global step ``s`` covers positions ``s*B*W ... (s+1)*B*W - 1`` of an endless stream of
    per-epoch random permutations of the corpus (epoch ``e`` permuted with seed
    ``(seed, e)``); rank ``r`` of ``W`` takes every W-th of them (rank-strided sharding).
    Starting at ``start_step`` therefore reproduces exactly what an uninterrupted run would
    have drawn, which makes resumption exact.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, end_step: int,
                 rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.start, self.end = int(start_step), int(end_step)
        self.rank, self.world = int(rank), int(world_size)
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self):
        return max(0, self.end - self.start)

    def _perm(self, epoch):
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng(_mix(self.seed, epoch, 17)).permutation(self.n)
        return self._perms[epoch]

    def batch(self, step: int) -> list[int]:
        gb = self.batch_size * self.world
        pos = step * gb + np.arange(self.rank, gb, self.world, dtype=np.int64)
        ep, off = pos // self.n, pos % self.n
        out = np.empty(pos.size, dtype=np.int64)
        for e in np.unique(ep):
            sel = ep == e
            out[sel] = self._perm(int(e))[off[sel]]
        return out.tolist()

    def __iter__(self):
        for s in range(self.start, self.end):
            yield self.batch(s)


# ---------------------------------------------------------------------------------------
# runtime helpers
def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _resolve_device(device=None, local_rank: int = 0) -> torch.device:
    if isinstance(device, torch.device):
        return device
    device = device or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise CosmicInputError("foundation: device 'cuda' requested but no CUDA GPU is visible; "
                                   "set foundation.device to 'auto' or 'cpu'")
        return torch.device("cuda", local_rank)
    if device.startswith("cuda:"):
        return torch.device(device)
    return torch.device("cpu")


def _amp_dtype(amp: str, device: torch.device):
    """Autocast dtype: bf16/fp16 on CUDA only ('auto' picks bf16 when supported)."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _lr_lambda(warmup: int, total: int):
    def f(step):
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        t = min(1.0, (step - warmup) / span)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))
    return f


def _param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith("pos") or "token" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _save_torch(obj, path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _rng_state():
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st):
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(st["cuda"])


def _seed_all(seed):
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


_ARCH_KEYS = ("objective", "encoder", "decoder", "embed_dim", "depth", "heads", "patch_size", "decoder_dim",
              "decoder_depth", "pool")
# value of a parameter in checkpoints written before it existed
_LEGACY = {"pool": "mean", "encoder": "vit", "decoder": "tokens"}


def build_model(params: FoundationParams, channels: int, crop_size: int, n_features: int = 1) -> FoundationModel:
    """A freshly initialised model; the initial weights depend only on ``params.seed`` (the
    encoder's also not on ``n_features``: objective heads are initialised after it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_mix(params.seed, 1))
        return FoundationModel(params, channels, crop_size, n_features)


# ---------------------------------------------------------------------------------------
# training
def train(crop_paths: Sequence, outdir, params: FoundationParams | Mapping | None = None,
          resume: bool = True, progress: bool = True, stop_after: int | None = None,
          feature_tables: Sequence | None = None) -> dict:
    """Pretrain on all crops of ``crop_paths`` (one unpaired corpus); return a summary.

    Objective ``features`` also reads each bank's nuclei table (``feature_tables``, in the
    order of ``crop_paths``; by default the ``nuclei.parquet`` beside each ``crops.npy``) and
    writes their standardised region properties to ``outdir/feature_targets.npy``.

    Writes ``outdir/train_log.tsv`` (step, loss, parts, lr, crops/s), ``outdir/last.pt`` every
    ``checkpoint_every`` steps (model, optimizer, scheduler, grad scaler, step, RNG states;
    atomic), and at the end ``outdir/model.pt`` (weights + params + input shape) and
    ``outdir/config.json``. With ``resume`` and an existing ``last.pt`` training continues from
    its step; the learning-rate schedule is a function of the step and ``max_steps``, so a
    resumed run with unchanged parameters ends with the same weights as an uninterrupted
    one (bitwise on CPU; on GPU up to non-deterministic CUDA kernels).

    ``stop_after`` stops after that global step without writing ``model.pt``, as if the job
    were killed (after a checkpoint at that step). ``params.time_limit_s`` stops at a time
    budget and writes the model. Under ``torchrun`` (``WORLD_SIZE > 1``) each process takes a
    rank-strided share of every global batch (global batch = batch_size x world size) and
    only rank 0 writes.
    """
    if not isinstance(params, FoundationParams):
        params = FoundationParams.from_config(params)
    outdir = Path(outdir)
    crop_paths = [str(p) for p in crop_paths]
    if not crop_paths:
        raise CosmicInputError("foundation: no crop banks given; the pretrain step needs at least one sample's crops.npy")
    data = CropBankDataset(crop_paths)
    if len(data) == 0:
        raise CosmicInputError(
            "foundation: the corpus is empty (0 crops in " + ", ".join(f"'{p}'" for p in crop_paths)
            + "); segmentation found no nuclei: check the images, the DNA channel and the segmentation settings")
    C, S = int(data.shape[0]), int(data.shape[1])

    world, rank, local_rank = _dist_info()
    device = _resolve_device(params.device, local_rank)
    distributed = world > 1
    own_pg = False
    if distributed and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=backend)
        own_pg = True
    is_main = rank == 0
    if params.objective == "features" and feature_tables is None:
        feature_tables = [str(Path(p).with_name("nuclei.parquet")) for p in crop_paths]
    try:
        return _train(data, crop_paths, outdir, params, C, S, device, world, rank, is_main,
                      resume, progress, stop_after, feature_tables)
    finally:
        if own_pg:
            torch.distributed.destroy_process_group()


def _train(data, crop_paths, outdir, params, C, S, device, world, rank, is_main, resume, progress, stop_after,
           feature_tables):
    from tqdm.auto import tqdm

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    outdir.mkdir(parents=True, exist_ok=True)
    n_features, targets = 1, None
    if params.objective == "features":
        targets_path = outdir / "feature_targets.npy"
        if is_main:
            targets = write_feature_targets(feature_tables, crop_paths, targets_path)
        if world > 1:
            torch.distributed.barrier()
        data = CropsWithTargets(data, targets_path)
        n_features = int(data.n_features)
    _seed_all(_mix(params.seed, rank))
    model = build_model(params, C, S, n_features).to(device)
    opt = torch.optim.AdamW(_param_groups(model, params.weight_decay), lr=params.lr, betas=(0.9, 0.95),
                            fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(params.warmup_steps, params.max_steps))
    amp_dtype = _amp_dtype(params.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    last, log_path = outdir / "last.pt", outdir / "train_log.tsv"
    step = 0
    if resume and last.exists():
        ck = torch.load(last, map_location=device, weights_only=False)
        old = ck.get("params", {})
        diff = [k for k in _ARCH_KEYS if old.get(k, _LEGACY.get(k)) != getattr(params, k)]
        if ck.get("n_features", 1) != n_features:
            diff.append("number of region-property targets")
        if diff or tuple(ck.get("input_shape", ())) != (C, S):
            raise CosmicInputError(
                f"file '{last}': checkpoint was made with another architecture or crop shape "
                f"({', '.join(diff) or 'input shape'} differ); delete {outdir} to start over")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        step = int(ck["step"])
        rng = ck.get("rng", {})
        if rank in rng:
            _set_rng_state(rng[rank])
        sched.lr_lambdas[0] = _lr_lambda(params.warmup_steps, params.max_steps)
    elif not resume and is_main:
        for p in (last, log_path):
            p.unlink(missing_ok=True)
    start_step = step
    if is_main:
        _trim_log(log_path, step)

    train_model = model
    if params.compile:
        train_model = torch.compile(model)
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)

    workers = params.num_workers
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    end_step = params.max_steps if stop_after is None else min(params.max_steps, int(stop_after))
    sampler = StepBatchSampler(len(data), params.batch_size, params.seed, step, end_step, rank, world)
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=sampler, collate_fn=_identity, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None)

    def checkpoint():
        rng_states = [None] * world
        mine = _rng_state()
        if world > 1:
            torch.distributed.all_gather_object(rng_states, mine)
        else:
            rng_states = [mine]
        if is_main:
            _save_torch({
                "format": FORMAT, "step": step, "params": params.to_dict(), "input_shape": [C, S],
                "n_features": n_features, "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "rng": dict(enumerate(rng_states)), "world_size": world,
            }, last)

    model.train()
    t_start = time.perf_counter()
    t_prev = t_start
    bar = tqdm(total=end_step, initial=step, desc="pretrain", unit="step", disable=not (progress and is_main),
               dynamic_ncols=True)
    log = open(log_path, "a") if is_main else None
    if log is not None and log.tell() == 0:
        log.write("step\tloss\tparts\tlr\tcrops_per_s\telapsed_s\n")
    stopped_by_time = False
    last_loss = float("nan")
    try:
        for batch in loader:
            batch, t = batch if isinstance(batch, tuple) else (batch, None)
            x = batch.to(device, non_blocking=True)
            if t is not None:
                t = t.to(device, non_blocking=True)
            g = torch.Generator(device=device)
            g.manual_seed(_mix(params.seed, step, rank, 3))
            with torch.no_grad():
                # VICReg compares two views; MAE and features take one (region properties are
                # invariant to AUGMENT)
                views = tuple(augment(x, g, **AUGMENT) for _ in range(2 if params.objective == "vicreg" else 1))
                noise = None
                if params.objective == "mae":
                    noise = torch.rand(x.shape[0], model.n_patches, generator=g, device=device)
            with _autocast(device, amp_dtype):
                loss, parts = train_model(*views, noise=noise, targets=t)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            lr = opt.param_groups[0]["lr"]
            sched.step()
            step += 1
            now = time.perf_counter()
            cps = x.shape[0] * world / max(now - t_prev, 1e-9)
            t_prev = now
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                raise FloatingPointError(
                    f"foundation: training loss became {last_loss} at step {step}; lower foundation.lr "
                    "or set foundation.amp to 'off'")
            if log is not None:
                ptxt = ",".join(f"{k}={float(v):.5g}" for k, v in parts.items())
                log.write(f"{step}\t{last_loss:.6g}\t{ptxt}\t{lr:.6g}\t{cps:.1f}\t{now - t_start:.3f}\n")
                log.flush()
                bar.set_postfix(loss=f"{last_loss:.4f}", crops_s=f"{cps:.0f}", refresh=False)
                bar.update(1)
            over_time = params.time_limit_s is not None and now - t_start >= params.time_limit_s
            if world > 1 and params.time_limit_s is not None:
                flag = torch.tensor([float(over_time)], device=device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                over_time = bool(flag.item())
            if step % params.checkpoint_every == 0 or step == end_step or over_time:
                checkpoint()
            if over_time:
                stopped_by_time = True
                break
    finally:
        bar.close()
        if log is not None:
            log.close()
    elapsed = time.perf_counter() - t_start
    summary = {"steps": step, "start_step": start_step, "max_steps": params.max_steps,
               "stopped_by_time_limit": stopped_by_time, "elapsed_s": elapsed,
               "crops_per_s": (step - start_step) * params.batch_size * world / max(elapsed, 1e-9),
               "final_loss": last_loss, "n_crops": len(data), "input_shape": [C, S], "world_size": world,
               "device": str(device)}
    if stop_after is not None and step < params.max_steps and not stopped_by_time:
        summary["stopped_after"] = step
        return summary
    if world > 1:
        torch.distributed.barrier()
    if is_main:
        _save_torch({"format": FORMAT, "params": params.to_dict(), "input_shape": [C, S],
                     "n_features": n_features, "state_dict": model.state_dict(), "step": step}, outdir / "model.pt")
        cfg = {"params": params.to_dict(), "input_shape": [C, S], "crops": crop_paths,
               "feature_tables": list(feature_tables) if params.objective == "features" else None,
               "feature_targets": targets,
               "n_crops": len(data), "world_size": world, "device": str(device),
               "amp_dtype": str(amp_dtype) if amp_dtype else None, "summary": summary}
        write_json(outdir / "config.json", cfg)
    return summary


def _trim_log(path: Path, step: int):
    """Drop log rows written after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if ln.split("\t", 1)[0].isdigit() and int(ln.split("\t", 1)[0]) <= step]
    if step == 0:
        keep = lines[:1]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(keep))


# ---------------------------------------------------------------------------------------
# inference
def load_model(path, device=None) -> FoundationModel:
    """Load ``model.pt`` (or a ``last.pt`` checkpoint) in eval mode on ``device`` (default: GPU
    when present). The model carries ``params`` and ``input_shape`` (channels, crop size)."""
    path = Path(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as exc:
        raise CosmicInputError(f"file '{path}': foundation model not found; run the pretrain step first") from exc
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CosmicInputError(f"file '{path}': not a COSMIC foundation model; re-run the pretrain step")
    params = FoundationParams.from_config({**_LEGACY, **ck["params"]})
    C, S = ck["input_shape"]
    model = FoundationModel(params, C, S, int(ck.get("n_features", 1)))
    model.load_state_dict(ck.get("state_dict") or ck["model"])
    model.input_shape = (C, S)
    return model.to(_resolve_device(device)).eval()


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def embed_crops(model: FoundationModel, crops_path, batch_size: int = 256, device=None) -> np.ndarray:
    """N x D float32 embeddings of a crop bank, in crop-bank order, streamed in batches."""
    if device is not None:
        model = model.to(_resolve_device(device))
    dev = _model_device(model)
    data = CropBankDataset([crops_path])
    N = len(data)
    out = np.zeros((N, model.embedding_dim), dtype=np.float32)
    if N == 0:
        return out
    if tuple(data.shape) != (model.channels, model.crop_size, model.crop_size):
        raise CosmicInputError(
            f"file '{crops_path}': crops of shape {data.shape} do not match the foundation model's input "
            f"{(model.channels, model.crop_size, model.crop_size)}; re-run pretrain on these crops")
    amp = _amp_dtype(model.params.amp, dev)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for a in range(0, N, batch_size):
            x = data.__getitems__(np.arange(a, min(N, a + batch_size)))
            xb = x.to(dev, non_blocking=True)
            with _autocast(dev, amp):
                z = model.embed(xb)
            out[a:a + len(x)] = z.float().cpu().numpy()
    model.train(was_training)
    return out


def decode_embeddings(model: FoundationModel, emb, batch_size: int = 256) -> np.ndarray:
    """Render embeddings (N x D) as crops (N x C x S x S float32) with the image head."""
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[1] != model.embedding_dim:
        raise CosmicInputError(f"decode_embeddings: expected N x {model.embedding_dim} embeddings, got {emb.shape}")
    dev = _model_device(model)
    out = np.zeros((emb.shape[0], model.channels, model.crop_size, model.crop_size), dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for a in range(0, emb.shape[0], batch_size):
            z = torch.from_numpy(emb[a:a + batch_size]).to(dev)
            out[a:a + len(z)] = model.decode(z).float().cpu().numpy()
    model.train(was_training)
    return out


def random_encoder_embeddings(crops_paths, params: FoundationParams | Mapping | None = None,
                              seed: int | None = None, batch_size: int = 256, device=None) -> np.ndarray:
    """Embeddings from the same architecture at random initialisation (the seed path of
    :func:`train`: ``build_model(params)``), concatenated over ``crops_paths`` in order."""
    if isinstance(crops_paths, (str, os.PathLike)):
        crops_paths = [crops_paths]
    if not isinstance(params, FoundationParams):
        params = FoundationParams.from_config(params)
    if seed is not None:
        params = dataclasses.replace(params, seed=int(seed))
    data = CropBankDataset(crops_paths)
    if data.shape is None:
        raise CosmicInputError("random_encoder_embeddings: no crop banks given")
    model = build_model(params, data.shape[0], data.shape[1]).to(_resolve_device(device or params.device)).eval()
    parts = [embed_crops(model, p, batch_size) for p in crops_paths]
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, model.embedding_dim), np.float32)


# ---------------------------------------------------------------------------------------
# evaluation
# Inverse regularisation strengths a linear probe chooses from (by inner cross-validation on its
# training split): a fixed C favours low-dimensional representations (34 region properties vs a
# 256-value embedding), so every representation gets its own, chosen without the test nuclei.
PROBE_CS = (0.001, 0.01, 0.1, 1.0)


def linear_probe(X, y, seed: int = 0, test_fraction: float = 0.3, Cs: Sequence[float] = PROBE_CS) -> dict:
    """Held-out accuracy of a linear classifier of ``y`` from ``X``.

    Rows with missing labels are dropped, classes with fewer than 2 members too; features are
    standardised (fit on the training split), a multinomial logistic regression is fit on a
    stratified ``1 - test_fraction`` split and scored on the rest. Its inverse regularisation
    ``C`` is chosen from ``Cs`` by 3-fold stratified cross-validation inside the training split
    (reported as ``C``). Never reports training accuracy. ``chance`` is the held-out
    majority-class accuracy.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=object)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"linear_probe: X {X.shape} and y {y.shape} do not match")
    ok = np.array([v is not None and not (isinstance(v, float) and math.isnan(v)) for v in y], dtype=bool)
    X, y = X[ok], y[ok].astype(str)
    X = np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)
    cls, counts = np.unique(y, return_counts=True)
    keep = np.isin(y, cls[counts >= 2])
    X, y = X[keep], y[keep]
    cls = np.unique(y)
    nan = float("nan")
    if len(cls) < 2 or len(y) < 4:
        return {"accuracy": nan, "balanced_accuracy": nan, "chance": nan, "n_train": 0, "n_test": 0,
                "n_classes": int(len(cls))}
    n_test = max(len(cls), int(round(len(y) * test_fraction)))
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=n_test, stratify=y, random_state=seed)
    Cs = [float(c) for c in Cs]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=Cs[0]))
    _, tr_counts = np.unique(ytr, return_counts=True)
    folds = int(min(3, tr_counts.min()))
    if len(Cs) > 1 and folds >= 2:
        clf = GridSearchCV(clf, {"logisticregression__C": Cs}, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    clf.fit(Xtr, ytr)
    pred = clf.predict(Xte)
    C = clf.best_params_["logisticregression__C"] if hasattr(clf, "best_params_") else Cs[0]
    _, te_counts = np.unique(yte, return_counts=True)
    return {"accuracy": float(accuracy_score(yte, pred)), "C": float(C),
            "balanced_accuracy": float(balanced_accuracy_score(yte, pred)),
            "chance": float(te_counts.max() / te_counts.sum()),
            "n_train": int(len(ytr)), "n_test": int(len(yte)), "n_classes": int(len(cls))}


def evaluate_representations(representations: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                             seed: int = 0, test_fraction: float = 0.3, n_splits: int = 1):
    """Linear-probe table: one row per representation x target. Every representation is scored
    on the same ``n_splits`` random splits per target (split seeds ``seed``, ``seed + 1``, ...);
    ``accuracy``, ``balanced_accuracy`` and ``chance`` are means over the splits, ``accuracy_sd``
    their SD, ``C`` the regularisation chosen most often."""
    import pandas as pd

    rows = []
    for rname, X in representations.items():
        for tname, y in labels.items():
            runs = pd.DataFrame([linear_probe(X, y, seed=seed + k, test_fraction=test_fraction)
                                 for k in range(int(n_splits))])
            row = {"representation": rname, "target": tname, "dim": int(np.asarray(X).shape[1])}
            for c in ("accuracy", "balanced_accuracy", "chance"):
                row[c] = float(runs[c].mean())
            row["accuracy_sd"] = float(runs["accuracy"].std(ddof=1)) if len(runs) > 1 else float("nan")
            row["n_splits"] = int(n_splits)
            row["C"] = float(runs["C"].mode().iloc[0]) if "C" in runs else float("nan")
            for c in ("n_train", "n_test", "n_classes"):
                row[c] = int(runs[c].iloc[0])
            rows.append(row)
    return pd.DataFrame(rows)


def plot_reconstructions(model: FoundationModel, crops, path, n: int = 8, channel_names=None, seed: int = 0):
    """Gallery: for ``n`` nuclei, each channel of the real crop above the crop decoded from its
    embedding (encoder -> embedding -> image head)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    crops = np.asarray(crops)
    if crops.shape[0] == 0:
        raise CosmicInputError("plot_reconstructions: no crops to show")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(crops.shape[0], size=min(n, crops.shape[0]), replace=False))
    real = np.nan_to_num(crops[idx].astype(np.float32))
    dev = _model_device(model)
    model.eval()
    with torch.inference_mode():
        z = model.embed(torch.from_numpy(real).to(dev))
        dec = model.decode(z).float().cpu().numpy()
    C = real.shape[1]
    names = list(channel_names or [f"ch{c}" for c in range(C)])
    fig, axes = plt.subplots(2 * C, len(idx), figsize=(1.3 * len(idx) + 1, 1.3 * 2 * C + 0.8), squeeze=False)
    for c in range(C):
        vmin, vmax = np.percentile(real[:, c], [0.5, 99.5])
        for j in range(len(idx)):
            for r, (img, kind) in enumerate(((real, "real"), (dec, "decoded"))):
                ax = axes[2 * c + r, j]
                ax.imshow(img[j, c], cmap="gray", vmin=vmin, vmax=vmax)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(f"{kind}\n{names[c]}", fontsize=8)
                if 2 * c + r == 2 * C - 1:
                    ax.set_xlabel(f"crop {idx[j]}", fontsize=7)
    fig.suptitle("Foundation model: real crops vs decoded from embedding")
    fig.supxlabel("nucleus (crop index)")
    fig.supylabel("channel / kind")
    save_figure(fig, path, dpi=120)


def plot_umap(emb, labels: Mapping[str, Any], path, seed: int = 0, title: str = "Foundation embeddings"):
    """UMAP of ``emb`` (umap-learn), one panel per label column (categorical or numeric)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import umap

    emb = np.asarray(emb, dtype=np.float32)
    from sklearn.preprocessing import StandardScaler

    xy = umap.UMAP(n_neighbors=15, min_dist=0.3, random_state=seed).fit_transform(StandardScaler().fit_transform(emb))
    labels = dict(labels) or {"": np.zeros(len(emb))}
    k = len(labels)
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 4), squeeze=False)
    for ax, (name, vals) in zip(axes[0], labels.items()):
        vals = np.asarray(vals)
        if vals.dtype.kind in "fiu" and len(np.unique(vals[~np.isnan(vals.astype(float))])) > 12:
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=vals, s=3, cmap="viridis")
            fig.colorbar(sc, ax=ax, label=name)
        else:
            vs = vals.astype(str)
            for u in np.unique(vs):
                m = vs == u
                ax.scatter(xy[m, 0], xy[m, 1], s=3, label=u)
            ax.legend(markerscale=3, fontsize=7, title=name, loc="best")
        ax.set_title(f"coloured by {name}")
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
    fig.suptitle(title)
    save_figure(fig, path, dpi=120)


# ---------------------------------------------------------------------------------------
# command line
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m cosmic.foundation", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="pretrain on crop banks (run under torchrun for several GPUs)")
    t.add_argument("--crops", nargs="+", required=True, help="crops.npy of every sample")
    t.add_argument("--outdir", required=True)
    t.add_argument("--tables", nargs="+", help="nuclei.parquet of every sample, in --crops order (objective "
                   "'features'; default: the nuclei.parquet beside each crops.npy)")
    t.add_argument("--config", help="JSON file holding the foundation: block (a mapping of FoundationParams keys)")
    t.add_argument("--no-resume", action="store_true", help="ignore an existing last.pt")
    t.add_argument("--no-progress", action="store_true")
    e = sub.add_parser("embed", help="embed one crop bank")
    e.add_argument("--model", required=True)
    e.add_argument("--crops", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--device", default=None)
    a = ap.parse_args(argv)
    if a.cmd == "train":
        cfg = {}
        if a.config:
            cfg = json.loads(Path(a.config).read_text())
            if isinstance(cfg, dict) and "foundation" in cfg and isinstance(cfg["foundation"], dict):
                cfg = cfg["foundation"]
        summary = train(a.crops, a.outdir, FoundationParams.from_config(cfg), resume=not a.no_resume,
                        progress=not a.no_progress, feature_tables=a.tables)
        if _dist_info()[1] == 0:
            print(json.dumps(summary))
    else:
        model = load_model(a.model, a.device)
        emb = embed_crops(model, a.crops, a.batch_size)
        with atomic_path(a.out) as tmp:
            np.save(tmp, emb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
