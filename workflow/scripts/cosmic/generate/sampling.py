"""Sampling: :func:`generate` draws nucleus crops for cells from their RNA latents (guided DDIM),
:func:`generate_to_file` streams them into an ``.npy`` written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import CosmicInputError
from ..foundation.runtime import _amp_dtype, _autocast, _mix
from .model import ConditionalNucleusDiffusion, sampling_schedule


def generate(model: ConditionalNucleusDiffusion, conditions, n_per_cell: int | None = None,
             guidance_scale: float | None = None, seed: int = 0, batch_size: int | None = None,
             sampling_steps: int | None = None, progress: bool = True, out=None) -> np.ndarray:
    """``n_per_cell`` crops for each of the M cells of ``conditions`` (M x d RNA latents):
    a float32 array n_per_cell x M x C x S x S in the crops' original intensity units (channels
    ``params.channels``, size ``params.crop_size``).

    Deterministic DDIM (``sampling_steps``, default the model's) from starting noise that is a
    function of (``seed``, row of ``conditions``, replicate) only, so results do not depend on
    ``batch_size`` (images per denoiser batch; default ``sample_batch_size``). Classifier-free
    guidance with ``guidance_scale`` (default the model's): 0 is the unconditional model, 1 the
    conditional one. ``out``: optional array-like of that shape (e.g. an ``.npy`` memmap) to fill
    instead of a new array. Defaults come from ``model.params``; ``None`` means "use it".
    """
    from tqdm.auto import tqdm

    params = model.params
    n_per_cell = _count("n_per_cell", params.n_generated if n_per_cell is None else n_per_cell)
    w = float(params.guidance_scale if guidance_scale is None else guidance_scale)
    if not np.isfinite(w) or w < 0:
        raise CosmicInputError(f"generate: guidance_scale must be a number >= 0, got {guidance_scale!r}")
    batch_size = _count("batch_size", params.sample_batch_size if batch_size is None else batch_size)
    cond = _conditions(conditions, model.cond_dim)
    M = cond.shape[0]
    shape = (n_per_cell, M) + model.image_shape
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif tuple(out.shape) != shape:
        raise CosmicInputError(f"generate: out has shape {tuple(out.shape)}, expected {shape}")
    sched = sampling_schedule(params, sampling_steps)
    was_training = model.training
    model.eval()
    jobs = np.arange(n_per_cell * M)  # job k: replicate k // M of cell k % M
    bar = tqdm(total=len(jobs), desc="generate nuclei", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        for a in range(0, len(jobs), batch_size):
            k = jobs[a:a + batch_size]
            rep, cell = k // M, k % M
            x = _denoise(model, sched, _start_noise(model, seed, cell, rep), cond[cell], w)
            out[rep, cell] = x
            bar.update(len(k))
    finally:
        bar.close()
        model.train(was_training)
    return out


def generate_to_file(model: ConditionalNucleusDiffusion, conditions, path, **kwargs) -> Path:
    """:func:`generate` into the ``.npy`` at ``path`` (float32, n_per_cell x M x C x S x S),
    streamed batch by batch through a memory map and moved into place only when complete."""
    M = _conditions(conditions, model.cond_dim).shape[0]
    n = _count("n_per_cell", model.params.n_generated if kwargs.get("n_per_cell") is None else kwargs["n_per_cell"])
    kwargs["n_per_cell"] = n
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, M) + model.image_shape)
        generate(model, conditions, out=out, **kwargs)
        out.flush()
        del out
    return Path(path)


def _count(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise CosmicInputError(f"generate: {name} must be a positive integer, got {v!r}")
    return int(v)


def _conditions(conditions, d: int) -> np.ndarray:
    cond = np.asarray(conditions, dtype=np.float32)
    if cond.ndim != 2 or cond.shape[1] != d:
        raise CosmicInputError(f"generate: conditions must be an M x {d} array (the RNA latent the generator "
                               f"was trained on), got shape {cond.shape}")
    if not np.isfinite(cond).all():
        raise CosmicInputError("generate: conditions contain NaN or infinite values")
    return cond


def _start_noise(model: ConditionalNucleusDiffusion, seed: int, cell: np.ndarray, rep: np.ndarray) -> torch.Tensor:
    """Standard normal x_T per image, each from its own generator seeded by (seed, cell, replicate)."""
    g = torch.Generator()
    x = torch.empty((len(cell),) + model.image_shape)
    for j, (i, r) in enumerate(zip(cell.tolist(), rep.tolist())):
        g.manual_seed(_mix(seed, i, r, 23))
        x[j] = torch.randn(model.image_shape, generator=g)
    return x


@torch.no_grad()
def _denoise(model: ConditionalNucleusDiffusion, sched, x: torch.Tensor, cond: np.ndarray, w: float) -> np.ndarray:
    """Run the DDIM chain from ``x`` (x_T) with guidance ``w``; crops in original units (numpy)."""
    dev = model.device
    amp = _amp_dtype(model.params.mixed_precision, dev)
    x = x.to(dev)
    c = torch.from_numpy(cond).to(dev)
    for t in sched.timesteps:
        tt = torch.full((x.shape[0],), int(t), device=dev, dtype=torch.long)
        with _autocast(dev, amp):
            x0 = model.predict(x, tt, c, w)
        x = sched.step(x0.float(), t, x, eta=0.0).prev_sample
    return model.from_model_units(x).cpu().numpy()
