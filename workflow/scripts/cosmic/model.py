"""COSMIC: bidirectional, stochastic generation between morphology and expression.

Two conditional generators are trained jointly on paired training cells:

* morphology -> RNA: p(e | m) over the RNA embedding ``e`` (PCA of log-normalised highly
  variable genes, fitted on training cells), decoded to expression by a learned decoder
  (initialised at the exact PCA inverse, refined by a small MLP);
* RNA -> morphology: p(m | e) over the morphology representation ``m`` (the foundation-model
  embedding ``X_fm`` when present, else standardised region-property features ``X_morph``).

Each direction is a conditional VAE with a mean head: a conditioning network ``h = f(c)``, a
mean head ``mu(h)`` trained for squared error (the conditional mean used for point
predictions), and a residual CVAE ``p(x - mu | z, h)`` with heteroscedastic Gaussian output and
``z ~ N(0, I)``, which supplies samples and predictive intervals. ``latent_dim = 0`` reduces the
residual model to a heteroscedastic Gaussian. After training, the spread of the samples around the
conditional mean is rescaled per output (RNA PCs, representation dimensions, genes) so that the
central ``interval_level`` intervals cover that fraction of the *validation* cells (split-conformal,
:func:`calibrate_model`); the means are unchanged.

Every fitted transform (gene selection, PCA, scalers, covariate categories) lives in a
:class:`Preprocessor` fitted on training cells only and stored in the checkpoint; the evaluation's
own fitted pieces (baselines, RNA cell-type clusters, label classifiers) also see training cells
only. Metrics are computed on held-out test cells, beside baselines, and under
``reference_metrics`` in the terms of the published COSMIC evaluation (per-gene Pearson overall,
on detected cells and within cell type; cell-type classification of predicted expression;
distribution distances between real and generated morphology).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn

from . import metrics as M
from .atomic import atomic_path, write_json
from .errors import CosmicInputError
from .plotting import save_figure
from .splits import make_splits

log = logging.getLogger(__name__)

REPRESENTATIONS = ("auto", "fm", "morph")
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINT = "checkpoint.pt"  # resumable training state
MODEL = "model.pt"  # final model (best validation state + preprocessor + params)


# ---------------------------------------------------------------------------------------
# parameters
@dataclass
class CosmicParams:
    """The ``cosmic:`` config block (see :func:`CosmicParams.from_config`)."""

    representation: str = "auto"  # "auto" (X_fm when present, else X_morph) | "fm" | "morph"
    n_rna_pcs: int = 30
    n_hvg: int = 2000  # 0 = all genes
    latent_dim: int = 0  # 0: heteroscedastic Gaussian residual; >0: residual CVAE (validation favoured 0 on the demo)
    hidden_dim: int = 128
    n_layers: int = 2
    dropout: float = 0.5  # lower validation loss than 0.3 on the demo (seeds 0 and 1); 0.1 overfits
    beta: float = 1.0  # KL weight of the residual CVAE
    expr_weight: float = 1.0  # weight of the expression-space loss of morphology -> RNA
    epochs: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 25
    n_samples: int = 100  # samples per cell for intervals
    n_output_samples: int = 3  # samples written to predictions.h5ad
    split_fractions: list = field(default_factory=lambda: [0.7, 0.15, 0.15])
    stratify: str | None = "sample"
    holdout_samples: list = field(default_factory=list)
    covariates: list = field(default_factory=list)  # obs columns, one-hot encoded
    label_key: str | None = None  # obs column of labels for cell-type transfer (None: RNA clusters)
    n_clusters: int = 8  # k-means fallback only: labels are Leiden clusters of training cells when label_key is None
    knn_neighbors: int = 15
    n_bootstrap: int = 200
    interval_level: float = 0.9
    seed: int = 0
    device: str = "auto"
    num_threads: int = 1  # CPU threads for torch and BLAS (0 = library defaults); 1 is fastest for this small model

    def __post_init__(self):
        if self.representation not in REPRESENTATIONS:
            raise CosmicInputError(f"cosmic parameter representation must be one of {REPRESENTATIONS}, "
                                   f"got {self.representation!r}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise CosmicInputError(f"cosmic parameter device must be one of {DEVICES} or 'cuda:N', "
                                   f"got {self.device!r}")
        for name, lo in (("n_rna_pcs", 1), ("n_hvg", 0), ("latent_dim", 0), ("hidden_dim", 1), ("n_layers", 1),
                         ("epochs", 0), ("batch_size", 1), ("patience", 1), ("n_samples", 2),
                         ("n_output_samples", 0), ("n_clusters", 2), ("knn_neighbors", 1), ("n_bootstrap", 0),
                         ("seed", 0), ("num_threads", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer, float)) or not float(v).is_integer() \
                    or v < lo:
                raise CosmicInputError(f"cosmic parameter {name} must be an integer >= {lo}, got {v!r}")
            setattr(self, name, int(v))
        for name, lo, hi in (("dropout", 0.0, 0.99), ("beta", 0.0, None), ("expr_weight", 0.0, None),
                             ("lr", 1e-12, None), ("weight_decay", 0.0, None), ("interval_level", 0.01, 0.999)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(v) or v < lo or (hi is not None and v > hi):
                raise CosmicInputError(f"cosmic parameter {name} must be a number in [{lo}, {hi or 'inf'}], "
                                       f"got {v!r}")
            setattr(self, name, float(v))
        try:
            fr = [float(x) for x in self.split_fractions]
        except (TypeError, ValueError):
            fr = []
        if len(fr) != 3 or any(x < 0 for x in fr) or fr[0] <= 0 or abs(sum(fr) - 1) > 1e-6:
            raise CosmicInputError("cosmic parameter split_fractions must be [train, val, test] summing to 1 "
                                   f"with train > 0, got {self.split_fractions!r}")
        self.split_fractions = fr
        for name in ("holdout_samples", "covariates"):
            v = getattr(self, name) or []
            if isinstance(v, str) or not all(isinstance(x, str) for x in v):
                raise CosmicInputError(f"cosmic parameter {name} must be a list of strings, got {v!r}")
            setattr(self, name, list(v))
        if self.fractions[1] == 0:
            raise CosmicInputError("cosmic parameter split_fractions needs a validation fraction > 0 "
                                   "(early stopping uses the validation cells)")

    @property
    def fractions(self) -> tuple[float, float, float]:
        return tuple(self.split_fractions)

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any] | None = None, **overrides) -> "CosmicParams":
        """Build from ``config["cosmic"]``; unknown keys are errors naming the allowed ones."""
        from .config import params_from_config

        return params_from_config(cls, "cosmic", mapping, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


# keys that change what is trained (a checkpoint with other values is not resumed)
_TRAINING_KEYS = ("representation", "n_rna_pcs", "n_hvg", "latent_dim", "hidden_dim", "n_layers", "dropout", "beta",
                  "expr_weight", "epochs", "batch_size", "lr", "weight_decay", "patience", "split_fractions",
                  "stratify", "holdout_samples", "covariates", "seed")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when a GPU is visible, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise CosmicInputError("cosmic: device 'cuda' requested but no CUDA GPU is visible; set cosmic.device "
                               "to 'auto' or 'cpu'")
    return torch.device(device)


def resolve_representation(adata, representation: str = "auto") -> str:
    """``"fm"`` when ``obsm["X_fm"]`` is used, ``"morph"`` for the region-property features."""
    has_fm = "X_fm" in adata.obsm
    if representation == "fm" and not has_fm:
        raise CosmicInputError("cosmic.representation is 'fm' but the cohort has no obsm['X_fm'] (foundation "
                               "embedding); run the embed stage or set cosmic.representation to 'auto'/'morph'")
    if "X_morph" not in adata.obsm:
        raise CosmicInputError("the cohort has no obsm['X_morph'] (region-property features); it must be "
                               "written by the pair stage")
    return "fm" if representation == "fm" or (representation == "auto" and has_fm) else "morph"


# ---------------------------------------------------------------------------------------
# preprocessing (fitted on training cells only)
def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)


def _scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = np.nanmean(x, 0)
    std = np.nanstd(x, 0)
    std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
    return np.nan_to_num(mean).astype(np.float32), std.astype(np.float32)


def _scale(x, mean, std) -> np.ndarray:
    return np.nan_to_num((np.asarray(x, dtype=np.float32) - mean) / std).astype(np.float32)


class Preprocessor:
    """Gene selection, RNA PCA and scalers, fitted on training cells and stored as plain arrays.

    ``fit`` sees training cells only; ``transform`` applies the frozen state to any cells.
    """

    def __init__(self, n_hvg: int = 2000, n_pcs: int = 30, representation: str = "morph",
                 covariates: Sequence[str] = ()):
        self.n_hvg, self.n_pcs, self.representation = int(n_hvg), int(n_pcs), representation
        self.covariates = list(covariates)
        self.state: dict | None = None

    # -- fitting ---------------------------------------------------------------------
    def fit(self, adata) -> "Preprocessor":
        """Fit on ``adata`` (training cells only)."""
        x = _dense(adata.X)
        var = x.var(0)
        order = np.argsort(-var, kind="stable")
        order = order[var[order] > 0]
        n_keep = len(order) if self.n_hvg == 0 else min(self.n_hvg, len(order))
        genes = np.sort(order[:n_keep])
        xg = x[:, genes]
        gene_mean = xg.mean(0)
        n_pcs = min(self.n_pcs, xg.shape[0] - 1, xg.shape[1])
        _, s, vt = np.linalg.svd(xg - gene_mean, full_matrices=False)
        components = vt[:n_pcs].astype(np.float32)
        pc_std = (s[:n_pcs] / math.sqrt(max(1, xg.shape[0] - 1))).astype(np.float32)
        pc_std = np.where(pc_std > 1e-8, pc_std, 1.0).astype(np.float32)
        morph_mean, morph_std = _scaler(np.asarray(adata.obsm["X_morph"], dtype=np.float32))
        st = dict(gene_index=genes.astype(np.int64), gene_names=np.asarray(adata.var_names[genes]).astype(str),
                  n_genes_input=int(x.shape[1]), gene_mean=gene_mean.astype(np.float32), components=components,
                  pc_std=pc_std, morph_mean=morph_mean, morph_std=morph_std, representation=self.representation,
                  covariate_levels={})
        if self.representation == "fm":
            st["fm_mean"], st["fm_std"] = _scaler(np.asarray(adata.obsm["X_fm"], dtype=np.float32))
        for c in self.covariates:
            if c not in adata.obs:
                raise CosmicInputError(f"cosmic.covariates names '{c}', which is not an obs column of the cohort; "
                                       f"available: {list(adata.obs.columns)}")
            st["covariate_levels"][c] = sorted(adata.obs[c].astype(str).unique().tolist())
        self.state = st
        return self

    # -- applying --------------------------------------------------------------------
    def _check(self):
        if self.state is None:
            raise RuntimeError("Preprocessor is not fitted")

    @property
    def gene_names(self) -> np.ndarray:
        self._check()
        return self.state["gene_names"]

    def expression(self, adata) -> np.ndarray:
        """Log-normalised expression of the kept genes."""
        self._check()
        if adata.n_vars != self.state["n_genes_input"]:
            raise CosmicInputError(f"cohort has {adata.n_vars} genes but the model was fitted on "
                                   f"{self.state['n_genes_input']}")
        return _dense(adata.X[:, self.state["gene_index"]])

    def rna_embedding(self, expr: np.ndarray) -> np.ndarray:
        """Standardised PCA scores (training-cell PCA) of kept-gene expression."""
        st = self.state
        return ((expr - st["gene_mean"]) @ st["components"].T / st["pc_std"]).astype(np.float32)

    def morph_features(self, adata) -> np.ndarray:
        return _scale(adata.obsm["X_morph"], self.state["morph_mean"], self.state["morph_std"])

    def representation_of(self, adata) -> np.ndarray:
        """Standardised morphology representation (X_fm or X_morph)."""
        if self.state["representation"] == "fm":
            return _scale(adata.obsm["X_fm"], self.state["fm_mean"], self.state["fm_std"])
        return self.morph_features(adata)

    def rep_to_raw(self, rep: np.ndarray) -> np.ndarray:
        """Undo the representation scaler (back to X_fm / X_morph units)."""
        key = "fm" if self.state["representation"] == "fm" else "morph"
        return (np.asarray(rep) * self.state[f"{key}_std"] + self.state[f"{key}_mean"]).astype(np.float32)

    def covariate_matrix(self, adata) -> np.ndarray:
        """One-hot covariates over training-cell levels (an unseen level is all zeros)."""
        cols = []
        for c, levels in self.state["covariate_levels"].items():
            v = adata.obs[c].astype(str).to_numpy()
            cols.append((v[:, None] == np.asarray(levels)[None, :]).astype(np.float32))
        return np.concatenate(cols, 1) if cols else np.zeros((adata.n_obs, 0), np.float32)

    def transform(self, adata) -> dict[str, np.ndarray]:
        """All model inputs for the cells of ``adata``."""
        self._check()
        expr = self.expression(adata)
        return dict(expr=expr, rna=self.rna_embedding(expr), rep=self.representation_of(adata),
                    morph=self.morph_features(adata), cov=self.covariate_matrix(adata))

    # -- persistence -----------------------------------------------------------------
    def state_dict(self) -> dict:
        self._check()
        return dict(n_hvg=self.n_hvg, n_pcs=self.n_pcs, representation=self.representation,
                    covariates=self.covariates, state=copy.deepcopy(self.state))

    @classmethod
    def from_state_dict(cls, d: dict) -> "Preprocessor":
        p = cls(d["n_hvg"], d["n_pcs"], d["representation"], d["covariates"])
        p.state = copy.deepcopy(d["state"])
        return p


# ---------------------------------------------------------------------------------------
# networks
def _mlp(d_in: int, hidden: int, n_layers: int, dropout: float) -> nn.Sequential:
    layers, d = [], d_in
    for _ in range(n_layers):
        layers += [nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout)]
        d = hidden
    return nn.Sequential(*layers)


class ConditionalGenerator(nn.Module):
    """p(x | c): a mean head plus a residual conditional VAE with heteroscedastic Gaussian output."""

    def __init__(self, cond_dim: int, out_dim: int, hidden: int, latent: int, n_layers: int, dropout: float):
        super().__init__()
        self.latent = latent
        self.cond = _mlp(cond_dim, hidden, n_layers, dropout)
        self.mean_head = nn.Linear(hidden, out_dim)
        if latent > 0:
            self.encoder = nn.Sequential(_mlp(out_dim + hidden, hidden, 1, dropout), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(_mlp(latent + hidden, hidden, 1, dropout), nn.Linear(hidden, 2 * out_dim))
        nn.init.zeros_(self.decoder[-1].weight)
        nn.init.zeros_(self.decoder[-1].bias)
        # per-output spread of samples around the mean, fitted on validation cells (see calibrate_model)
        self.register_buffer("calib_scale", torch.ones(out_dim))

    def _decode(self, z, h):
        r_mu, r_logvar = self.decoder(torch.cat([z, h], 1) if self.latent else h).chunk(2, 1)
        return r_mu, r_logvar.clamp(-8, 6)

    def forward(self, c, x, sample_posterior: bool = True) -> dict:
        """Training losses (per cell, averaged over output dims) and the conditional mean."""
        h = self.cond(c)
        mu = self.mean_head(h)
        resid = x - mu.detach()
        kl = torch.zeros(len(x), device=x.device)
        if self.latent:
            q_mu, q_logvar = self.encoder(torch.cat([resid, h], 1)).chunk(2, 1)
            q_logvar = q_logvar.clamp(-8, 6)
            z = q_mu + torch.exp(0.5 * q_logvar) * torch.randn_like(q_mu) if sample_posterior else q_mu
            kl = 0.5 * (q_mu ** 2 + q_logvar.exp() - 1 - q_logvar).sum(1) / x.shape[1]
        else:
            z = None
        r_mu, r_logvar = self._decode(z, h)
        nll = 0.5 * (r_logvar + (resid - r_mu) ** 2 / r_logvar.exp() + math.log(2 * math.pi)).mean(1)
        mse = ((x - mu) ** 2).mean(1)
        return dict(mu=mu, mse=mse, nll=nll, kl=kl)

    @torch.no_grad()
    def mean(self, c):
        return self.mean_head(self.cond(c))

    @torch.no_grad()
    def sample(self, c, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n x cells x out_dim`` samples: mean head + residual drawn from the prior, the residual
        scaled per output by ``calib_scale`` (1 until calibrated on validation cells)."""
        h = self.cond(c)
        mu = self.mean_head(h)
        out = []
        for _ in range(n):
            z = torch.randn(len(c), self.latent, device=c.device, generator=generator) if self.latent else None
            r_mu, r_logvar = self._decode(z, h)
            eps = torch.randn(r_mu.shape, device=c.device, generator=generator)
            out.append(mu + self.calib_scale * (r_mu + torch.exp(0.5 * r_logvar) * eps))
        return torch.stack(out)


class LinearPlusMLP(nn.Module):
    """Decoder y = W x + b + MLP(x); the linear part can start at a known map (e.g. PCA inverse)."""

    def __init__(self, d_in: int, d_out: int, hidden: int, dropout: float):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.mlp = nn.Sequential(_mlp(d_in, hidden, 1, dropout), nn.Linear(hidden, d_out))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.logvar = nn.Parameter(torch.zeros(d_out))  # per-output residual noise (for samples)
        self.register_buffer("calib_scale", torch.ones(d_out))  # spread of decoded samples (calibrate_model)

    def forward(self, x):
        return self.linear(x) + self.mlp(x)


class CosmicModel(nn.Module):
    """Both generators, the expression decoder and (for FM) a representation -> feature decoder."""

    def __init__(self, rep_dim: int, rna_dim: int, n_genes: int, morph_dim: int, cov_dim: int,
                 params: CosmicParams, use_fm: bool):
        super().__init__()
        p = params
        self.m2r = ConditionalGenerator(rep_dim + cov_dim, rna_dim, p.hidden_dim, p.latent_dim, p.n_layers, p.dropout)
        self.r2m = ConditionalGenerator(rna_dim + cov_dim, rep_dim, p.hidden_dim, p.latent_dim, p.n_layers, p.dropout)
        self.expr_decoder = LinearPlusMLP(rna_dim, n_genes, p.hidden_dim, p.dropout)
        self.use_fm = use_fm
        self.morph_decoder = LinearPlusMLP(rep_dim, morph_dim, p.hidden_dim, p.dropout) if use_fm else None

    def init_from_pca(self, pre: Preprocessor):
        """Start the expression decoder at the exact inverse of the training-cell PCA."""
        st = pre.state
        with torch.no_grad():
            self.expr_decoder.linear.weight.copy_(torch.from_numpy(st["components"].T * st["pc_std"][None, :]))
            self.expr_decoder.linear.bias.copy_(torch.from_numpy(st["gene_mean"]))

    def losses(self, b: dict, p: CosmicParams, sample_posterior: bool = True) -> torch.Tensor:
        cov = b["cov"]
        m2r = self.m2r(torch.cat([b["rep"], cov], 1), b["rna"], sample_posterior)
        r2m = self.r2m(torch.cat([b["rna"], cov], 1), b["rep"], sample_posterior)
        dec = self.expr_decoder
        expr_obs = dec(b["rna"])
        expr_pred = dec(m2r["mu"])
        # decoder noise model on observed embeddings (detached mean)
        resid = (b["expr"] - expr_obs.detach()) ** 2
        dec_nll = 0.5 * (dec.logvar + resid / dec.logvar.exp()).mean(1)
        loss = (m2r["mse"] + m2r["nll"] + p.beta * m2r["kl"] + r2m["mse"] + r2m["nll"] + p.beta * r2m["kl"]
                + p.expr_weight * (((b["expr"] - expr_obs) ** 2).mean(1) + ((b["expr"] - expr_pred) ** 2).mean(1))
                + 0.1 * dec_nll)
        if self.use_fm:
            md = self.morph_decoder
            f_obs = md(b["rep"])
            f_pred = md(r2m["mu"])
            resid = (b["morph"] - f_obs.detach()) ** 2
            loss = loss + ((b["morph"] - f_obs) ** 2).mean(1) + ((b["morph"] - f_pred) ** 2).mean(1) \
                + 0.1 * 0.5 * (md.logvar + resid / md.logvar.exp()).mean(1)
        return loss.mean()


# ---------------------------------------------------------------------------------------
# training
def _seed_all(seed: int):
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _to_tensors(d: dict, device) -> dict:
    return {k: torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in d.items()}


def _fingerprint(params: CosmicParams, split: pd.Series, data: dict | None = None) -> str:
    """Identity of a training run: parameters, split and the training data themselves, so a
    checkpoint left by a run on other data (e.g. after re-normalising) is never resumed."""
    keys = {k: getattr(params, k) for k in _TRAINING_KEYS}
    h = hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode())
    h.update("".join(split.astype(str).str[:2]).encode())
    h.update("|".join(map(str, split.index)).encode())
    for key in sorted(data or {}):
        h.update(key.encode())
        h.update(np.ascontiguousarray(data[key].detach().cpu().numpy() if torch.is_tensor(data[key])
                                      else np.asarray(data[key])).tobytes())
    return h.hexdigest()[:16]


def _batches(n: int, batch_size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    # drop a tiny last batch (LayerNorm/BatchNorm-free, but keeps gradient noise even)
    for i in range(0, n, batch_size):
        idx = perm[i:i + batch_size]
        if len(idx) >= 2 or n < 2:
            yield idx


def _eval_loss(model, data, params, device) -> float:
    model.eval()
    with torch.no_grad():
        gen_state = torch.get_rng_state()
        torch.manual_seed(12345)  # validation loss uses a fixed posterior draw
        loss = model.losses(data, params, sample_posterior=False).item()
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


def _fit(adata, split, params, outdir, progress, resume, device):
    from tqdm.auto import tqdm

    t0 = time.time()
    rep_kind = resolve_representation(adata, params.representation)
    train_mask = (split == "train").to_numpy()
    val_mask = (split == "val").to_numpy()
    if train_mask.sum() < 3 or val_mask.sum() < 1:
        raise CosmicInputError(f"cosmic: too few cells to train ({train_mask.sum()} train, {val_mask.sum()} val)")
    pre = Preprocessor(params.n_hvg, params.n_rna_pcs, rep_kind, params.covariates).fit(adata[train_mask])
    tr = _to_tensors(pre.transform(adata[train_mask]), device)
    va = _to_tensors(pre.transform(adata[val_mask]), device)
    _seed_all(params.seed)
    model = CosmicModel(tr["rep"].shape[1], tr["rna"].shape[1], tr["expr"].shape[1], tr["morph"].shape[1],
                        tr["cov"].shape[1], params, use_fm=rep_kind == "fm").to(device)
    model.init_from_pca(pre)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    gen = torch.Generator().manual_seed(params.seed)
    fp = _fingerprint(params, split, tr)
    state = dict(epoch=0, best_val=float("inf"), best_epoch=-1, bad=0, history=[], done=False,
                 best_state=copy.deepcopy(model.state_dict()))
    ckpt = Path(outdir) / CHECKPOINT if outdir is not None else None
    if resume and ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        if saved.get("fingerprint") == fp:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            gen.set_state(saved["generator"])
            torch.set_rng_state(saved["torch_rng"])
            state = saved["train_state"]
            log.info("cosmic: resuming from %s at epoch %d", ckpt, state["epoch"])
        else:
            log.info("cosmic: checkpoint %s has other parameters or split; training from scratch", ckpt)

    def save_checkpoint():
        if ckpt is None:
            return
        with atomic_path(ckpt) as tmp:
            torch.save(dict(fingerprint=fp, model=model.state_dict(), optimizer=opt.state_dict(),
                            generator=gen.get_state(), torch_rng=torch.get_rng_state(), train_state=state,
                            preprocessor=pre.state_dict(), params=params.to_dict()), tmp)

    n = len(tr["rep"])
    bar = tqdm(total=params.epochs, initial=state["epoch"], desc="cosmic", disable=not progress, leave=False)
    while not state["done"] and state["epoch"] < params.epochs:
        model.train()
        total = 0.0
        for idx in _batches(n, params.batch_size, gen):
            idx = idx.to(device)
            loss = model.losses({k: v[idx] for k, v in tr.items()}, params)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            total += loss.item() * len(idx)
        val = _eval_loss(model, va, params, device)
        state["history"].append(dict(epoch=state["epoch"], train_loss=total / n, val_loss=val))
        if val < state["best_val"] - 1e-5:
            state.update(best_val=val, best_epoch=state["epoch"], bad=0,
                         best_state={k: v.detach().clone() for k, v in model.state_dict().items()})
        else:
            state["bad"] += 1
        state["epoch"] += 1
        if state["bad"] >= params.patience:
            state["done"] = True
        bar.update(1)
        bar.set_postfix(train=f"{total / n:.3f}", val=f"{val:.3f}", best=state["best_epoch"])
        if state["epoch"] % 10 == 0:
            save_checkpoint()
    bar.close()
    state["done"] = True
    save_checkpoint()
    model.load_state_dict(state["best_state"])
    model.eval()
    # predictive intervals: per-output spread fitted on validation cells (never test cells)
    calibration = calibrate_model(model, va, params.interval_level, params.n_samples, params.seed)
    result = dict(model=model, preprocessor=pre, history=pd.DataFrame(state["history"]),
                  best_epoch=int(state["best_epoch"]), best_val_loss=float(state["best_val"]),
                  epochs_run=int(state["epoch"]), seconds=time.time() - t0, device=str(device),
                  representation=rep_kind, calibration_scales=calibration)
    if outdir is not None:
        save_model(result, params, Path(outdir) / MODEL)
        with atomic_path(Path(outdir) / "training_log.tsv") as tmp:
            result["history"].to_csv(tmp, sep="\t", index=False)
    return result


def save_model(result: dict, params: CosmicParams, path):
    """Write the final model: weights, preprocessor state, params and architecture sizes."""
    m = result["model"]
    dims = dict(rep_dim=m.r2m.mean_head.out_features, rna_dim=m.m2r.mean_head.out_features,
                n_genes=m.expr_decoder.linear.out_features,
                morph_dim=m.morph_decoder.linear.out_features if m.use_fm else m.r2m.mean_head.out_features,
                cov_dim=m.m2r.cond[0].in_features - m.r2m.mean_head.out_features, use_fm=m.use_fm)
    with atomic_path(path) as tmp:
        torch.save(dict(model={k: v.cpu() for k, v in m.state_dict().items()}, dims=dims,
                        preprocessor=result["preprocessor"].state_dict(), params=params.to_dict(),
                        best_epoch=result["best_epoch"], best_val_loss=result["best_val_loss"]), tmp)


def load_model(path, device="auto") -> tuple[CosmicModel, Preprocessor, CosmicParams]:
    """Load ``model.pt`` written by :func:`fit_cosmic`."""
    d = torch.load(path, map_location="cpu", weights_only=False)
    params = CosmicParams.from_config(d["params"])
    dims = d["dims"]
    model = CosmicModel(dims["rep_dim"], dims["rna_dim"], dims["n_genes"], dims["morph_dim"], dims["cov_dim"],
                        params, dims["use_fm"])
    missing, unexpected = model.load_state_dict(d["model"], strict=False)
    if unexpected or any(not k.endswith("calib_scale") for k in missing):
        raise CosmicInputError(f"{path}: not a model of this COSMIC version (missing {missing}, unexpected "
                               f"{unexpected})")
    return model.to(resolve_device(device)).eval(), Preprocessor.from_state_dict(d["preprocessor"]), params


# ---------------------------------------------------------------------------------------
# prediction
@torch.no_grad()
def predict(model: CosmicModel, pre: Preprocessor, adata, n_samples: int = 100, seed: int = 0) -> dict:
    """Conditional means and samples in both directions for the cells of ``adata``.

    Returns standardised arrays: ``rna_mean``/``rna_samples`` (generated RNA embedding from
    morphology), ``expr_mean``/``expr_samples`` (decoded expression), ``rep_mean``/``rep_samples``
    (generated morphology representation from RNA), ``morph_mean``/``morph_samples`` (region-property
    features; equal to the representation unless it is X_fm), plus the observed arrays.
    """
    model.eval()
    device = next(model.parameters()).device
    obs = pre.transform(adata)
    t = _to_tensors(obs, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = _predict_tensors(model, t, n_samples, gen)
    out = {k: v.float().cpu().numpy() for k, v in out.items()}
    out.update({f"observed_{k}": v for k, v in obs.items()})
    return out


def _decode_samples(dec: "LinearPlusMLP", mean: torch.Tensor, samples: torch.Tensor, gen) -> torch.Tensor:
    """Decoded samples with the decoder's noise; their spread around the decoded mean scaled per output
    by ``dec.calib_scale``."""
    noise = torch.exp(0.5 * dec.logvar)
    raw = torch.stack([dec(s) + noise * torch.randn(s.shape[0], noise.shape[0], device=s.device, generator=gen)
                       for s in samples])
    return mean + dec.calib_scale * (raw - mean)


@torch.no_grad()
def _predict_tensors(model: CosmicModel, t: dict, n_samples: int, gen) -> dict:
    c_m = torch.cat([t["rep"], t["cov"]], 1)
    c_r = torch.cat([t["rna"], t["cov"]], 1)
    rna_mean = model.m2r.mean(c_m)
    rna_s = model.m2r.sample(c_m, n_samples, gen)
    expr_mean = model.expr_decoder(rna_mean)
    expr_s = _decode_samples(model.expr_decoder, expr_mean, rna_s, gen)
    rep_mean = model.r2m.mean(c_r)
    rep_s = model.r2m.sample(c_r, n_samples, gen)
    if model.use_fm:
        morph_mean = model.morph_decoder(rep_mean)
        morph_s = _decode_samples(model.morph_decoder, morph_mean, rep_s, gen)
    else:
        morph_mean, morph_s = rep_mean, rep_s
    return dict(rna_mean=rna_mean, rna_samples=rna_s, expr_mean=expr_mean, expr_samples=expr_s, rep_mean=rep_mean,
                rep_samples=rep_s, morph_mean=morph_mean, morph_samples=morph_s)


def interval_scale(y, mean, samples, level: float) -> np.ndarray:
    """Per output, the factor by which the samples' spread around ``mean`` must be scaled so that the
    central ``level`` interval of the samples covers ``level`` of the cells ``y`` (split-conformal:
    the finite-sample-corrected ``level`` quantile over cells of each cell's required factor).

    ``y``, ``mean``: cells x outputs; ``samples``: n x cells x outputs. A cell above the mean needs
    ``(y - mean) / upper deviation``, one below ``(y - mean) / lower deviation``.
    """
    y, mean, samples = (np.asarray(a, dtype=np.float64) for a in (y, mean, samples))
    lo, hi = np.quantile(samples - mean[None], [(1 - level) / 2, (1 + level) / 2], axis=0)
    e = y - mean
    tiny = 1e-6 * (np.abs(hi - lo).mean(0, keepdims=True) + 1e-12)
    need = np.where(e >= 0, e / np.maximum(hi, tiny), e / np.minimum(lo, -tiny))
    n = len(y)
    q = min(1.0, level * (n + 1) / n) if n > 0 else level
    s = np.quantile(need, q, axis=0, method="higher") if n > 0 else np.ones(y.shape[1])
    return np.clip(np.nan_to_num(s, nan=1.0, posinf=10.0), 0.05, 10.0)


@torch.no_grad()
def calibrate_model(model: CosmicModel, va: dict, level: float, n_samples: int = 100, seed: int = 0) -> dict:
    """Fit every ``calib_scale`` on validation cells (``va``: tensors of :meth:`Preprocessor.transform`).

    Upstream first: the two generators (RNA embedding, morphology representation), then the decoders
    given the calibrated generator samples (expression; region properties when the representation is
    X_fm). Scales fitted on the validation cells only; returns their summaries.
    """
    model.eval()
    for m in (model.m2r, model.r2m, model.expr_decoder, model.morph_decoder):
        if m is not None:
            m.calib_scale.fill_(1.0)
    gen = torch.Generator(device=va["rep"].device).manual_seed(seed + 7919)
    def np_(x):
        return x.float().cpu().numpy()

    def fit(module, key):  # observed va[key] against the predictions P[key_mean], P[key_samples]
        scale = interval_scale(np_(va[key]), np_(P[f"{key}_mean"]), np_(P[f"{key}_samples"]), level)
        module.calib_scale.copy_(torch.as_tensor(scale))

    P = _predict_tensors(model, va, n_samples, gen)
    fit(model.m2r, "rna")
    fit(model.r2m, "rep")
    P = _predict_tensors(model, va, n_samples, gen)  # decoders see the calibrated generator samples
    fit(model.expr_decoder, "expr")
    if model.use_fm:
        fit(model.morph_decoder, "morph")
    out = {}
    for name, m in (("rna_embedding", model.m2r), ("morphology_representation", model.r2m),
                    ("expression", model.expr_decoder), ("morphology_features", model.morph_decoder)):
        if m is not None:
            s = np_(m.calib_scale)
            out[name] = dict(median=float(np.median(s)), min=float(s.min()), max=float(s.max()))
    return out


# ---------------------------------------------------------------------------------------
# evaluation helpers
def _score(y, pred, n_boot, seed, weighted=True) -> dict:
    stat = M.total_r2 if weighted else M.mean_r2
    ci = M.bootstrap_ci(y, pred, stat, n_boot=n_boot, seed=seed)
    r = M.pearson_per_feature(y, pred)
    return dict(total_r2=M.total_r2(y, pred), mean_r2=M.mean_r2(y, pred),
                mean_pearson=float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"),
                median_pearson=float(np.nanmedian(r)) if np.isfinite(r).any() else float("nan"),
                headline=ci)


def _matching(gen, obs, prefix="") -> dict:
    return dict(foscttm=M.foscttm(gen, obs), top1=M.topk_retrieval(gen, obs, 1), top10=M.topk_retrieval(gen, obs, 10),
                n_cells=int(len(obs)))


def _umap_connectivities(x: np.ndarray, n_neighbors: int = 15) -> sp.csr_matrix:
    """Fuzzy k-NN graph of ``x`` as built by ``scanpy.pp.neighbors`` (UMAP connectivities, exact
    Euclidean neighbours, the cell itself counted among its ``n_neighbors``), in numpy: the same graph
    without numba's compile time."""
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    k = max(2, min(int(n_neighbors), n))
    dist, idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    d, idx = dist[:, 1:], idx[:, 1:]  # the first neighbour is the cell itself
    pos = np.where(d > 0, d, np.inf).min(1)
    rho = np.where(np.isfinite(pos), pos, 0.0)
    target = np.log2(k)
    lo, hi, mid = np.zeros(n), np.full(n, np.inf), np.ones(n)
    for _ in range(64):  # binary search of each cell's bandwidth (umap's smooth_knn_dist)
        psum = np.where(d - rho[:, None] > 0, np.exp(-(d - rho[:, None]) / mid[:, None]), 1.0).sum(1)
        done = np.abs(psum - target) < 1e-5
        gt = psum > target
        hi = np.where(gt & ~done, mid, hi)
        lo = np.where(~gt & ~done, mid, lo)
        mid = np.where(done, mid, np.where(np.isinf(hi), mid * 2, (lo + hi) / 2))
    sigma = np.maximum(mid, 1e-3 * np.where(rho > 0, d.mean(1), d.mean()))
    val = np.where(d - rho[:, None] <= 0, 1.0, np.exp(-(d - rho[:, None]) / sigma[:, None]))
    w = sp.csr_matrix((val.ravel(), (np.repeat(np.arange(n), k - 1), idx.ravel())), shape=(n, n))
    return (w + w.T - w.multiply(w.T)).tocsr()


def _cluster_labels(rna_train, rna_test, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """RNA-derived cell-type labels, fitted on training cells only.

    Leiden clustering (scanpy, ``flavor="igraph"``, ``n_iterations=2``, undirected, resolution 1,
    seeded) of the 15-nearest-neighbour UMAP-connectivity graph of the training cells' PCA scores;
    k-means with ``n_clusters`` when scanpy/igraph are missing or Leiden finds a single cluster.
    Test cells take the majority label of their 15 nearest training cells in the same space.
    """
    from sklearn.neighbors import KNeighborsClassifier

    rna_train, rna_test = np.asarray(rna_train, np.float64), np.asarray(rna_test, np.float64)
    train, method = None, "kmeans"
    try:
        import anndata as ad
        import scanpy as sc

        a = ad.AnnData(np.zeros((len(rna_train), 1), np.float32))
        sc.tl.leiden(a, adjacency=_umap_connectivities(rna_train, 15), flavor="igraph", n_iterations=2,
                     directed=False, random_state=seed, resolution=1.0)
        train = a.obs["leiden"].astype(str).to_numpy()
        method = "leiden"
        if len(np.unique(train)) < 2:
            train, method = None, "kmeans"
    except Exception as err:  # noqa: BLE001 - any failure of the optional clustering stack
        log.warning("cosmic: Leiden clustering unavailable (%s); using k-means", err)
    if train is None:
        from sklearn.cluster import KMeans

        k = max(2, min(int(n_clusters), len(rna_train)))
        train = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(rna_train).astype(str)
    test = KNeighborsClassifier(min(15, len(rna_train))).fit(rna_train, train).predict(rna_test)
    return train, test, method


def _transfer(rep_train, y_train, y_test, generated: dict[str, np.ndarray], rep_test_obs,
              return_predictions: bool = False):
    """Classifier on observed training representations, applied to observed and generated test
    representations (accuracy against the test labels)."""
    acc, preds = M.classifier_transfer(rep_train, y_train, {"observed_morphology": rep_test_obs,
                                                            **{f"generated_{k}": g for k, g in generated.items()}},
                                       y_test, standardise=False, C=1.0, max_iter=2000)
    return (acc, preds) if return_predictions else acc


REFERENCE_DEFINITIONS = dict(
    labels="RNA-derived cell types: Leiden clusters of training cells (test cells: label of their nearest "
           "training cells), or the obs column cosmic.label_key",
    pearson_all_cells="per-gene Pearson of predicted vs observed log-normalised expression over all test cells; "
                      "mean and median over genes (a constant prediction scores 0)",
    pearson_detected_cells="per-gene Pearson over the test cells where the gene is detected (count > 0), genes "
                           "detected in at least min_cells test cells",
    pearson_within_type="per-gene Pearson within each stratum (cell type, x sample when the test cells span several "
                        "samples) with at least min_cells cells; mean/median over genes, averaged over strata. "
                        "cosmic_permuted_within_type: COSMIC predictions shuffled within stratum (seeded), so cell "
                        "identity alone scores ~0 within type",
    cell_type_classifier="accuracy of a logistic regression trained on real (standardised) expression of training "
                         "cells, applied to predicted expression of test cells; observed: applied to real test "
                         "expression (ceiling); chance_majority: always the most frequent training type",
    rna_to_morphology="real test cells vs cells generated from their RNA, in the standardised representation space; "
                      "sets subsampled to equal size. sliced_wasserstein (lower better), knn_accuracy (leave-one-out "
                      "1-NN real-vs-generated accuracy, 0.5 ideal, <0.5 copying), coverage (fraction of real cells "
                      "that are the nearest real neighbour of some generated cell, higher better), "
                      "classifier_accuracy (5-fold CV accuracy of a shrinkage LDA on standardised features and their "
                      "squares, 0.5 ideal). cosmic_sample: one COSMIC sample per cell (averaged over draws); "
                      "cosmic_mean: the conditional mean; ridge_residual: ridge prediction + the residual of a "
                      "random training cell; train_real: real training cells of the same type (an ideal generator: "
                      "the floor/ceiling each metric can reach at this sample size)",
)


def _reference_metrics(*, y_expr, pred_expr, expr_sample, detected, expr_train, lab_tr, lab_te, samples_te,
                       y_rep, rep_mean, rep_samples, ridge_rep_te, ridge_resid_tr, rep_train, space, seed,
                       min_cells: int = 10, n_draws: int = 3, n_projections: int = 128) -> dict:
    """Evaluation in the terms of the published COSMIC code, on test cells only (see REFERENCE_DEFINITIONS)."""
    t0 = time.time()
    lab_tr, lab_te = np.asarray(lab_tr).astype(str), np.asarray(lab_te).astype(str)
    samples_te = np.asarray(samples_te).astype(str)
    several = len(np.unique(samples_te)) > 1
    strata = np.char.add(np.char.add(lab_te, " | "), samples_te) if several else lab_te

    # --- morphology -> RNA
    preds = {m: pred_expr[m] for m in ("cosmic", "ridge", "knn", "mean") if m in pred_expr}
    preds["cosmic_permuted_within_type"] = M.permute_within_groups(pred_expr["cosmic"], strata, seed)

    def summary(r):
        r = r[np.isfinite(r)]
        return dict(mean=float(r.mean()) if len(r) else float("nan"),
                    median=float(np.median(r)) if len(r) else float("nan"), n_genes=int(len(r)))

    all_cells = {m: summary(M.pearson_per_feature(y_expr, p, constant_prediction=0.0)) for m, p in preds.items()}
    detected_cells = {m: summary(M.masked_pearson_per_feature(y_expr, p, detected, min_cells=min_cells))
                      for m, p in preds.items()}
    within = {}
    for m, p in preds.items():
        w = M.within_group_pearson(y_expr, p, strata, min_cells=min_cells)
        within[m] = dict(mean=w["mean"], median=w["median"], n_strata=w["n_groups"])
        if m == "cosmic":
            within["per_stratum_cosmic"] = w["per_group"]
    within["strata"] = "cell_type x sample" if several else "cell_type"
    clf, _ = M.classifier_transfer(expr_train, lab_tr, {"observed": y_expr, **{m: pred_expr[m] for m in (
        "cosmic", "ridge", "knn", "mean") if m in pred_expr}, "cosmic_sample": expr_sample}, lab_te)
    m2r = dict(pearson_all_cells=all_cells, pearson_detected_cells=dict(min_cells=min_cells, **detected_cells),
               pearson_within_type=dict(min_cells=min_cells, **within), cell_type_classifier=clf)

    # --- RNA -> morphology: generated vs real distributions
    rng = np.random.default_rng(seed)
    n_draws = max(1, min(int(n_draws), len(rep_samples)))
    n_te = len(y_rep)
    generators = {
        "cosmic_sample": [rep_samples[d] for d in range(n_draws)],
        "cosmic_mean": [rep_mean],
        "ridge_residual": [ridge_rep_te + ridge_resid_tr[rng.integers(0, len(ridge_resid_tr), n_te)]
                           for _ in range(n_draws)],
    }

    def compare(sel_te, sel_tr) -> dict:
        out = {}
        real = y_rep[sel_te]
        for m, draws in generators.items():
            rows = [M.two_sample_metrics(real, g[sel_te], seed=seed + d, n_projections=n_projections)
                    for d, g in enumerate(draws)]
            out[m] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        ref = rep_train[sel_tr]
        rows = [M.two_sample_metrics(real, ref, seed=seed + d, n_projections=n_projections) for d in range(n_draws)]
        out["train_real"] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        return out

    overall = compare(np.ones(n_te, bool), np.ones(len(rep_train), bool))
    per_type, skipped = {}, {}
    for t in np.unique(lab_te):
        sel_te, sel_tr = lab_te == t, lab_tr == t
        if sel_te.sum() < min_cells or sel_tr.sum() < min_cells:
            skipped[str(t)] = int(sel_te.sum())
            continue
        per_type[str(t)] = dict(n_test_cells=int(sel_te.sum()), **compare(sel_te, sel_tr))
    mean_types = {}
    if per_type:
        for m in list(generators) + ["train_real"]:
            mean_types[m] = {k: float(np.mean([v[m][k] for v in per_type.values()]))
                             for k in ("sliced_wasserstein", "knn_accuracy", "coverage", "classifier_accuracy")}
    r2m = dict(space=space, n_draws=n_draws, n_projections=n_projections, min_cells=min_cells, overall=overall,
               mean_over_types=mean_types, n_types_evaluated=len(per_type), per_type=per_type,
               types_too_small=skipped)
    return dict(morphology_to_rna=m2r, rna_to_morphology=r2m, definitions=REFERENCE_DEFINITIONS,
                seconds=time.time() - t0)


def load_truth(truth) -> dict:
    """Demo ground truth from a directory (``ground_truth.tsv``, ``genes.tsv``, ``morphology_oracle.tsv``,
    ``oracle.json``) or a mapping with keys ``cells``, ``genes``, ``morphology``, ``oracle`` (frames/paths)."""
    if truth is None:
        return {}
    if isinstance(truth, (str, Path)):
        d = Path(truth)
        truth = dict(cells=d / "ground_truth.tsv", genes=d / "genes.tsv", morphology=d / "morphology_oracle.tsv",
                     oracle=d / "oracle.json")
    out = {}
    for k, v in truth.items():
        if isinstance(v, (str, Path)):
            v = Path(v)
            if not v.exists():
                continue
            v = json.loads(v.read_text()) if v.suffix == ".json" else pd.read_csv(v, sep="\t")
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------
# the stage
def run_cosmic(cohort, outdir_model, predictions_path, metrics_path, variance_path, params=None,
               figures_dir=None, decode_images: Callable[[np.ndarray], np.ndarray] | None = None,
               truth=None, progress: bool = True, crops: Mapping[str, Any] | None = None,
               dna_channel: int = 0) -> dict:
    """Split, fit, evaluate on held-out test cells only, and write the stage outputs.

    ``cohort``: AnnData or path of ``paired/cohort.h5ad``. ``params``: :class:`CosmicParams` or the
    ``cosmic:`` config mapping. ``decode_images``: optional callable mapping foundation embeddings
    (cells x dims, X_fm units) to crops (cells x C x S x S). ``truth``: demo ground truth (see
    :func:`load_truth`). ``crops``: sample -> ``crops.npy``, the real nuclei shown beside the generated
    ones (cohort obs ``crop_index``; ``dna_channel``: the DNA channel's index in the crops). Returns
    the metrics dictionary (also written to ``metrics_path``); also writes ``cell_type_confusion.tsv``
    next to it and, with ``figures_dir``, the figures.
    BLAS/OpenMP pools are capped at ``params.num_threads`` (0: no cap) for the whole stage: the
    matrices are small and oversubscribed BLAS threads are many times slower on a shared node.
    """
    from threadpoolctl import threadpool_limits

    params = params if isinstance(params, CosmicParams) else CosmicParams.from_config(params or {})
    with threadpool_limits(limits=params.num_threads if params.num_threads > 0 else None):
        return _run_cosmic(cohort, outdir_model, predictions_path, metrics_path, variance_path, params,
                           figures_dir, decode_images, truth, progress, crops, dna_channel)


def _run_cosmic(cohort, outdir_model, predictions_path, metrics_path, variance_path, params, figures_dir,
                decode_images, truth, progress, crops=None, dna_channel=0) -> dict:
    import anndata as ad

    t0 = time.time()
    adata = ad.read_h5ad(cohort) if isinstance(cohort, (str, Path)) else cohort
    if "sample" not in adata.obs:
        raise CosmicInputError("the cohort has no obs column 'sample'")
    split = make_splits(adata.obs, params.fractions, params.seed, params.stratify, params.holdout_samples)
    if (split == "test").sum() < 3:
        raise CosmicInputError(f"cosmic: only {(split == 'test').sum()} test cells; raise the test fraction")
    fit = fit_cosmic(adata, split, params, outdir=outdir_model, progress=progress)
    model, pre = fit["model"], fit["preprocessor"]
    train_a, test_a = adata[(split == "train").to_numpy()], adata[(split == "test").to_numpy()]
    P = predict(model, pre, test_a, params.n_samples, seed=params.seed)
    T = pre.transform(train_a)
    nb, seed, k = params.n_bootstrap, params.seed, params.knn_neighbors
    genes = pre.gene_names
    morph_names = np.asarray(adata.uns.get("morph_features", [f"morph_{i}" for i in range(adata.obsm["X_morph"].shape[1])])).astype(str)

    # --- baselines on the same split (inputs: standardised representations of train cells)
    x_rep_tr, x_rep_te = np.hstack([T["rep"], T["cov"]]), np.hstack([P["observed_rep"], P["observed_cov"]])
    x_rna_tr, x_rna_te = np.hstack([T["rna"], T["cov"]]), np.hstack([P["observed_rna"], P["observed_cov"]])
    base_expr = M.baselines(x_rep_tr, T["expr"], x_rep_te, k)
    base_rna = M.baselines(x_rep_tr, T["rna"], x_rep_te, k)
    base_rep = M.baselines(x_rna_tr, T["rep"], x_rna_te, k)
    base_morph = M.baselines(x_rna_tr, T["morph"], x_rna_te, k) if pre.state["representation"] == "fm" else base_rep
    pred_expr = {"cosmic": P["expr_mean"], **base_expr}
    pred_rna = {"cosmic": P["rna_mean"], **base_rna}
    pred_rep = {"cosmic": P["rep_mean"], **base_rep}
    pred_morph = {"cosmic": P["morph_mean"], **base_morph}
    y_expr, y_rna, y_rep, y_morph = P["observed_expr"], P["observed_rna"], P["observed_rep"], P["observed_morph"]
    # RNA embedding R² in PCA-score units (variance-weighted = total over PCs)
    scale = pre.state["pc_std"]

    m2r = dict(
        expression={m: _score(y_expr, p, nb, seed) for m, p in pred_expr.items()},
        embedding={m: dict(total_r2=M.total_r2(y_rna * scale, p * scale), mean_r2=M.mean_r2(y_rna, p))
                   for m, p in pred_rna.items()},
    )
    r2m = dict(features={m: _score(y_morph, p, nb, seed, weighted=False) for m, p in pred_morph.items()})
    if pre.state["representation"] == "fm":
        r2m["fm_embedding"] = {m: _score(y_rep, p, nb, seed, weighted=False) for m, p in pred_rep.items()}
    gene_r2 = {m: M.r2_per_feature(y_expr, p) for m, p in pred_expr.items()}
    gene_r = {m: M.pearson_per_feature(y_expr, p) for m, p in pred_expr.items()}
    feat_r2 = {m: M.r2_per_feature(y_morph, p) for m, p in pred_morph.items()}
    feat_r = {m: M.pearson_per_feature(y_morph, p) for m, p in pred_morph.items()}
    order = np.argsort(-np.nan_to_num(gene_r2["cosmic"], nan=-np.inf))
    m2r["top_genes"] = [dict(gene=str(genes[i]), r2=float(gene_r2["cosmic"][i])) for i in order[:20]]

    vd = dict(
        transcriptome_explained_by_morphology={m: v["headline"] for m, v in m2r["expression"].items()},
        morphology_explained_by_transcriptome={m: v["headline"] for m, v in r2m["features"].items()},
        definitions=dict(
            transcriptome_explained_by_morphology="variance-weighted total R² over kept genes of the "
                                                  "morphology->RNA conditional mean (log-normalised expression)",
            morphology_explained_by_transcriptome="mean R² over standardised region-property features of the "
                                                  "RNA->morphology conditional mean"),
    )
    matching = dict(
        rna_to_morphology={m: _matching(p, y_rep) for m, p in pred_rep.items()},
        morphology_to_rna={m: _matching(p, y_rna) for m, p in pred_rna.items()},
    )
    lvl = params.interval_level
    calib = dict(level=lvl, fitted_on="validation cells: per-output scale of the samples' spread "
                                       "(split-conformal quantile), applied unchanged to test cells",
                 scales=fit.get("calibration_scales"),
                 rna_embedding=M.interval_coverage(y_rna, P["rna_samples"], lvl)["coverage"],
                 morphology_representation=M.interval_coverage(y_rep, P["rep_samples"], lvl)["coverage"],
                 expression=M.interval_coverage(y_expr, P["expr_samples"], lvl)["coverage"])
    if pre.state["representation"] == "fm":
        calib["morphology_features"] = M.interval_coverage(y_morph, P["morph_samples"], lvl)["coverage"]

    # --- cell-type transfer
    if params.label_key is not None:
        if params.label_key not in adata.obs:
            raise CosmicInputError(f"cosmic.label_key '{params.label_key}' is not an obs column of the cohort")
        lab_tr = train_a.obs[params.label_key].astype(str).to_numpy()
        lab_te = test_a.obs[params.label_key].astype(str).to_numpy()
        lab_method = f"obs:{params.label_key}"
    else:
        lab_tr, lab_te, lab_method = _cluster_labels(T["rna"] * scale, y_rna * scale, params.n_clusters, seed)
    acc, lab_pred = _transfer(T["rep"], lab_tr, lab_te, {**pred_rep, "cosmic_sample": P["rep_samples"][0]}, y_rep,
                              return_predictions=True)
    transfer = dict(labels=lab_method, **acc)
    # The other observed morphology representation (foundation embedding or region properties), so
    # both are read against the same RNA types; its own classifier is fitted on training cells.
    other_key, other_source = (("X_fm", "observed_foundation") if pre.state["representation"] == "morph"
                               else ("X_morph", "observed_region_properties"))
    sources = ["observed_morphology", "generated_cosmic", "generated_cosmic_sample"]
    if other_key in adata.obsm:
        acc_o, pred_o = M.classifier_transfer(np.asarray(train_a.obsm[other_key], dtype=np.float32), lab_tr,
                                              {other_source: np.asarray(test_a.obsm[other_key], dtype=np.float32)},
                                              lab_te, standardise=True, C=1.0, max_iter=2000)
        transfer[other_source] = acc_o[other_source]
        lab_pred[other_source] = pred_o[other_source]
        sources.insert(1, other_source)
    confusion = _confusion_table(lab_te, {k: lab_pred[k] for k in sources})

    # --- evaluation in the terms of the published COSMIC code
    src = test_a.layers["counts"] if "counts" in test_a.layers else test_a.X
    detected = _dense(src[:, pre.state["gene_index"]]) > 0
    ridge_rep = M.ridge_baseline(x_rna_tr, T["rep"], np.vstack([x_rna_tr, x_rna_te]))
    reference = _reference_metrics(
        y_expr=y_expr, pred_expr=pred_expr, expr_sample=P["expr_samples"][0], detected=detected,
        expr_train=T["expr"], lab_tr=lab_tr, lab_te=lab_te, samples_te=test_a.obs["sample"].astype(str).to_numpy(),
        y_rep=y_rep, rep_mean=P["rep_mean"], rep_samples=P["rep_samples"], ridge_rep_te=ridge_rep[len(x_rna_tr):],
        ridge_resid_tr=T["rep"] - ridge_rep[:len(x_rna_tr)], rep_train=T["rep"],
        space=f"standardised {'X_fm' if pre.state['representation'] == 'fm' else 'X_morph'}", seed=seed)
    reference["labels"] = dict(method=lab_method, n_types=int(len(np.unique(lab_tr))),
                               train_counts=pd.Series(lab_tr).value_counts().sort_index().to_dict(),
                               test_counts=pd.Series(lab_te).value_counts().sort_index().to_dict())
    reference["cell_type_confusion"] = "cell_type_confusion.tsv"

    results = dict(
        n_cells=dict(train=int((split == "train").sum()), val=int((split == "val").sum()),
                     test=int((split == "test").sum())),
        test_samples=sorted(test_a.obs["sample"].astype(str).unique().tolist()),
        representation=pre.state["representation"], n_genes=int(len(genes)), n_rna_pcs=int(len(scale)),
        n_morph_features=int(y_morph.shape[1]), n_rep_dims=int(y_rep.shape[1]),
        training=dict(best_epoch=fit["best_epoch"], epochs_run=fit["epochs_run"],
                      best_val_loss=fit["best_val_loss"], seconds=fit["seconds"], device=fit["device"]),
        morphology_to_rna=m2r, rna_to_morphology=r2m, variance_decomposition=vd, matching=matching,
        cell_type_transfer=transfer, reference_metrics=reference, calibration=calib, params=params.to_dict(),
    )

    # --- per-feature table
    rows = pd.DataFrame({"direction": "morphology_to_rna", "feature": genes, "variance": y_expr.var(0),
                         **{f"r2_{m}": v for m, v in gene_r2.items()}, **{f"pearson_{m}": v for m, v in gene_r.items()}})
    rows_m = pd.DataFrame({"direction": "rna_to_morphology", "feature": morph_names, "variance": y_morph.var(0),
                           **{f"r2_{m}": v for m, v in feat_r2.items()},
                           **{f"pearson_{m}": v for m, v in feat_r.items()}})
    table = pd.concat([rows, rows_m], ignore_index=True)
    if pre.state["representation"] == "fm":
        table = pd.concat([table, pd.DataFrame({
            "direction": "rna_to_fm", "feature": [f"fm_{i}" for i in range(y_rep.shape[1])], "variance": y_rep.var(0),
            **{f"r2_{m}": M.r2_per_feature(y_rep, p) for m, p in pred_rep.items()},
            **{f"pearson_{m}": M.pearson_per_feature(y_rep, p) for m, p in pred_rep.items()}})], ignore_index=True)

    # --- demo ground truth
    tr_ = load_truth(truth)
    if tr_:
        results["oracle"] = _oracle_comparison(tr_, table, test_a, transfer, T, pred_rep, y_rep, train_a, results)
        val_a = adata[(split == "val").to_numpy()]
        ach = _achievable_ceiling(tr_, pre, train_a, val_a, test_a, T, y_expr, y_morph, results)
        if ach:
            results["oracle"]["achievable_ceiling"] = ach

    # --- outputs
    with atomic_path(variance_path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    with atomic_path(Path(metrics_path).with_name("cell_type_confusion.tsv")) as tmp:
        confusion.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    _write_predictions(predictions_path, test_a, genes, P, pre, params, decode_images, split)
    if figures_dir is not None:
        _figures(Path(figures_dir), genes, gene_r2, results, decode_images, P, pre, table, test_a, crops,
                 dna_channel)
        _confusion_figure(Path(figures_dir), confusion, transfer)
    results["seconds_total"] = time.time() - t0
    write_json(metrics_path, results)
    return results


ACHIEVABLE_DEFINITION = (
    "finite-sample ceiling: held-out R² (same statistic, genes/features and test cells as the headline) of an "
    "RBF kernel ridge regression from the TRUE latent shared state of the demo generator (cell type, treatment, "
    "response of treated cells, mitotic arrest, polyploidy, cycle position as angle, DNA content, z_shared) to the "
    "MEASURED target, fitted on training cells with (alpha, gamma) chosen on validation cells. Unlike the oracle "
    "(infinite cells, region properties on true masks of isolated nuclei), it pays for a finite training set and "
    "for segmentation/measurement noise, so it is what a predictor given the true state could reach here; a "
    "predictor given only the other measured modality cannot exceed it except by chance. ratio_*: achieved / "
    "ceiling")


def shared_state_frame(cells: pd.DataFrame) -> pd.DataFrame:
    """The demo generator's shared latent state of each cell as named numeric columns (see
    ACHIEVABLE_DEFINITION); missing values become 0."""
    def flag(c):
        return cells[c].astype(str).str.lower().eq("true").to_numpy(float) if c in cells else np.zeros(len(cells))
    pos = cells["cycle_position"].to_numpy(float)
    treated = (cells["treatment"].astype(str) != "control").to_numpy(float) if "treatment" in cells \
        else np.zeros(len(cells))
    cols = {f"type_{t}": (cells["cell_type"].astype(str) == t).to_numpy(float)
            for t in ("luminal", "basal", "neuroendocrine")}
    cols.update(treated=treated, treated_resistant=treated * flag("resistant"),
                mitotic_arrest=flag("mitotic_arrest"), polyploid=flag("polyploid"),
                cycle_sin=np.sin(2 * np.pi * pos), cycle_cos=np.cos(2 * np.pi * pos), cycle_position=pos)
    cols.update({c: cells[c].to_numpy(float) for c in ("dna_content", "z_shared") if c in cells})
    return pd.DataFrame(cols).fillna(0.0)


def shared_state_features(cells: pd.DataFrame) -> np.ndarray:
    """:func:`shared_state_frame` as a cells x variables array."""
    return np.nan_to_num(shared_state_frame(cells).to_numpy(float))


def _achievable_ceiling(tr_, pre, train_a, val_a, test_a, T, y_expr, y_morph, results) -> dict:
    """Finite-sample ceiling from the true shared state (demo only; see ACHIEVABLE_DEFINITION)."""
    cells = tr_.get("cells")
    need = {"sample", "barcode", "cell_type", "cycle_position"}
    if cells is None or not need <= set(cells.columns) or len(val_a) < 3:
        return {}
    key = cells.assign(sample=cells["sample"].astype(str), barcode=cells["barcode"].astype(str)) \
        .drop_duplicates(["sample", "barcode"]).set_index(["sample", "barcode"])

    def state(a):
        c = key.reindex(pd.MultiIndex.from_arrays([a.obs["sample"].astype(str), a.obs["barcode"].astype(str)]))
        return c.reset_index(), c["cell_type"].notna().to_numpy()

    (c_tr, ok_tr), (c_va, ok_va), (c_te, ok_te) = state(train_a), state(val_a), state(test_a)
    if not (ok_tr.all() and ok_va.all() and ok_te.all()):
        return dict(skipped=f"ground truth misses {int((~ok_tr).sum() + (~ok_va).sum() + (~ok_te).sum())} cells")
    t0 = time.time()
    s_tr, s_va, s_te = (shared_state_features(c) for c in (c_tr, c_va, c_te))
    V = pre.transform(val_a)
    vd = results["variance_decomposition"]
    out = dict(definition=ACHIEVABLE_DEFINITION)
    for name, y_tr, y_va, y_te, stat, vkey, okey in (
            ("transcriptome", T["expr"], V["expr"], y_expr, M.total_r2, "transcriptome_explained_by_morphology",
             ("transcriptome", "oracle_total_r2")),
            ("morphology", T["morph"], V["morph"], y_morph, M.mean_r2, "morphology_explained_by_transcriptome",
             ("morphology", "oracle_mean_r2"))):
        fit = M.kernel_ridge_tuned(s_tr, y_tr, s_va, y_va, s_te, statistic=stat)
        ceiling = stat(y_te, fit["test"])
        oracle = results.get("oracle", {}).get(okey[0], {}).get(okey[1])
        out[name] = dict(ceiling_r2=ceiling, alpha=fit["alpha"], gamma=fit["gamma"],
                         ceiling_over_oracle=ceiling / oracle if oracle else None,
                         **{f"ratio_{m}": v["value"] / ceiling for m, v in vd[vkey].items()},
                         ratio_ci_cosmic=[vd[vkey]["cosmic"]["ci_low"] / ceiling,
                                          vd[vkey]["cosmic"]["ci_high"] / ceiling])
    out["seconds"] = time.time() - t0
    return out


def _oracle_comparison(tr_, table, test_a, transfer, T, pred_rep, y_rep, train_a, results) -> dict:
    out = {}
    genes_t = tr_.get("genes")
    if genes_t is not None and "oracle_r2" in genes_t:
        g = genes_t.set_index("gene")
        sel = table["direction"] == "morphology_to_rna"
        feats = table.loc[sel, "feature"]
        table.loc[sel, "oracle_r2"] = feats.map(g["oracle_r2"]).to_numpy()
        if "program" in g:
            table.loc[sel, "program"] = feats.map(g["program"]).to_numpy()
            # ranks among all kept genes (1 = best predicted), by COSMIC and by the oracle
            tg = table[sel].assign(rank=lambda d: d["r2_cosmic"].rank(ascending=False),
                                   oracle_rank=lambda d: d["oracle_r2"].rank(ascending=False))
            out["r2_by_program"] = {str(k): dict(median_r2=float(v["r2_cosmic"].median()),
                                                 mean_r2=float(v["r2_cosmic"].mean()),
                                                 median_oracle_r2=float(v["oracle_r2"].median()),
                                                 median_rank=float(v["rank"].median()),
                                                 median_oracle_rank=float(v["oracle_rank"].median()),
                                                 n=int(len(v)))
                                    for k, v in tg.groupby("program")}
            out["n_genes_ranked"] = int(len(tg))
            top = tg.sort_values("r2_cosmic", ascending=False).head(50)
            out["top50_genes_programs"] = top["program"].value_counts().to_dict()
        # oracle total on the same genes, weighted by test-cell variance like the achieved total
        tg = table[sel & table["oracle_r2"].notna()]
        w = tg["variance"].to_numpy()
        oracle_total = float((tg["oracle_r2"] * w).sum() / w.sum())
        ach = results["variance_decomposition"]["transcriptome_explained_by_morphology"]
        out["transcriptome"] = dict(oracle_total_r2=oracle_total, oracle_total_r2_reported=tr_.get("oracle", {}).get(
            "rna_total_oracle_r2"), **{f"ratio_{m}": v["value"] / oracle_total for m, v in ach.items()},
            ratio_ci_cosmic=[ach["cosmic"]["ci_low"] / oracle_total, ach["cosmic"]["ci_high"] / oracle_total])
    morph_t = tr_.get("morphology")
    if morph_t is not None and "oracle_r2" in morph_t:
        mt = morph_t.set_index("feature")
        sel = table["direction"] == "rna_to_morphology"
        table.loc[sel, "oracle_r2"] = table.loc[sel, "feature"].map(mt["oracle_r2"]).to_numpy()
        tm = table[sel & table["oracle_r2"].notna()]
        oracle_mean = float(tm["oracle_r2"].mean())
        ach = results["variance_decomposition"]["morphology_explained_by_transcriptome"]
        out["morphology"] = dict(oracle_mean_r2=oracle_mean, n_features_with_oracle=int(len(tm)),
                                 oracle_mean_r2_reported=tr_.get("oracle", {}).get(
                                     "morphology_total_oracle_r2_standardised"),
                                 achieved_mean_r2_same_features=float(tm["r2_cosmic"].mean()),
                                 **{f"ratio_{m}": float(tm[f"r2_{m}"].mean()) / oracle_mean
                                    for m in ("cosmic", "ridge", "knn", "mean")},
                                 ratio_ci_cosmic=[ach["cosmic"]["ci_low"] / oracle_mean,
                                                  ach["cosmic"]["ci_high"] / oracle_mean])
    if "oracle_r2" in table:
        table["r2_over_oracle"] = table["r2_cosmic"] / table["oracle_r2"]
    cells = tr_.get("cells")
    if cells is not None and "cell_type" in cells:
        key = cells.assign(sample=cells["sample"].astype(str), barcode=cells["barcode"].astype(str)) \
            .drop_duplicates(["sample", "barcode"]).set_index(["sample", "barcode"])
        def labels(a):
            idx = pd.MultiIndex.from_arrays([a.obs["sample"].astype(str), a.obs["barcode"].astype(str)])
            return key.reindex(idx)
        lt, le = labels(train_a), labels(test_a)
        ok_t, ok_e = lt["cell_type"].notna().to_numpy(), le["cell_type"].notna().to_numpy()
        if ok_t.sum() > 2 and ok_e.sum() > 2:
            out["cell_type_transfer_truth"] = _transfer(
                T["rep"][ok_t], lt["cell_type"].to_numpy()[ok_t].astype(str), le["cell_type"].to_numpy()[ok_e].astype(str),
                {m: p[ok_e] for m, p in pred_rep.items()}, y_rep[ok_e])
            if "phase" in le:
                out["phase_transfer_truth"] = _transfer(
                    T["rep"][ok_t], lt["phase"].to_numpy()[ok_t].astype(str), le["phase"].to_numpy()[ok_e].astype(str),
                    {m: p[ok_e] for m, p in pred_rep.items()}, y_rep[ok_e])
        out["n_test_cells_matched_to_truth"] = int(ok_e.sum())
    return out


def _label_order(labels) -> list[str]:
    """Labels sorted numerically when they are cluster numbers, else alphabetically."""
    labels = sorted({str(x) for x in labels})
    return sorted(labels, key=int) if all(x.isdigit() for x in labels) else labels


CONFUSION_SOURCES = {"observed_morphology": "observed morphology (COSMIC's representation)",
                     "observed_foundation": "observed foundation embedding",
                     "observed_region_properties": "observed region properties",
                     "generated_cosmic": "generated (COSMIC mean)",
                     "generated_cosmic_sample": "generated (COSMIC sample)"}


def _confusion_table(true, predicted: dict[str, np.ndarray]) -> pd.DataFrame:
    """Long table: source x true RNA label x predicted label -> number and fraction of test cells."""
    labels = _label_order(np.concatenate([np.asarray(true).astype(str)]
                                         + [np.asarray(p).astype(str) for p in predicted.values()]))
    rows = []
    for source, pred in predicted.items():
        c = M.confusion_counts(true, pred, labels)
        long = c.stack().rename("n_cells").reset_index()
        row = long.groupby("true", sort=False)["n_cells"].transform("sum")
        long["fraction_of_true"] = long["n_cells"] / row.where(row > 0)
        rows.append(long.rename(columns={"true": "true_label", "predicted": "predicted_label"})
                    .assign(source=source))
    out = pd.concat(rows, ignore_index=True)
    return out[["source", "true_label", "predicted_label", "n_cells", "fraction_of_true"]]


def _confusion_figure(outdir: Path, confusion: pd.DataFrame, transfer: dict):
    """Row-normalised confusion matrices side by side (true RNA type x type read from morphology)."""
    from .plotting import _pyplot

    plt = _pyplot()
    outdir.mkdir(parents=True, exist_ok=True)
    sources = list(dict.fromkeys(confusion["source"]))
    labels = _label_order(confusion["true_label"])
    fig, axes = plt.subplots(1, len(sources), figsize=(4.0 * len(sources) + 0.8, 4.2), squeeze=False,
                             gridspec_kw=dict(wspace=0.35))
    rotate = 90 if max(len(x) for x in labels) * len(labels) > 24 else 0
    for col, (ax, source) in enumerate(zip(axes[0], sources)):
        sub = confusion[confusion["source"] == source]
        frac = sub.pivot(index="true_label", columns="predicted_label", values="fraction_of_true") \
            .reindex(index=labels, columns=labels).fillna(0).to_numpy()
        counts = sub.pivot(index="true_label", columns="predicted_label", values="n_cells") \
            .reindex(index=labels, columns=labels).fillna(0).to_numpy().astype(int)
        im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        if len(labels) <= 16:
            for i in range(len(labels)):
                for j in range(len(labels)):
                    if counts[i, j]:
                        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                                color="white" if frac[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=rotate)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        acc = transfer.get(source)
        name = CONFUSION_SOURCES.get(source, source)
        ax.set(xlabel="type predicted from morphology", ylabel="RNA cell type (test cells)" if col == 0 else "",
               title=f"{name}\naccuracy {acc:.2f}" if acc is not None else name)
        ax.title.set_fontsize(9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="fraction of the RNA type")
    fig.suptitle(f"Cell type read from morphology vs RNA-derived type ({transfer.get('labels', '')} labels, "
                 "test cells)", fontsize=10)
    save_figure(fig, outdir / "cell_type_confusion.png", dpi=120)
    (outdir / "cell_type_confusion.txt").write_text(
        "Confusion matrices on test cells: rows are RNA-derived cell types (Leiden clusters of training cells "
        "transferred to test cells, or cosmic.label_key), columns the type predicted by a logistic regression "
        "trained on observed morphology of training cells and applied to the observed morphology (COSMIC's "
        "representation, and the other observed representation with its own classifier when present), the COSMIC "
        "conditional mean generated from RNA, and one COSMIC sample. Colour: fraction of the row; numbers: cells. "
        "Table: cell_type_confusion.tsv.\n")


def _write_predictions(path, test_a, genes, P, pre, params, decode_images, split):
    import anndata as ad

    n_out = min(params.n_output_samples, P["expr_samples"].shape[0])
    obs = test_a.obs.copy()
    obs["split"] = "test"
    out = ad.AnnData(X=P["observed_expr"], obs=obs, var=pd.DataFrame(index=pd.Index(genes, name="gene")))
    out.layers["predicted_mean"] = P["expr_mean"]
    for i in range(n_out):
        out.layers[f"predicted_sample_{i}"] = P["expr_samples"][i]
    rep_key = "X_fm" if pre.state["representation"] == "fm" else "X_morph"
    out.obsm["X_morph_observed"] = np.asarray(test_a.obsm[rep_key], dtype=np.float32)
    out.obsm["X_morph_generated"] = pre.rep_to_raw(P["rep_mean"])
    for i in range(n_out):
        out.obsm[f"X_morph_generated_sample_{i}"] = pre.rep_to_raw(P["rep_samples"][i])
    out.obsm["X_morph_features"] = np.asarray(test_a.obsm["X_morph"], dtype=np.float32)
    out.obsm["X_morph_features_generated"] = (P["morph_mean"] * pre.state["morph_std"] + pre.state["morph_mean"]).astype(np.float32)
    out.obsm["X_rna_observed"] = P["observed_rna"]
    out.obsm["X_rna_generated"] = P["rna_mean"]
    for i in range(n_out):
        out.obsm[f"X_rna_generated_sample_{i}"] = P["rna_samples"][i]
    out.uns["cosmic"] = dict(representation=pre.state["representation"], representation_key=rep_key,
                             morph_features=list(map(str, test_a.uns.get("morph_features", []))),
                             note="X: observed log-normalised expression of kept genes; predicted_* from morphology; "
                                  "X_morph_generated*: generated from RNA in the units of obsm[representation_key]; "
                                  "X_rna_*: standardised training-cell PCA scores",
                             params=json.dumps(params.to_dict()))
    if decode_images is not None:
        if pre.state["representation"] != "fm":
            log.warning("cosmic: decode_images given but the representation is X_morph; no images generated")
        else:
            imgs = np.stack([np.asarray(decode_images(out.obsm["X_morph_generated"]), dtype=np.float16)]
                            + [np.asarray(decode_images(out.obsm[f"X_morph_generated_sample_{i}"]), dtype=np.float16)
                               for i in range(n_out)], 0)
            img_path = Path(path).with_name(Path(path).name.replace(".h5ad", "") + "_generated_images.npy")
            with atomic_path(img_path) as tmp:
                np.save(tmp, imgs)
            out.uns["cosmic"]["generated_images"] = img_path.name
            out.uns["cosmic"]["generated_images_layout"] = "(1 + n_samples) x cells x C x S x S; index 0 = mean"
    with atomic_path(path) as tmp:
        out.write_h5ad(tmp)


FIGURE_NUCLEI = 8  # test cells shown in the real-vs-generated nuclei figure


def _real_crops(test_a, crops: Mapping[str, Any] | None, n: int, dna_channel: int = 0) -> np.ndarray | None:
    """DNA channel of the real crops (cells x S x S) of the first ``n`` test cells; None when any is missing."""
    if not crops or "crop_index" not in test_a.obs or n == 0:
        return None
    banks, out = {}, []
    for sample, index in zip(test_a.obs["sample"].astype(str)[:n], test_a.obs["crop_index"][:n]):
        path = crops.get(sample)
        if path is None or not Path(path).exists() or pd.isna(index):
            return None
        if sample not in banks:
            banks[sample] = np.load(path, mmap_mode="r")
        bank = banks[sample]
        out.append(np.asarray(bank[int(index), min(dna_channel, bank.shape[1] - 1)], dtype=np.float32))
    return np.stack(out)


def _figures(outdir: Path, genes, gene_r2, results, decode_images, P, pre, table, test_a=None, crops=None,
             dna_channel=0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    # 1. per-gene R² ranked
    r2 = np.nan_to_num(gene_r2["cosmic"], nan=-1)
    order = np.argsort(-r2)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(np.arange(len(r2)), r2[order], lw=1.5, label="COSMIC")
    for m, c in (("ridge", "C1"), ("knn", "C2")):
        ax.plot(np.arange(len(r2)), np.sort(np.nan_to_num(gene_r2[m], nan=-1))[::-1], lw=1, color=c, label=m)
    for rank, i in enumerate(order[:10]):
        ax.annotate(str(genes[i]), (rank, r2[i]), xytext=(8, -2 - 9 * rank), textcoords="offset points", fontsize=7)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylim(max(-0.3, ax.get_ylim()[0]), None)
    ax.set(xlabel="gene rank (by held-out R²)", ylabel="held-out R² (morphology → expression)",
           title="Per-gene expression explained by morphology (test cells)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, outdir / "gene_r2_ranked.png", dpi=120)
    (outdir / "gene_r2_ranked.txt").write_text(
        "Held-out per-gene R² of expression predicted from morphology, genes ranked; top genes named; "
        "ridge and kNN baselines on the same split.\n")
    # 2. variance decomposition with baselines and CIs
    vd = results["variance_decomposition"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    oracle = results.get("oracle", {})
    for ax, key, title, okey in ((axes[0], "transcriptome_explained_by_morphology", "transcriptome ← morphology",
                                  ("transcriptome", "oracle_total_r2")),
                                 (axes[1], "morphology_explained_by_transcriptome", "morphology ← transcriptome",
                                  ("morphology", "oracle_mean_r2"))):
        methods = ["cosmic", "ridge", "knn", "mean"]
        v = [vd[key][m]["value"] for m in methods]
        err = np.array([[vd[key][m]["value"] - vd[key][m]["ci_low"], vd[key][m]["ci_high"] - vd[key][m]["value"]]
                        for m in methods]).T
        ax.bar(methods, v, yerr=np.clip(np.nan_to_num(err), 0, None), capsize=4, color=["C0", "C1", "C2", "C7"])
        o = oracle.get(okey[0], {}).get(okey[1])
        if o is not None:
            ax.axhline(o, color="k", ls="--", lw=1, label="oracle ceiling")
            ax.legend(fontsize=8)
        ax.set(title=title, ylabel="fraction of held-out variance explained", xlabel="method")
    fig.suptitle("Variance decomposition (test cells, 95% bootstrap CI)")
    fig.tight_layout()
    save_figure(fig, outdir / "variance_decomposition.png", dpi=120)
    (outdir / "variance_decomposition.txt").write_text(
        "Shared-variance fractions both ways for COSMIC and baselines on the same test cells, 95% bootstrap "
        "intervals over cells; dashed line: oracle ceiling when ground truth is known.\n")
    # 3. real vs generated nuclei
    if decode_images is not None and pre.state["representation"] == "fm":
        n = min(FIGURE_NUCLEI, len(P["rep_mean"]))

        def decoded(rep):
            img = np.asarray(decode_images(pre.rep_to_raw(rep[:n])), dtype=np.float32)
            return img[:, min(dna_channel, img.shape[1] - 1)]

        rows = [("observed embedding,\ndecoded", decoded(P["observed_rep"])),
                ("generated from RNA\n(mean)", decoded(P["rep_mean"]))]
        rows += [(f"generated from RNA\n(sample {i + 1})", decoded(P["rep_samples"][i]))
                 for i in range(min(2, len(P["rep_samples"])))]
        real_crops = _real_crops(test_a, crops, n, dna_channel) if test_a is not None else None
        if real_crops is not None:
            rows.insert(0, ("real nucleus", real_crops[:n]))
        fig, axes = plt.subplots(len(rows), n, figsize=(1.4 * n, 1.45 * len(rows) + 0.5), squeeze=False)
        for j in range(n):
            # one grey scale per cell (its first row), so size and brightness compare down the column
            lo, hi = np.percentile(rows[0][1][j], [1, 99.5])
            for r, (name, arr) in enumerate(rows):
                axes[r, j].imshow(arr[j], cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
                axes[r, j].set_xticks([])
                axes[r, j].set_yticks([])
                if j == 0:
                    axes[r, j].set_ylabel(name, fontsize=7)
        fig.suptitle("Held-out cells: real nucleus and nuclei generated from the cell's transcriptome")
        fig.tight_layout()
        save_figure(fig, outdir / "generated_nuclei.png", dpi=120)
        (outdir / "generated_nuclei.txt").write_text(
            "Columns: test cells (never seen in training). Rows: " + ("the real nucleus (DNA channel crop); "
            if real_crops is not None else "") + "the foundation decoder applied to the cell's observed embedding "
            "(what the decoder can render); to the COSMIC conditional mean generated from the cell's RNA; and to "
            "COSMIC samples from the same RNA (what the transcriptome leaves undetermined). One grey scale per "
            "column.\n")
