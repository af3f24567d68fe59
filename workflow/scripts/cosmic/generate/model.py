"""The conditional denoiser (:class:`ConditionalNucleusDiffusion`): a diffusers
``UNet2DConditionModel`` that cross-attends to the cell's RNA latent, the noise schedules, the
classifier-free guidance, the crops' intensity scaling, and saving / loading.

Objective: the network predicts the clean crop x0 (diffusers ``prediction_type="sample"``), not
the noise epsilon. Three reasons: (1) the CPU preset trains for a few hundred steps, and the x0
loss weights the noisy timesteps, where the nucleus's size, shape and brightness are decided
(what the RNA condition should control), more than the epsilon loss does (x0-MSE = eps-MSE x
(1 - abar) / abar); (2) with few DDIM steps the sampler's x0 estimate is the network output itself
(clipped to the data range), not epsilon amplified by 1 / sqrt(abar) at high noise, which is
unstable for an undertrained network; (3) the residual diffusion of the cosmic stage
(:mod:`cosmic.crossmodal.diffusion`) makes the same choice, on the same cosine schedule.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CosmicInputError
from ..foundation.runtime import _resolve_device, _save_torch
from .params import FORMAT, GenerateParams


def resolve_device(device) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or a ``torch.device``."""
    if device == "cuda" and not torch.cuda.is_available():
        raise CosmicInputError("generate: device 'cuda' requested but no CUDA GPU is visible; "
                               "set generate.device to 'auto' or 'cpu'")
    return _resolve_device(device)


def build_unet(params: GenerateParams, n_channels: int, cross_dim: int):
    """The diffusers U-Net of ``params``: plain ResNet levels above ``attention_resolution``,
    cross-attention levels (self-attention, cross-attention to the condition tokens) at and below
    it, always at the lowest level and in the middle block."""
    from diffusers import UNet2DConditionModel

    ch = params.block_out_channels
    n = len(ch)
    attn = [i == n - 1 or (params.crop_size >> i) <= params.attention_resolution for i in range(n)]
    return UNet2DConditionModel(
        sample_size=params.crop_size, in_channels=n_channels, out_channels=n_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        block_out_channels=ch, layers_per_block=params.layers_per_block, cross_attention_dim=cross_dim,
        # diffusers reads ``attention_head_dim`` as the number of heads (its issue #2011)
        attention_head_dim=tuple(c // params.attention_head_dim for c in ch),
        norm_num_groups=math.gcd(32, *ch))


def noise_schedule(params: GenerateParams):
    """Training schedule: ``train_timesteps`` DDPM steps on the cosine schedule (almost pure noise
    at the last step, gentle at the first, as suits small images); x0 prediction, clipped to
    the data range [-1, 1] while sampling."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=params.train_timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type="sample", clip_sample=True, clip_sample_range=1.0)


def sampling_schedule(params: GenerateParams, steps: int | None = None):
    """Deterministic DDIM (eta = 0) on the training schedule, ``steps`` steps (default
    ``sampling_steps``), "trailing" spacing so the first step starts from pure noise."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(noise_schedule(params).config, timestep_spacing="trailing",
                                      set_alpha_to_one=True)
    sched.set_timesteps(int(steps or params.sampling_steps))
    return sched


def guide(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)``.

    Applied to the x0 predictions; the same as guiding epsilon, because at fixed x_t epsilon is
    an affine function of x0 (eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)) with the same
    coefficients for both predictions."""
    return uncond + scale * (cond - uncond)


class ConditionalNucleusDiffusion(nn.Module):
    """Nucleus crops given a cell's RNA latent.

    The latent (B x d, standardised with the paired training cells' mean and SD) is projected by
    one linear layer to ``condition_tokens`` tokens of width ``cross_dim`` that the U-Net
    cross-attends to (``encoder_hidden_states``). A dropped condition (pretraining,
    ``condition_dropout`` of the fine-tuning steps, the unconditional half of guidance) is
    replaced by learned "null" tokens. Intensities: crops (bank channels ``params.channels``,
    resized to ``crop_size``) are mapped to [-1, 1] per channel by the 0.1 / 99.9 percentiles of
    training crops (``scale_lo`` / ``scale_hi``) and back by :meth:`from_model_units`.
    """

    def __init__(self, params: GenerateParams, cond_dim: int, bank_shape=None):
        super().__init__()
        self.params = params
        self.cond_dim = int(cond_dim)
        self.bank_shape = tuple(bank_shape) if bank_shape is not None else None
        self.cross_dim = int(params.cross_attention_dim or cond_dim)
        self.n_channels = len(params.channels)
        T = params.condition_tokens
        self.unet = build_unet(params, self.n_channels, self.cross_dim)
        self.cond_proj = nn.Linear(self.cond_dim, T * self.cross_dim)
        self.null_tokens = nn.Parameter(torch.randn(T, self.cross_dim) * 0.02)
        self.register_buffer("cond_mean", torch.zeros(self.cond_dim))
        self.register_buffer("cond_sd", torch.ones(self.cond_dim))
        self.register_buffer("scale_lo", torch.zeros(self.n_channels))
        self.register_buffer("scale_hi", torch.ones(self.n_channels))
        self.info: dict = {}

    @property
    def device(self) -> torch.device:
        return self.null_tokens.device

    @property
    def image_shape(self) -> tuple:
        """(channels, crop size, crop size) of generated crops."""
        return (self.n_channels, self.params.crop_size, self.params.crop_size)

    # conditioning -----------------------------------------------------------------------
    def tokens(self, cond: torch.Tensor | None, drop: torch.Tensor | None = None, batch: int | None = None):
        """B x T x cross_dim condition tokens; the null tokens where ``drop`` (or for ``cond=None``)."""
        if cond is None:
            return self.null_tokens.unsqueeze(0).expand(batch, -1, -1)
        z = (cond.to(self.cond_mean.dtype) - self.cond_mean) / self.cond_sd
        tok = self.cond_proj(z).view(z.shape[0], -1, self.cross_dim)
        if drop is not None:
            tok = torch.where(drop.view(-1, 1, 1), self.null_tokens.unsqueeze(0).to(tok.dtype), tok)
        return tok

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        """The x0 prediction for noisy crops ``x_t`` at timesteps ``t`` (B,), given ``cond``
        (B x d; ``None`` = unconditional) with the rows of boolean ``drop`` unconditional."""
        enc = self.tokens(cond, drop, x_t.shape[0])
        return self.unet(x_t, t, encoder_hidden_states=enc, return_dict=False)[0]

    @torch.no_grad()
    def predict(self, x_t, t, cond=None, guidance_scale: float = 1.0) -> torch.Tensor:
        """Guided x0 prediction. Scale 0 is the unconditional model and scale 1 the conditional
        one, exactly (each then runs one pass); other scales run both and :func:`guide` them."""
        w = float(guidance_scale)
        if cond is None or w == 0.0:
            return self(x_t, t, None)
        if w == 1.0:
            return self(x_t, t, cond)
        return guide(self(x_t, t, None), self(x_t, t, cond), w)

    # intensities ------------------------------------------------------------------------
    def to_model_units(self, crops: torch.Tensor) -> torch.Tensor:
        """Bank crops (B x C_bank x S x S, original units) -> model input: the generator's
        channels, resized to ``crop_size`` (antialiased bilinear), scaled to [-1, 1]."""
        x = crops[:, list(self.params.channels)].float()
        S = self.params.crop_size
        if x.shape[-1] != S or x.shape[-2] != S:
            x = F.interpolate(x, size=(S, S), mode="bilinear", antialias=True, align_corners=False)
        lo, hi = self.scale_lo.view(1, -1, 1, 1), self.scale_hi.view(1, -1, 1, 1)
        return ((x - lo) / (hi - lo) * 2 - 1).clamp_(-1, 1)

    def from_model_units(self, x: torch.Tensor) -> torch.Tensor:
        """Model output in [-1, 1] -> crops in the original intensity units."""
        lo, hi = self.scale_lo.view(1, -1, 1, 1), self.scale_hi.view(1, -1, 1, 1)
        return (x.float().clamp(-1, 1) + 1) / 2 * (hi - lo) + lo

    # persistence ------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write weights, parameters and training summary to ``path`` (atomic ``torch.save``)."""
        from ..atomic import jsonable

        _save_torch({"format": FORMAT, "params": self.params.to_dict(), "cond_dim": self.cond_dim,
                     "bank_shape": list(self.bank_shape) if self.bank_shape else None,
                     "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                     "info": jsonable(self.info)}, path)
        return Path(path)

    @classmethod
    def load(cls, path, device=None) -> "ConditionalNucleusDiffusion":
        """A model written by :meth:`save`, in eval mode on ``device`` (default: the parameters'
        ``device``, i.e. CUDA when present)."""
        path = Path(path)
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise CosmicInputError(f"file '{path}': image generator not found; run the generate step first") from exc
        except Exception as exc:
            raise CosmicInputError(f"file '{path}': unreadable image generator ({exc}); delete it and re-run "
                                   "the generate step") from exc
        if not isinstance(ck, dict) or ck.get("format") != FORMAT:
            raise CosmicInputError(f"file '{path}': not a COSMIC image generator ({FORMAT}); re-run the generate step")
        params = GenerateParams.from_config(ck["params"])
        model = cls(params, ck["cond_dim"], ck.get("bank_shape"))
        model.load_state_dict(ck["state_dict"])
        model.info = dict(ck.get("info") or {})
        return model.to(resolve_device(device or params.device)).eval()

    def n_parameters(self) -> int:
        return int(sum(p.numel() for p in self.parameters()))


def standardisation(conditions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and SD (constant dimensions: SD 1) of the paired training conditions."""
    mean = conditions.mean(0, dtype=np.float64)
    sd = conditions.std(0, dtype=np.float64)
    sd[~(sd > 1e-8 * (1 + np.abs(mean)))] = 1.0
    return mean.astype(np.float32), sd.astype(np.float32)
