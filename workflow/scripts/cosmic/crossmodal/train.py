"""Training: fit the preprocessor on training cells, train with early stopping on validation cells,
checkpoint and resume, calibrate, save and load the final model."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..atomic import atomic_path
from ..errors import CosmicInputError
from . import representation
from .diffusion_model import PHASES, DiffusionCosmicModel
from .nets import CosmicModel
from .params import CHECKPOINT, MODEL, TRAINING_KEYS, CosmicParams, resolve_device
from .prediction import calibrate_model, to_tensors
from .preprocess import Preprocessor
from .rows import n_rows, row_chunks, take

log = logging.getLogger(__name__)


def _seed_all(seed: int):
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _fingerprint(params: CosmicParams, split: pd.Series, data: dict | None = None) -> str:
    """Identity of a training run: parameters, split and the training data themselves, so a
    checkpoint left by a run on other data (e.g. after re-normalising) is never resumed."""
    keys = {k: getattr(params, k) for k in TRAINING_KEYS}
    h = hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode())
    h.update("".join(split.astype(str).str[:2]).encode())
    h.update("|".join(map(str, split.index)).encode())
    for key in sorted(data or {}):
        h.update(key.encode())
        value = data[key]
        if hasattr(value, "fingerprint_bytes"):
            for part in value.fingerprint_bytes():
                h.update(part)
        else:
            h.update(np.ascontiguousarray(value.detach().cpu().numpy() if torch.is_tensor(value)
                                          else np.asarray(value)).tobytes())
    return h.hexdigest()[:16]


def _batches(n: int, batch_size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    # drop a tiny last batch (LayerNorm/BatchNorm-free, but keeps gradient noise even)
    for i in range(0, n, batch_size):
        idx = perm[i:i + batch_size]
        if len(idx) >= 2 or n < 2:
            yield idx


def _eval_loss(model, data, params, device) -> float:
    """The loss over the validation cells, a chunk of cells at a time (their expression may be sparse)."""
    model.eval()
    n = n_rows(data)
    with torch.no_grad():
        gen_state = torch.get_rng_state()
        torch.manual_seed(12345)  # validation loss uses a fixed posterior draw
        loss = sum(model.losses(take(data, rows), params, sample_posterior=False).item() * (rows.stop - rows.start)
                   for rows in row_chunks(data)) / max(1, n)
        torch.set_rng_state(gen_state)
    return loss


def fit_cosmic(adata, split: pd.Series, params: CosmicParams, outdir=None, progress: bool = True,
               resume: bool = True) -> dict:
    """Fit the preprocessor on training cells and train the model with early stopping.

    Returns ``{"model", "preprocessor", "history", "best_epoch", "best_val_loss", "seconds", "device"}``.
    With ``outdir`` a resumable ``checkpoint.pt`` is written every few epochs and ``model.pt`` at the end;
    an existing checkpoint with the same parameters and split is resumed.
    """
    device = resolve_device(params.device)
    threads = torch.get_num_threads()
    if device.type == "cpu" and params.num_threads > 0:
        torch.set_num_threads(params.num_threads)
    try:
        return _fit(adata, split, params, outdir, progress, resume, device)
    finally:
        torch.set_num_threads(threads)


class _Training:
    """One training run: model, optimiser, batch-order generator and early-stopping state, with a
    resumable checkpoint (``checkpoint``: its path, or None for none)."""

    def __init__(self, model, pre: Preprocessor, params: CosmicParams, fingerprint: str, checkpoint: Path | None,
                 parameters=None, desc: str = "cosmic"):
        self.model, self.pre, self.params, self.desc = model, pre, params, desc
        self.parameters = list(model.parameters() if parameters is None else parameters)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=params.lr, weight_decay=params.weight_decay)
        self.generator = torch.Generator().manual_seed(params.seed)
        self.fingerprint, self.checkpoint = fingerprint, checkpoint
        self.state = dict(epoch=0, best_val=float("inf"), best_epoch=-1, bad=0, history=[], done=False,
                          best_state=copy.deepcopy(model.state_dict()))

    def resume(self, device, saved: dict | None = None) -> bool:
        """Continue from the checkpoint (or the already loaded ``saved``) when it belongs to this run
        (same fingerprint); True when resumed."""
        if saved is None:
            saved = load_checkpoint(self.checkpoint, device)
        if saved is None:
            return False
        if saved.get("fingerprint") != self.fingerprint:
            log.info("cosmic: checkpoint %s has other parameters or split; training from scratch", self.checkpoint)
            return False
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        self.state = saved["train_state"]
        log.info("cosmic: resuming from %s at epoch %d (%s)", self.checkpoint, self.state["epoch"], self.desc)
        return True

    def save_checkpoint(self):
        if self.checkpoint is None:
            return
        with atomic_path(self.checkpoint) as tmp:
            torch.save(dict(fingerprint=self.fingerprint, model=self.model.state_dict(),
                            optimizer=self.optimizer.state_dict(), generator=self.generator.get_state(),
                            torch_rng=torch.get_rng_state(), train_state=self.state,
                            preprocessor=self.pre.state_dict(), params=self.params.to_dict()), tmp)

    def epoch(self, train: dict, device) -> float:
        """One pass over the training cells in random batches; the mean training loss."""
        self.model.train()
        n = len(train["rep"])
        total = 0.0
        for idx in _batches(n, self.params.batch_size, self.generator):
            idx = idx.to(device)
            loss = self.model.losses({k: v[idx] for k, v in train.items()}, self.params)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.parameters, 5.0)
            self.optimizer.step()
            total += loss.item() * len(idx)
        return total / n

    def run(self, train: dict, val: dict, device, progress: bool):
        """Epochs until ``params.epochs`` or ``patience`` epochs without a better validation loss;
        leaves the model at its best validation state."""
        from tqdm.auto import tqdm

        state, params = self.state, self.params
        bar = tqdm(total=params.epochs, initial=state["epoch"], desc=self.desc, disable=not progress, leave=False)
        while not state["done"] and state["epoch"] < params.epochs:
            train_loss = self.epoch(train, device)
            val_loss = _eval_loss(self.model, val, params, device)
            state["history"].append(dict(epoch=state["epoch"], train_loss=train_loss, val_loss=val_loss))
            if val_loss < state["best_val"] - 1e-5:
                state.update(best_val=val_loss, best_epoch=state["epoch"], bad=0,
                             best_state={k: v.detach().clone() for k, v in self.model.state_dict().items()})
            else:
                state["bad"] += 1
            state["epoch"] += 1
            if state["bad"] >= params.patience:
                state["done"] = True
            bar.update(1)
            bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}", best=state["best_epoch"])
            if state["epoch"] % 10 == 0:
                self.save_checkpoint()
        bar.close()
        state["done"] = True
        self.save_checkpoint()
        self.model.load_state_dict(state["best_state"])
        self.model.eval()


def load_checkpoint(path: Path | None, device) -> dict | None:
    """The saved training state at ``path``, or None when there is none."""
    if path is None or not Path(path).exists():
        return None
    return torch.load(path, map_location=device, weights_only=False)


def build_model(rep_dim: int, rna_dim: int, n_genes: int, morph_dim: int, cov_dim: int, params: CosmicParams,
                use_fm: bool, tail=None, tail_spec: dict | None = None):
    """The network of ``params.method``: ``diffusion`` (mean heads + residual diffusion; with ``tail``, the
    foundation encoder's last stages fine-tuned with the expression head) or ``cvae``. ``tail_spec``
    rebuilds the tail's architecture when ``tail`` is not given (loading a saved model)."""
    if params.method == "diffusion":
        if tail is None and tail_spec is not None:
            from ..foundation.tail import tail_from_spec

            tail = tail_from_spec(tail_spec)
        return DiffusionCosmicModel(rep_dim, rna_dim, n_genes, morph_dim, cov_dim, params, use_fm, tail, tail_spec)
    return CosmicModel(rep_dim, rna_dim, n_genes, morph_dim, cov_dim, params, use_fm)


def _tail_for(adata, pre, params):
    """The encoder tail to fine-tune (and its spec), when asked for and prepared (see crossmodal.finetune)."""
    from .finetune import TAIL_UNS, tail_of

    if params.method != "diffusion" or params.finetune_blocks <= 0 or not pre.state.get("tail"):
        if params.finetune_blocks > 0 and params.method == "diffusion":
            log.warning("cosmic: finetune_blocks = %d but no cached encoder inputs (needs the foundation embedding "
                        "and crop banks); the encoder is not fine-tuned", params.finetune_blocks)
        return None, None
    return tail_of(adata), adata.uns[TAIL_UNS]["spec"]


def _train_model(model, pre, params, fingerprint, outdir, resume, device, train, val, progress) -> dict:
    """Train ``model`` (one phase for ``cvae``; for ``diffusion`` each of its ``PHASES`` in turn, each with
    its own early stopping); returns the last phase's training state, its history prefixed by the
    earlier phases'. A checkpoint of a later phase (its fingerprint says which) skips the earlier ones."""
    checkpoint = Path(outdir) / CHECKPOINT if outdir is not None else None
    saved = load_checkpoint(checkpoint, device) if resume else None
    if model.method != "diffusion":
        training = _Training(model, pre, params, fingerprint, checkpoint)
        if saved is not None:
            training.resume(device, saved)
        training.run(train, val, device, progress)
        return training.state
    phases = list(PHASES)
    saved_phase = (saved or {}).get("fingerprint", "").partition(":")
    start = phases.index(saved_phase[2]) if saved_phase[0] == fingerprint and saved_phase[2] in phases else 0
    history = []
    for i, phase in enumerate(phases[start:], start):
        model.phase = phase
        if phase == "residual" and i > start:  # a resumed residual phase has its blend and bases in the checkpoint
            if params.morph_ridge_blend:
                blend = model.fit_morph_blend(train, val, seed=params.seed)
                log.info("cosmic: RNA -> morphology mean = %.1f x head + %.1f x ridge (median penalty %.3g), "
                         "chosen on validation cells", blend["head_share"], 1 - blend["head_share"],
                         blend["ridge_alpha_median"])
            model.fit_residual_bases(train, seed=params.seed)
        training = _Training(model, pre, params, f"{fingerprint}:{phase}", checkpoint,
                             parameters=model.phase_parameters(phase), desc=f"cosmic {phase.replace('_', ' ')}")
        if i == start and saved is not None:
            training.resume(device, saved)
            history = training.state.pop("earlier_history", [])
        training.state["earlier_history"] = history
        training.run(train, val, device, progress)
        history = history + [dict(h, phase=phase) for h in training.state["history"]]
    state = dict(training.state, history=history)
    state.pop("earlier_history", None)
    return state


def _fit(adata, split, params, outdir, progress, resume, device):
    started = time.time()
    kind = representation.for_cohort(adata.obsm, params.representation)
    train_mask = (split == "train").to_numpy()
    val_mask = (split == "val").to_numpy()
    if train_mask.sum() < 3 or val_mask.sum() < 1:
        raise CosmicInputError(f"cosmic: too few cells to train ({train_mask.sum()} train, {val_mask.sum()} val)")
    pre = Preprocessor(params.n_hvg, params.n_rna_pcs, kind.name, params.covariates).fit(adata[train_mask])
    # expression stays sparse (a batch of cells is made dense at a time): memory follows the stored values
    train = to_tensors(pre.transform(adata[train_mask], sparse_expression=True), device)
    val = to_tensors(pre.transform(adata[val_mask], sparse_expression=True), device)
    _seed_all(params.seed)
    tail, tail_spec = _tail_for(adata, pre, params)
    model = build_model(train["rep"].shape[1], train["rna"].shape[1], train["expr"].shape[1],
                        train["morph"].shape[1], train["cov"].shape[1], params, use_fm=kind.is_foundation,
                        tail=tail, tail_spec=tail_spec)
    model.init_from_pca(pre)
    if hasattr(model, "set_expr_variance"):
        model.set_expr_variance(train["expr"])
    model.to(device)
    state = _train_model(model, pre, params, _fingerprint(params, split, train), outdir, resume, device, train, val,
                         progress)
    if params.method == "diffusion" and params.moment_matching:
        model.match_residual_moments(train, seed=params.seed)
    # predictive intervals: per-output spread fitted on validation cells (never test cells)
    calibration = calibrate_model(model, val, params.interval_level, params.n_samples, params.seed)
    result = dict(model=model, preprocessor=pre, history=pd.DataFrame(state["history"]),
                  best_epoch=int(state["best_epoch"]), best_val_loss=float(state["best_val"]),
                  epochs_run=int(state["epoch"]), seconds=time.time() - started, device=str(device),
                  representation=kind.name, calibration_scales=calibration, method=params.method)
    if outdir is not None:
        save_model(result, params, Path(outdir) / MODEL)
        with atomic_path(Path(outdir) / "training_log.tsv") as tmp:
            result["history"].to_csv(tmp, sep="\t", index=False)
    return result


def save_model(result: dict, params: CosmicParams, path):
    """Write the final model: weights, preprocessor state, params and architecture sizes."""
    m = result["model"]
    dims = m.dims() if hasattr(m, "dims") else dict(
                rep_dim=m.r2m.mean_head.out_features, rna_dim=m.m2r.mean_head.out_features,
                n_genes=m.expr_decoder.linear.out_features,
                morph_dim=m.morph_decoder.linear.out_features if m.use_fm else m.r2m.mean_head.out_features,
                cov_dim=m.m2r.cond[0].in_features - m.r2m.mean_head.out_features, use_fm=m.use_fm)
    with atomic_path(path) as tmp:
        torch.save(dict(model={k: v.cpu() for k, v in m.state_dict().items()}, dims=dims,
                        preprocessor=result["preprocessor"].state_dict(), params=params.to_dict(),
                        best_epoch=result["best_epoch"], best_val_loss=result["best_val_loss"]), tmp)


# buffers added after models were first saved; a model without them loads with the defaults it was used
# with: unit calibration, the identity score map (no moment matching), the head alone (no ridge blend)
BUFFERS_OLD_MODELS_LACK = ("calib_scale", "score_map", "ridge_weight", "ridge_bias", "head_share")


def load_model(path, device="auto") -> tuple[CosmicModel, Preprocessor, CosmicParams]:
    """Load ``model.pt`` written by :func:`fit_cosmic`."""
    d = torch.load(path, map_location="cpu", weights_only=False)
    params = CosmicParams.from_config(d["params"])
    dims = d["dims"]
    model = build_model(dims["rep_dim"], dims["rna_dim"], dims["n_genes"], dims["morph_dim"], dims["cov_dim"],
                        params, dims["use_fm"], tail_spec=dims.get("tail"))
    missing, unexpected = model.load_state_dict(d["model"], strict=False)
    if unexpected or any(not k.endswith(BUFFERS_OLD_MODELS_LACK) for k in missing):
        raise CosmicInputError(f"{path}: not a model of this COSMIC version (missing {missing}, unexpected "
                               f"{unexpected})")
    return model.to(resolve_device(device)).eval(), Preprocessor.from_state_dict(d["preprocessor"]), params
