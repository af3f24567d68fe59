"""Augmentations (batched, in torch, on the training device): :func:`augment` and the
nuclei-preserving recipe :data:`AUGMENT` that training applies."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
