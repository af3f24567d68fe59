"""Where and how training runs: torchrun's process (rank, world size), the device, mixed
precision (autocast dtype), seeding and RNG state (saved in checkpoints for exact resumption),
and atomic ``torch.save``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import CosmicInputError


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


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _mix(*ints) -> int:
    """Deterministic 63-bit seed from integers (splitmix64-style)."""
    h = 0x9E3779B97F4A7C15
    for v in ints:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def array_digest(arrays) -> str:
    """First 16 hex digits of the SHA-256 of the arrays' bytes (C order), in turn: the identity of a
    checkpoint's training data."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


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
