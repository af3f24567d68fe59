"""Residual diffusion: the spread of a target around its conditional mean, learned as a denoising
diffusion model over a low-rank residual basis.

A target ``y`` (all kept genes' expression, or the morphology representation) given a condition
``c`` is modelled as ``y = mean(c) + r``. The residual ``r`` is represented by

* its leading ``rank`` principal directions (fitted on training residuals), whose standardised
  scores ``z`` follow a conditional diffusion model ``p(z | c)`` (x0-prediction MLP, the schedule,
  noising and ancestral sampling from :mod:`diffusers`' :class:`~diffusers.DDPMScheduler`), so
  samples keep the joint structure of real cells (size, perimeter and DNA content move together;
  co-expressed genes rise together);
* plus independent Gaussian noise per output for the variance the leading directions leave out.

After training, :meth:`ResidualDiffusion.match_moments` maps the drawn scores so that, pooled over the
training cells, their within-cell covariance is the identity, like the training residuals' scores: a
denoiser fitted on a few hundred cells otherwise gets the weaker correlations between outputs wrong in
a different way in every split.

Memory and time are linear in the number of outputs (``outputs x rank`` for the basis), so a head
over 20,000 genes is cheap. ``calib_scale`` (per output, fitted on validation cells by
:func:`cosmic.crossmodal.prediction.calibrate_model`) scales the samples' spread for calibrated
predictive intervals.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def make_scheduler(n_steps: int, clip: float | None = None):
    """The noise schedule: ``n_steps`` DDPM steps on the cosine (``squaredcos_cap_v2``) schedule, which
    reaches almost pure noise at the last step even for a handful of steps; the network predicts x0,
    clipped to ``[-clip, clip]`` while sampling when ``clip`` is given."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=int(n_steps), beta_schedule="squaredcos_cap_v2",
                         prediction_type="sample", clip_sample=clip is not None,
                         clip_sample_range=float(clip) if clip is not None else 1.0)


class Denoiser(nn.Module):
    """x0-prediction MLP: ``(noisy scores z_t, step t, condition features c) -> z_0``."""

    def __init__(self, dim: int, cond_dim: int, hidden: int, n_layers: int, n_steps: int, dropout: float = 0.0,
                 condition_noise: float = 0.0):
        super().__init__()
        self.condition_noise = float(condition_noise)
        self.step_embedding = nn.Embedding(n_steps, hidden)
        self.inputs = nn.Linear(dim + cond_dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
                                                  nn.Linear(hidden, hidden)) for _ in range(n_layers))
        self.output = nn.Sequential(nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, z_t, t, c):
        if self.training and self.condition_noise > 0:
            # each training cell is the only draw at its exact condition: jittering the condition keeps the
            # network from memorising that cell's residual (which would collapse the spread at new cells)
            c = c + self.condition_noise * torch.randn_like(c)
        h = self.inputs(torch.cat([z_t, c], 1)) + self.step_embedding(t)
        for block in self.blocks:
            h = h + block(h)
        return self.output(h)


class ResidualDiffusion(nn.Module):
    """``p(y - mean | c)``: a conditional diffusion over the residual's leading principal scores plus
    independent per-output Gaussian noise for the rest (see the module docstring).

    Call :meth:`fit_basis` with training residuals before training; then :meth:`loss` per batch and
    :meth:`sample` for draws. ``cond_dim`` is the width of the condition features the caller passes.
    """

    def __init__(self, out_dim: int, cond_dim: int, rank: int, hidden: int, n_layers: int, n_steps: int,
                 dropout: float = 0.0, condition_noise: float = 0.0):
        super().__init__()
        self.out_dim, self.rank, self.n_steps = int(out_dim), int(rank), int(n_steps)
        self.denoiser = Denoiser(self.rank, cond_dim, hidden, n_layers, self.n_steps, dropout,
                                 condition_noise) if self.rank else None
        self.register_buffer("basis", torch.zeros(self.rank, self.out_dim))  # orthonormal rows
        self.register_buffer("score_scale", torch.ones(self.rank))  # SD of each score on training cells
        self.register_buffer("leftover_sd", torch.zeros(self.out_dim))  # per-output SD outside the basis
        self.register_buffer("score_limit", torch.full((), 8.0))  # largest |score| of a training cell
        # maps drawn scores so their pooled within-cell covariance on training cells is the identity (as the
        # training residuals' standardised scores are); see match_moments
        self.register_buffer("score_map", torch.eye(self.rank))
        self.register_buffer("calib_scale", torch.ones(self.out_dim))  # fitted on validation cells
        self.register_buffer("residual_mean", torch.zeros(self.out_dim), persistent=False)  # while fitting
        self._scheduler = None

    @property
    def scheduler(self):
        if self._scheduler is None:
            # predicted scores never leave the range seen in training: a denoiser extrapolating at an
            # unusual condition otherwise sends a few draws far into the tails
            self._scheduler = make_scheduler(self.n_steps, clip=float(self.score_limit))
        return self._scheduler

    @torch.no_grad()
    def fit_basis(self, residuals: torch.Tensor, mean: torch.Tensor | None = None,
                  variance: torch.Tensor | None = None):
        """Leading principal directions of training residuals (cells x outputs), their scores' SD, and
        the per-output SD left outside them. ``residuals`` may be a random subset of the training cells'
        when ``mean`` and ``variance`` (per output) are those of all of them; :meth:`refit_spread` then
        measures the spread on every cell."""
        r = residuals.float()
        mean = r.mean(0) if mean is None else mean.float().to(r.device)
        r = r - mean[None]  # the mean head absorbs the average residual
        total_var = r.var(0, unbiased=False) if variance is None else variance.float().to(r.device)
        self.residual_mean.copy_(mean)
        if self.rank:
            q = min(self.rank + 10, min(r.shape))
            _, s, v = torch.svd_lowrank(r, q=q, niter=4)
            k = min(self.rank, v.shape[1])
            basis = torch.zeros(self.rank, self.out_dim, device=r.device)
            basis[:k] = v[:, :k].T
            scale = torch.ones(self.rank, device=r.device)
            scale[:k] = (s[:k] / math.sqrt(max(1, len(r)))).clamp_min(1e-6)
            self.basis.copy_(basis)
            self.score_scale.copy_(scale)
            self.score_limit.fill_(float(self.scores(r).abs().max()))
            self._scheduler = None
            explained = ((basis.T * scale[None, :]) ** 2).sum(1)
        else:
            explained = torch.zeros_like(total_var)
        self.leftover_sd.copy_((total_var - explained).clamp_min(0.0).sqrt())

    @torch.no_grad()
    def refit_spread(self, chunks):
        """With the basis fixed, the scores' SD, the sampling clip and the per-output SD outside the basis
        over every training cell (``chunks``: an iterable of residual blocks, cells x outputs), centred as
        in :meth:`fit_basis`; used when the basis was fitted on a subset of the cells."""
        n, squares, largest = 0, None, None
        outside = torch.zeros(self.out_dim, dtype=torch.float64, device=self.basis.device)
        for block in chunks:
            r = block.float() - self.residual_mean[None]
            raw = r @ self.basis.T
            outside += ((r - raw @ self.basis) ** 2).sum(0).double()
            part, top = (raw.double() ** 2).sum(0), raw.abs().amax(0)
            squares = part if squares is None else squares + part
            largest = top if largest is None else torch.maximum(largest, top)
            n += len(r)
        if not n:
            return
        self.leftover_sd.copy_((outside / n).sqrt().float())
        if self.rank:
            used = self.basis.abs().sum(1) > 0
            scale = torch.where(used, (squares / n).sqrt().float().clamp_min(1e-6), self.score_scale)
            self.score_scale.copy_(scale)
            self.score_limit.fill_(float((largest / scale).max()))
            self._scheduler = None

    def scores(self, residuals: torch.Tensor) -> torch.Tensor:
        """Standardised principal scores of residuals."""
        return residuals @ self.basis.T / self.score_scale

    def loss(self, residuals: torch.Tensor, c: torch.Tensor, generator: torch.Generator | None = None):
        """Per-cell x0-prediction loss at a random step (mean over score dimensions)."""
        if not self.rank:
            return torch.zeros(len(c), device=c.device)
        z0 = self.scores(residuals)
        t = torch.randint(0, self.n_steps, (len(z0),), device=z0.device, generator=generator)
        noise = torch.randn(z0.shape, device=z0.device, generator=generator)
        z_t = self.scheduler.add_noise(z0, noise, t)
        return ((self.denoiser(z_t, t, c) - z0) ** 2).mean(1)

    @torch.no_grad()
    def sample_scores(self, c: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw of standardised scores per row of ``c`` by ancestral DDPM sampling."""
        scheduler = self.scheduler
        scheduler.set_timesteps(self.n_steps)
        z = torch.randn((len(c), self.rank), device=c.device, generator=generator)
        for t in scheduler.timesteps:
            steps = torch.full((len(c),), int(t), dtype=torch.long, device=c.device)
            z = scheduler.step(self.denoiser(z, steps, c), t, z, generator=generator).prev_sample
        return z

    @torch.no_grad()
    def match_moments(self, c: torch.Tensor, n: int = 8, generator: torch.Generator | None = None):
        """Fit :attr:`score_map` at the training cells' conditions ``c``: ``n`` draws per cell, centred per
        cell, give the denoiser's pooled within-cell covariance ``W`` of the scores; the map is
        ``W^(-1/2)``. The training residuals' scores have identity covariance by construction, but a
        denoiser fitted on a few hundred cells reproduces it only roughly, and its errors differ from
        split to split (e.g. the correlation of nuclear size with eccentricity); the map restores the
        empirical covariance while keeping how the spread and the directions change with the condition."""
        if not self.rank or len(c) < 2 or n < 2:
            return
        z = self.sample_scores(c.repeat(n, 1), generator).view(n, len(c), self.rank).double()
        z = z - z.mean(0, keepdim=True)
        within = torch.einsum("ncr,ncs->rs", z, z) / (len(c) * (n - 1))
        values, vectors = torch.linalg.eigh(within)
        values = values.clamp_min(1e-6 * float(values.max().clamp_min(1e-12)))
        self.score_map.copy_((vectors / values.sqrt()) @ vectors.T)

    @torch.no_grad()
    def sample(self, c: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n x cells x outputs`` residual draws (calibrated spread).

        The residual around the conditional mean has mean zero, so with ``n >= 8`` each cell's draws are
        centred on it (and rescaled by ``sqrt(n / (n - 1))`` to keep their spread); a denoiser that drifts
        at conditions unlike the training cells would otherwise shift every draw of that cell."""
        cells = len(c)
        out = torch.zeros((n, cells, self.out_dim), device=c.device)
        if self.rank:
            z = self.sample_scores(c.repeat(n, 1), generator).view(n, cells, self.rank)
            if n >= 8:
                z = (z - z.mean(0, keepdim=True)) * math.sqrt(n / (n - 1))
            out += ((z @ self.score_map.T) * self.score_scale) @ self.basis
        out += self.leftover_sd * torch.randn(out.shape, device=c.device, generator=generator)
        return out * self.calib_scale
