"""Training: :func:`fit_generator` pretrains the denoiser unconditionally on all crops, then
fine-tunes it on the paired crops with their RNA latents (condition dropout for classifier-free
guidance); atomic checkpoints with a fingerprint, automatic resumption."""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_path, write_json
from ..errors import CosmicInputError
from ..foundation.augmentation import augment
from ..foundation.data import StepBatchSampler
from ..foundation.runtime import _amp_dtype, _autocast, _mix, _save_torch, array_digest
from ..foundation.training import _log_step, _lr_lambda, _open_log, _param_groups, _trim_log
from .data import check_inputs, fit_intensity_scale, read_crops
from .model import ConditionalNucleusDiffusion, noise_schedule, resolve_device, standardisation
from .params import FORMAT, GenerateParams

log = logging.getLogger(__name__)
PHASES = ("pretrain", "finetune")
CHECKPOINT = "last.pt"
MODEL = "model.pt"
TRAIN_LOG = "train_log.tsv"
# the log as training goes, kept with the checkpoint: Snakemake deletes a rule's declared outputs
# (TRAIN_LOG among them) before rerunning it, while a resumed run needs the rows of earlier sessions
WORKING_LOG = "last_log.tsv"


@dataclass
class _Fit:
    """One training run: inputs, the model with its optimiser, gradient scaler and EMA weights,
    and where it stands (phase index, optimiser steps done in that phase)."""

    params: GenerateParams
    crops: object
    conditions: np.ndarray
    paired_idx: np.ndarray
    model: ConditionalNucleusDiffusion
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    schedule: object
    ema: list
    fingerprint: str
    outdir: Path | None
    phase: int = 0
    step: int = 0
    stats: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def steps(self, phase: int) -> int:
        return (self.params.pretrain_steps, self.params.finetune_steps)[phase]

    def global_step(self) -> int:
        return self.params.pretrain_steps * (self.phase > 0) + self.step


def fit_generator(crops, conditions, paired, params: GenerateParams | Mapping | None = None, outdir=None,
                  progress: bool = True, resume: bool = True,
                  callback: Callable[[str, int, float], None] | None = None) -> ConditionalNucleusDiffusion:
    """Train the RNA -> nucleus image generator; return it (EMA weights, eval mode).

    ``crops``: N x C x S x S array-like (a memory-mapped ``crops.npy``; or a
    :class:`~cosmic.foundation.data.CropBankDataset` over several banks), read one minibatch at a
    time. ``conditions``: N x d float RNA latents; only the rows of ``paired`` crops are read.
    ``paired``: boolean mask of the crops whose condition is valid (training cells only).

    Phase ``pretrain`` (``pretrain_steps``): all crops, condition always dropped (unconditional).
    Phase ``finetune`` (``finetune_steps``): paired crops, each condition dropped with
    probability ``condition_dropout``. AdamW with warm-up and cosine decay per phase, gradient
    clipping at norm 1, mixed precision on CUDA only, EMA of the weights. Every random draw is a
    function of (seed, phase, step).

    With ``outdir``: ``last.pt`` every ``checkpoint_every`` steps and at each phase's end
    (atomic; model, EMA, optimiser, phase and step, and a fingerprint of the parameters and the
    data's shape); with ``resume`` an interrupted run continues from it (bitwise the same
    weights on CPU); a checkpoint with another fingerprint (other parameters, or other data: the
    training cells, their latents and the crops' intensity range) is discarded. ``train_log.tsv``
    logs every step of every session (also when a finished checkpoint is reused) and ``model.pt``
    the finished model (:meth:`ConditionalNucleusDiffusion.load`).
    ``callback(phase, step, loss)`` runs after every step (and its checkpoint).
    """
    params = params if isinstance(params, GenerateParams) else GenerateParams.from_config(params)
    n, bank_shape, conditions, paired_idx = check_inputs(crops, conditions, paired, params.channels)
    if params.finetune_steps > 0 and len(paired_idx) == 0:
        raise CosmicInputError("generate: no paired crops to fine-tune on (paired is all false); pass the crops "
                               "of training cells with an RNA latent, or set generate.finetune_steps to 0")
    if bank_shape[1] < params.crop_size:
        log.warning("generate: crops of %d px are upsampled to crop_size %d; set the nuclei crop_size to at least "
                    "%d for sharp training images", bank_shape[1], params.crop_size, params.crop_size)
    outdir = Path(outdir) if outdir is not None else None
    fit = _set_up(params, crops, conditions, paired_idx, bank_shape, outdir)
    if outdir is not None:
        outdir.mkdir(parents=True, exist_ok=True)
        if resume:
            _resume(fit)
        _trim_log(outdir / WORKING_LOG, fit.global_step())
    while True:
        _run_phase(fit, progress, callback)
        if fit.phase == len(PHASES) - 1:
            break
        fit.phase, fit.step = fit.phase + 1, 0
    if outdir is not None:
        _publish_log(outdir)
    return _finish(fit, n, bank_shape)


def _publish_log(outdir: Path):
    """Copy the working log (every step of every session) to ``train_log.tsv``, atomically."""
    _open_log(outdir / WORKING_LOG).close()  # a header at least, when no step ever ran
    with atomic_path(outdir / TRAIN_LOG) as tmp:
        shutil.copyfile(outdir / WORKING_LOG, tmp)


def _data_digest(conditions: np.ndarray, paired_idx: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> str:
    """Digest of what a run trains on beyond its sizes: which crops are paired (the split's training
    cells), their RNA latents and the crops' intensity range, so that a checkpoint of another split or
    of re-made crops with the same sizes is never resumed (it would have seen this split's test cells)."""
    return array_digest([np.asarray(paired_idx, dtype=np.int64), np.asarray(conditions[paired_idx], dtype=np.float32),
                         np.asarray(lo, dtype=np.float32), np.asarray(hi, dtype=np.float32)])


# ---------------------------------------------------------------------------------------
# set-up and checkpoints
def _set_up(params, crops, conditions, paired_idx, bank_shape, outdir) -> _Fit:
    """The model (initialised from the seed on the CPU, then moved), its intensity scale and
    condition standardisation, AdamW, the gradient scaler (fp16 only) and the EMA copy."""
    device = resolve_device(params.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_mix(params.seed, 1))
        model = ConditionalNucleusDiffusion(params, conditions.shape[1], bank_shape)
    lo, hi = fit_intensity_scale(crops, params.channels, params.seed)
    model.scale_lo.copy_(torch.from_numpy(lo))
    model.scale_hi.copy_(torch.from_numpy(hi))
    if len(paired_idx):
        mean, sd = standardisation(conditions[paired_idx])
        model.cond_mean.copy_(torch.from_numpy(mean))
        model.cond_sd.copy_(torch.from_numpy(sd))
    model.to(device).train()
    opt = torch.optim.AdamW(_param_groups(model, params.weight_decay), lr=params.lr, betas=(0.9, 0.999),
                            fused=device.type == "cuda")
    amp_dtype = _amp_dtype(params.mixed_precision, device)
    fingerprint = params.fingerprint(n_crops=len(conditions), bank_shape=list(bank_shape),
                                     cond_dim=int(conditions.shape[1]), n_paired=len(paired_idx),
                                     data=_data_digest(conditions, paired_idx, lo, hi))
    return _Fit(params=params, crops=crops, conditions=conditions, paired_idx=paired_idx, model=model, opt=opt,
                scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16), amp_dtype=amp_dtype,
                schedule=noise_schedule(params), ema=[p.detach().clone() for p in model.parameters()],
                fingerprint=fingerprint, outdir=outdir)


def _checkpoint(fit: _Fit):
    _save_torch({"format": FORMAT + "-checkpoint", "fingerprint": fit.fingerprint, "phase": fit.phase,
                 "step": fit.step, "model": fit.model.state_dict(), "ema": fit.ema,
                 "optimizer": fit.opt.state_dict(),
                 "scaler": fit.scaler.state_dict() if fit.scaler.is_enabled() else None},
                fit.outdir / CHECKPOINT)


def _resume(fit: _Fit):
    """Continue from ``last.pt`` when its fingerprint matches; otherwise start over."""
    path = fit.outdir / CHECKPOINT
    if not path.exists():
        return
    try:
        ck = torch.load(path, map_location=fit.device, weights_only=True)
    except Exception as exc:  # a checkpoint is written atomically; unreadable = another format
        log.warning("generate: ignoring unreadable checkpoint %s (%s); training from the start", path, exc)
        return
    if not isinstance(ck, dict) or ck.get("fingerprint") != fit.fingerprint:
        log.warning("generate: checkpoint %s was made with other parameters or data; training from the start", path)
        return
    fit.model.load_state_dict(ck["model"])
    with torch.no_grad():
        for e, v in zip(fit.ema, ck["ema"]):
            e.copy_(v)
    fit.opt.load_state_dict(ck["optimizer"])
    if ck.get("scaler") and fit.scaler.is_enabled():
        fit.scaler.load_state_dict(ck["scaler"])
    fit.phase, fit.step = int(ck["phase"]), int(ck["step"])
    log.info("generate: resuming %s at step %d from %s", PHASES[fit.phase], fit.step, path)


def _finish(fit: _Fit, n: int, bank_shape) -> ConditionalNucleusDiffusion:
    """Put the EMA weights into the model, record the run, write ``model.pt`` (with ``outdir``)."""
    model = fit.model
    with torch.no_grad():
        for p, e in zip(model.parameters(), fit.ema):
            p.copy_(e)
    model.eval()
    model.info = {"n_crops": n, "n_paired": len(fit.paired_idx), "bank_shape": list(bank_shape),
                  "cond_dim": int(fit.conditions.shape[1]), "device": str(fit.device),
                  "amp_dtype": str(fit.amp_dtype) if fit.amp_dtype else None, "fingerprint": fit.fingerprint,
                  "n_parameters": model.n_parameters(), "scale_lo": model.scale_lo.tolist(),
                  "scale_hi": model.scale_hi.tolist(), "phases": fit.stats}
    if fit.outdir is not None:
        model.save(fit.outdir / MODEL)
        write_json(fit.outdir / "summary.json", {"params": fit.params.to_dict(), **model.info})
    return model


# ---------------------------------------------------------------------------------------
# the loop
def _run_phase(fit: _Fit, progress: bool, callback):
    """Steps ``fit.step`` .. end of the current phase: batches from a step-indexed sampler over
    the phase's crops, a checkpoint every ``checkpoint_every`` steps and at the end."""
    from tqdm.auto import tqdm

    p, phase = fit.params, fit.phase
    total = fit.steps(phase)
    if fit.step >= total:
        return
    pool = np.arange(len(fit.conditions)) if phase == 0 else fit.paired_idx
    sampler = StepBatchSampler(len(pool), p.batch_size, _mix(p.seed, phase), fit.step, total)
    lr_at = _lr_lambda(min(p.warmup_steps, total), total)
    bar = tqdm(total=total, initial=fit.step, desc=f"generate {PHASES[phase]}", unit="step",
               disable=not progress, dynamic_ncols=True)
    tsv = _open_log(fit.outdir / WORKING_LOG) if fit.outdir is not None else None
    t0 = t_prev = time.perf_counter()
    first, loss = fit.step, float("nan")
    try:
        while fit.step < total:
            lr = p.lr * lr_at(fit.step)
            loss = _train_step(fit, pool[sampler.batch(fit.step)], lr)
            fit.step += 1
            if fit.outdir is not None and (fit.step % p.checkpoint_every == 0 or fit.step == total):
                _checkpoint(fit)
            now = time.perf_counter()
            if tsv is not None:
                ips = p.batch_size / max(now - t_prev, 1e-9)
                _log_step(tsv, bar, fit.global_step(), loss, {"phase": phase}, lr, ips, now - t0)
            else:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                bar.update(1)
            t_prev = now
            if callback is not None:
                callback(PHASES[phase], fit.step, loss)
    finally:
        bar.close()
        if tsv is not None:
            tsv.close()
    elapsed = time.perf_counter() - t0
    fit.stats[PHASES[phase]] = {"steps": total, "steps_this_run": total - first, "final_loss": loss,
                                "elapsed_s": elapsed,
                                "images_per_s": (total - first) * p.batch_size / max(elapsed, 1e-9)}


def _train_step(fit: _Fit, idx: np.ndarray, lr: float) -> float:
    """One AdamW step on crops ``idx``: noise them at random timesteps, predict x0 (condition
    dropped in pretraining, with probability ``condition_dropout`` in fine-tuning), MSE."""
    p, dev = fit.params, fit.device
    g = torch.Generator(device=dev)
    g.manual_seed(_mix(p.seed, fit.phase, fit.step, 5))
    with torch.no_grad():
        x0 = fit.model.to_model_units(read_crops(fit.crops, idx).to(dev, non_blocking=True))
        if p.augment:  # dihedral group: nuclei have no canonical orientation
            x0 = augment(x0, g, shift=0)
        B = x0.shape[0]
        noise = torch.randn(x0.shape, generator=g, device=dev)
        t = torch.randint(0, p.train_timesteps, (B,), generator=g, device=dev)
        x_t = fit.schedule.add_noise(x0, noise, t)
        cond = drop = None
        if fit.phase > 0:
            cond = torch.from_numpy(fit.conditions[idx]).to(dev)
            drop = torch.rand(B, generator=g, device=dev) < p.condition_dropout
    for group in fit.opt.param_groups:
        group["lr"] = lr
    with _autocast(dev, fit.amp_dtype):
        pred = fit.model(x_t, t, cond, drop)
    loss = F.mse_loss(pred.float(), x0)
    fit.opt.zero_grad(set_to_none=True)
    fit.scaler.scale(loss).backward()
    fit.scaler.unscale_(fit.opt)
    torch.nn.utils.clip_grad_norm_(fit.model.parameters(), 1.0)
    fit.scaler.step(fit.opt)
    fit.scaler.update()
    decay = min(p.ema_decay, (1 + fit.step) / (10 + fit.step))  # warm-up: early weights fade fast
    with torch.no_grad():
        for e, q in zip(fit.ema, fit.model.parameters()):
            e.lerp_(q.detach(), 1 - decay)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"generate: training loss became {value} at {PHASES[fit.phase]} step {fit.step}; "
                                 "lower generate.lr or set generate.mixed_precision to 'off'")
    return value
