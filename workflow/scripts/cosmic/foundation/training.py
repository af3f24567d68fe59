"""The training loop: :func:`train` pretrains on the crop banks (one process, or one of
several under ``torchrun``), checkpoints to ``last.pt`` and resumes from it."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..atomic import atomic_path, write_json
from ..errors import CosmicInputError
from .augmentation import AUGMENT, augment
from .data import CropBankDataset, CropsWithTargets, StepBatchSampler, _identity, write_feature_targets
from .nets import FoundationModel, build_model
from .params import _ARCH_KEYS, _LEGACY, FORMAT, FoundationParams
from .runtime import (_amp_dtype, _autocast, _dist_info, _mix, _resolve_device, _rng_state, _save_torch,
                      _seed_all, _set_rng_state, array_digest)

log = logging.getLogger(__name__)


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


@dataclass
class _Run:
    """One process's training state: where it runs, the model with its optimiser, learning-rate
    schedule and gradient scaler, and the global step (the number of optimiser steps taken)."""

    params: FoundationParams
    outdir: Path
    device: torch.device
    world: int
    rank: int
    is_main: bool
    C: int
    S: int
    n_features: int
    model: FoundationModel
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    train_model: torch.nn.Module | None = None  # the model as trained: compiled and / or DDP-wrapped
    step: int = 0
    corpus: str = ""  # corpus_digest of the crops (and targets) trained on, kept in last.pt

    @property
    def last(self) -> Path:
        return self.outdir / "last.pt"

    @property
    def log_path(self) -> Path:
        return self.outdir / "train_log.tsv"


def _train(data, crop_paths, outdir, params, C, S, device, world, rank, is_main, resume, progress, stop_after,
           feature_tables):
    """One process's run, once the process group is up: set up (or resume), train to the last
    step, and (rank 0) write ``model.pt`` and ``config.json``."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    outdir.mkdir(parents=True, exist_ok=True)
    banks = data
    data, n_features, targets = _with_feature_targets(data, crop_paths, outdir, params, world, is_main,
                                                      feature_tables)
    run = _set_up(params, outdir, device, world, rank, is_main, C, S, n_features)
    run.corpus = corpus_digest(banks, outdir / "feature_targets.npy" if params.objective == "features" else None)
    if resume and run.last.exists():
        _resume(run)
    elif not resume and is_main:
        for p in (run.last, run.log_path):
            p.unlink(missing_ok=True)
    start_step = run.step
    if is_main:
        _trim_log(run.log_path, run.step)
    run.train_model = _wrap_for_training(run)
    end_step = params.max_steps if stop_after is None else min(params.max_steps, int(stop_after))
    loader = _loader(data, run, end_step)
    stopped_by_time, last_loss, elapsed = _train_steps(run, loader, end_step, progress)
    summary = {"steps": run.step, "start_step": start_step, "max_steps": params.max_steps,
               "stopped_by_time_limit": stopped_by_time, "elapsed_s": elapsed,
               "crops_per_s": (run.step - start_step) * params.batch_size * world / max(elapsed, 1e-9),
               "final_loss": last_loss, "n_crops": len(data), "input_shape": [C, S], "world_size": world,
               "device": str(device)}
    if stop_after is not None and run.step < params.max_steps and not stopped_by_time:
        summary["stopped_after"] = run.step
        return summary
    if world > 1:
        torch.distributed.barrier()
    if is_main:
        _write_model(run, crop_paths, feature_tables, targets, len(data), summary)
    return summary


# ---------------------------------------------------------------------------------------
# set-up
def _with_feature_targets(data, crop_paths, outdir, params, world, is_main, feature_tables):
    """Objective ``features``: rank 0 writes ``outdir/feature_targets.npy`` and every rank pairs
    the crops with it. Returns the dataset, the number of targets and (rank 0) their summary."""
    if params.objective != "features":
        return data, 1, None
    targets_path = outdir / "feature_targets.npy"
    targets = None
    if is_main:
        targets = write_feature_targets(feature_tables, crop_paths, targets_path)
    if world > 1:
        torch.distributed.barrier()
    data = CropsWithTargets(data, targets_path)
    return data, int(data.n_features), targets


def _set_up(params, outdir, device, world, rank, is_main, C, S, n_features) -> _Run:
    """Seed this rank, build the model on ``device``, AdamW with the warm-up/cosine schedule and
    the gradient scaler (enabled for fp16 autocast only)."""
    _seed_all(_mix(params.seed, rank))
    model = build_model(params, C, S, n_features).to(device)
    opt = torch.optim.AdamW(_param_groups(model, params.weight_decay), lr=params.lr, betas=(0.9, 0.95),
                            fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(params.warmup_steps, params.max_steps))
    amp_dtype = _amp_dtype(params.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return _Run(params=params, outdir=outdir, device=device, world=world, rank=rank, is_main=is_main, C=C, S=S,
                n_features=n_features, model=model, opt=opt, sched=sched, scaler=scaler, amp_dtype=amp_dtype)


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


def _wrap_for_training(run: _Run) -> torch.nn.Module:
    """The model as the loop calls it: ``torch.compile``-d if asked, DDP-wrapped under torchrun."""
    train_model = run.model
    if run.params.compile:
        train_model = torch.compile(run.model)
    if run.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    return train_model


def _loader(data, run: _Run, end_step: int) -> torch.utils.data.DataLoader:
    """Batches of steps ``run.step`` .. ``end_step - 1`` (this rank's share), read by worker
    processes on GPU hosts, in the main process on CPU."""
    params, device = run.params, run.device
    workers = params.num_workers
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    sampler = StepBatchSampler(len(data), params.batch_size, params.seed, run.step, end_step, run.rank, run.world)
    return torch.utils.data.DataLoader(
        data, batch_sampler=sampler, collate_fn=_identity, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None)


# ---------------------------------------------------------------------------------------
# checkpoints
def corpus_digest(banks: CropBankDataset, targets_path=None, per_bank: int = 16) -> str:
    """Identity of a training corpus: each bank's number of crops and an evenly spaced sample of its
    crops, and the region-property targets (``targets_path``, objective ``features``). Cheap at any
    corpus size; a new sample or re-made crops change it."""
    def parts():
        for b, n in enumerate(banks.sizes):
            yield np.int64(n)
            if n:
                yield banks.bank(b)[np.unique(np.linspace(0, n - 1, min(int(n), per_bank)).astype(np.int64))]
        if targets_path is not None and Path(targets_path).exists():
            yield np.load(targets_path, mmap_mode="r")

    return array_digest(parts())


def _resume(run: _Run):
    """Continue from ``last.pt``: refuse a checkpoint of another architecture or crop shape, start
    over (with a warning) from one made on other crops, else restore model, optimiser, schedule,
    scaler, step and this rank's RNG states."""
    params, last = run.params, run.last
    ck = torch.load(last, map_location=run.device, weights_only=False)
    old = ck.get("params", {})
    diff = [k for k in _ARCH_KEYS if old.get(k, _LEGACY.get(k)) != getattr(params, k)]
    if ck.get("n_features", 1) != run.n_features:
        diff.append("number of region-property targets")
    if diff or tuple(ck.get("input_shape", ())) != (run.C, run.S):
        raise CosmicInputError(
            f"file '{last}': checkpoint was made with another architecture or crop shape "
            f"({', '.join(diff) or 'input shape'} differ); delete {run.outdir} to start over")
    if ck.get("corpus") != run.corpus:
        # e.g. a sample was added or re-segmented: resuming a finished run would train 0 steps on them
        log.warning("foundation: checkpoint %s was made on other crops (step %s); training from the start on "
                    "this corpus", last, ck.get("step"))
        return
    run.model.load_state_dict(ck["model"])
    run.opt.load_state_dict(ck["optimizer"])
    run.sched.load_state_dict(ck["scheduler"])
    if ck.get("scaler"):
        run.scaler.load_state_dict(ck["scaler"])
    run.step = int(ck["step"])
    rng = ck.get("rng", {})
    if run.rank in rng:
        _set_rng_state(rng[run.rank])
    run.sched.lr_lambdas[0] = _lr_lambda(params.warmup_steps, params.max_steps)


def _save_checkpoint(run: _Run):
    """Gather every rank's RNG states; rank 0 writes ``last.pt`` (atomic)."""
    rng_states = [None] * run.world
    mine = _rng_state()
    if run.world > 1:
        torch.distributed.all_gather_object(rng_states, mine)
    else:
        rng_states = [mine]
    if run.is_main:
        _save_torch({
            "format": FORMAT, "step": run.step, "params": run.params.to_dict(), "input_shape": [run.C, run.S],
            "n_features": run.n_features, "model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
            "rng": dict(enumerate(rng_states)), "world_size": run.world, "corpus": run.corpus,
        }, run.last)


def _write_model(run: _Run, crop_paths, feature_tables, targets, n_crops: int, summary: dict):
    """The finished run's ``model.pt`` (weights, params, input shape) and ``config.json``."""
    params, amp_dtype = run.params, run.amp_dtype
    _save_torch({"format": FORMAT, "params": params.to_dict(), "input_shape": [run.C, run.S],
                 "n_features": run.n_features, "state_dict": run.model.state_dict(), "step": run.step},
                run.outdir / "model.pt")
    cfg = {"params": params.to_dict(), "input_shape": [run.C, run.S], "crops": crop_paths,
           "feature_tables": list(feature_tables) if params.objective == "features" else None,
           "feature_targets": targets,
           "n_crops": n_crops, "world_size": run.world, "device": str(run.device),
           "amp_dtype": str(amp_dtype) if amp_dtype else None, "summary": summary}
    write_json(run.outdir / "config.json", cfg)


# ---------------------------------------------------------------------------------------
# the loop
def _train_steps(run: _Run, loader, end_step: int, progress: bool):
    """Train on every batch of ``loader``: log each step (rank 0), checkpoint every
    ``checkpoint_every`` steps, at ``end_step`` and when the time limit is reached (then stop).
    Returns (stopped by the time limit, last loss, elapsed seconds)."""
    from tqdm.auto import tqdm

    run.model.train()
    t_start = time.perf_counter()
    t_prev = t_start
    bar = tqdm(total=end_step, initial=run.step, desc="pretrain", unit="step",
               disable=not (progress and run.is_main), dynamic_ncols=True)
    log = _open_log(run.log_path) if run.is_main else None
    stopped_by_time = False
    last_loss = float("nan")
    try:
        for batch in loader:
            n, loss, parts, lr = _train_step(run, batch)
            now = time.perf_counter()
            cps = n * run.world / max(now - t_prev, 1e-9)
            t_prev = now
            last_loss = _finite_loss(loss, run.step)
            if log is not None:
                _log_step(log, bar, run.step, last_loss, parts, lr, cps, now - t_start)
            over_time = _over_time_limit(run, now - t_start)
            if run.step % run.params.checkpoint_every == 0 or run.step == end_step or over_time:
                _save_checkpoint(run)
            if over_time:
                stopped_by_time = True
                break
    finally:
        bar.close()
        if log is not None:
            log.close()
    return stopped_by_time, last_loss, time.perf_counter() - t_start


def _views(run: _Run, x):
    """The step's inputs, drawn from a generator seeded by (seed, step, rank): augmented views
    (two for VICReg; MAE and features take one, region properties being invariant to
    :data:`AUGMENT`) and, for MAE, the patch-masking noise."""
    params = run.params
    g = torch.Generator(device=run.device)
    g.manual_seed(_mix(params.seed, run.step, run.rank, 3))
    with torch.no_grad():
        views = tuple(augment(x, g, **AUGMENT) for _ in range(2 if params.objective == "vicreg" else 1))
        noise = None
        if params.objective == "mae":
            noise = torch.rand(x.shape[0], run.model.n_patches, generator=g, device=run.device)
    return views, noise


def _train_step(run: _Run, batch):
    """One optimiser step on ``batch`` (crops, or crops and targets); advances ``run.step``.
    Returns the batch size, the loss, its parts and the learning rate the step used."""
    batch, t = batch if isinstance(batch, tuple) else (batch, None)
    x = batch.to(run.device, non_blocking=True)
    if t is not None:
        t = t.to(run.device, non_blocking=True)
    views, noise = _views(run, x)
    with _autocast(run.device, run.amp_dtype):
        loss, parts = run.train_model(*views, noise=noise, targets=t)
    opt, scaler = run.opt, run.scaler
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    lr = opt.param_groups[0]["lr"]
    run.sched.step()
    run.step += 1
    return x.shape[0], loss, parts, lr


def _finite_loss(loss, step: int) -> float:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(
            f"foundation: training loss became {value} at step {step}; lower foundation.lr "
            "or set foundation.amp to 'off'")
    return value


def _over_time_limit(run: _Run, elapsed: float) -> bool:
    """Whether ``time_limit_s`` is reached; under torchrun, on any rank (so all stop together)."""
    limit = run.params.time_limit_s
    over_time = limit is not None and elapsed >= limit
    if run.world > 1 and limit is not None:
        flag = torch.tensor([float(over_time)], device=run.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        over_time = bool(flag.item())
    return over_time


# ---------------------------------------------------------------------------------------
# the training log
def _open_log(path: Path):
    log = open(path, "a")
    if log.tell() == 0:
        log.write("step\tloss\tparts\tlr\tcrops_per_s\telapsed_s\n")
    return log


def _log_step(log, bar, step: int, loss: float, parts: dict, lr: float, cps: float, elapsed: float):
    ptxt = ",".join(f"{k}={float(v):.5g}" for k, v in parts.items())
    log.write(f"{step}\t{loss:.6g}\t{ptxt}\t{lr:.6g}\t{cps:.1f}\t{elapsed:.3f}\n")
    log.flush()
    bar.set_postfix(loss=f"{loss:.4f}", crops_s=f"{cps:.0f}", refresh=False)
    bar.update(1)


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
