"""The ``diffusion`` method: conditional mean heads plus residual diffusion, in both directions.

- **morphology -> expression** (img2seq): a head from the morphology representation (and
  covariates) to every kept gene's log-normalised expression (a linear path plus an MLP, through an
  optional low-rank factor), and a :class:`~cosmic.crossmodal.diffusion.ResidualDiffusion` for the
  expression around it. The RNA embedding of a prediction is the training-cell PCA of the predicted
  expression, so both stay consistent.
- **expression -> morphology** (seq2morph): a head from the RNA embedding (and covariates) to the
  morphology representation, and to the region properties too when the representation is a
  foundation embedding (so generated features and embeddings come from one joint draw), averaged
  with a ridge regression on the same inputs (:meth:`DiffusionCosmicModel.fit_morph_blend`, its
  weight chosen on validation cells), with a residual diffusion over all of them.

Training has three phases (:data:`PHASES`, :mod:`cosmic.crossmodal.train`): the expression head, the
morphology head, each with early stopping on validation cells, then (heads frozen, the morphology
head blended with its ridge regression) the residual diffusion models on the training residuals.
"""

from __future__ import annotations

import torch
from torch import nn

import numpy as np

from ..splits import subset_indices
from .diffusion import ResidualDiffusion
from .nets import _mlp
from .params import CosmicParams
from .preprocess import Preprocessor
from .rows import CHUNK_VALUES, n_rows, row_chunks, take

# trained one after the other, each with its own early stopping on validation cells
PHASES = ("expr_head", "morph_head", "residual")
RIDGE_ALPHAS = np.logspace(-2, 4, 13)  # penalties the morphology ridge chooses from (leave-one-out, per output)
RIDGE_MAX_CELLS = 20_000  # the ridge has a few dozen inputs: a seeded subset of this many training cells fits it


class MeanHead(nn.Module):
    """``E[y | c]``: a linear path plus an MLP. With ``rank > 0`` both predict ``rank`` factors that one
    shared layer maps to the outputs (reduced-rank regression: for thousands of genes driven by a few
    programmes it pools evidence across genes), and that layer can start at a known basis
    (:meth:`init_factors`, e.g. the training-cell expression PCA)."""

    def __init__(self, d_in: int, d_out: int, hidden: int, n_layers: int, dropout: float, rank: int = 0):
        super().__init__()
        width = d_out if rank <= 0 else rank
        self.linear = nn.Linear(d_in, width)
        self.mlp = _mlp(d_in, hidden, n_layers, dropout)
        self.mlp_out = nn.Linear(hidden, width)
        self.factors = nn.Linear(rank, d_out) if rank > 0 else None
        for layer in (self.linear, self.mlp_out):  # starts at the training mean (the output bias)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def bias(self) -> torch.Tensor:
        return self.linear.bias if self.factors is None else self.factors.bias

    @torch.no_grad()
    def init_factors(self, basis: torch.Tensor):
        """Start the factor layer at ``basis`` (rank x outputs; rows beyond its length stay random)."""
        if self.factors is not None:
            k = min(len(basis), self.factors.in_features)
            self.factors.weight[:, :k] = basis[:k].T

    def forward(self, c):
        out = self.linear(c) + self.mlp_out(self.mlp(c))
        return out if self.factors is None else self.factors(out)


class HeadEnsemble(nn.Module):
    """The average of ``n`` independently initialised :class:`MeanHead` s (a deep ensemble): in training
    each member fits the target on its own (:meth:`members_out`), so their errors differ and averaging
    them removes part of each one's estimation noise. Interface of a single head."""

    def __init__(self, n: int, *args, **kwargs):
        super().__init__()
        self.members = nn.ModuleList(MeanHead(*args, **kwargs) for _ in range(int(n)))

    @property
    def linear(self) -> nn.Linear:
        return self.members[0].linear

    @property
    def factors(self):
        return self.members[0].factors

    @torch.no_grad()
    def set_bias(self, value: torch.Tensor):
        """Every member's output bias to ``value`` (broadcast)."""
        for member in self.members:
            member.bias.copy_(value)

    @torch.no_grad()
    def init_factors(self, basis: torch.Tensor):
        for member in self.members:
            member.init_factors(basis)

    def members_out(self, c) -> torch.Tensor:
        """``members x cells x outputs``."""
        return torch.stack([member(c) for member in self.members])

    def forward(self, c):
        return self.members_out(c).mean(0)


class DiffusionCosmicModel(nn.Module):
    """Both directions of the ``diffusion`` method (see the module docstring)."""

    method = "diffusion"

    def __init__(self, rep_dim: int, rna_dim: int, n_genes: int, morph_dim: int, cov_dim: int,
                 params: CosmicParams, use_fm: bool, tail=None, tail_spec: dict | None = None):
        super().__init__()
        p = params
        # the foundation encoder's last stages, fine-tuned with the expression head (crossmodal.finetune)
        self.tail, self.tail_spec = tail, tail_spec  # the spec rebuilds the tail when a saved model loads
        self.register_buffer("fm_mean", torch.zeros(rep_dim))
        self.register_buffer("fm_std", torch.ones(rep_dim))
        self.rep_dim, self.morph_dim, self.use_fm = rep_dim, morph_dim, use_fm
        target_dim = rep_dim + (morph_dim if use_fm else 0)
        self.expr_head = HeadEnsemble(p.n_heads, rep_dim + cov_dim, n_genes, p.hidden_dim, p.n_layers, p.dropout,
                                      p.head_rank)
        self.morph_head = HeadEnsemble(p.n_heads, rna_dim + cov_dim, target_dim, p.hidden_dim, p.n_layers, p.dropout)
        shape = dict(hidden=p.hidden_dim, n_layers=p.diffusion_layers, n_steps=p.diffusion_steps,
                     dropout=p.diffusion_dropout, condition_noise=p.condition_noise)
        self.expr_residual = ResidualDiffusion(n_genes, rep_dim + cov_dim, min(p.residual_rank, n_genes), **shape)
        self.morph_residual = ResidualDiffusion(target_dim, rna_dim + cov_dim, min(p.residual_rank, target_dim),
                                                **shape)
        # training-cell PCA of kept genes: expression -> RNA embedding (fixed, from the preprocessor)
        self.register_buffer("gene_mean", torch.zeros(n_genes))
        self.register_buffer("pca_map", torch.zeros(n_genes, rna_dim))
        self.register_buffer("expr_variance", torch.ones(()))  # mean per-gene variance of training cells
        # the morphology residual's principal directions weigh the embedding and the region properties
        # equally (each standardised; without it the 256-d embedding would dominate the basis)
        weight = torch.ones(target_dim)
        if use_fm:
            weight[rep_dim:] = (rep_dim / max(1, morph_dim)) ** 0.5
        self.register_buffer("residual_weight", weight)
        # RNA -> morphology mean = head_share * head + (1 - head_share) * ridge (fit_morph_blend; 1: the head alone)
        self.register_buffer("ridge_weight", torch.zeros(target_dim, rna_dim + cov_dim))
        self.register_buffer("ridge_bias", torch.zeros(target_dim))
        self.register_buffer("head_share", torch.ones(()))
        self.phase = PHASES[0]

    def init_from_pca(self, pre: Preprocessor):
        st = pre.state
        with torch.no_grad():
            self.gene_mean.copy_(torch.from_numpy(st["gene_mean"]))
            self.pca_map.copy_(torch.from_numpy(st["components"].T / st["pc_std"][None, :]))
            self.expr_head.set_bias(self.gene_mean)
            if "fm_mean" in st:
                self.fm_mean.copy_(torch.from_numpy(st["fm_mean"]))
                self.fm_std.copy_(torch.from_numpy(st["fm_std"]))
            self.expr_head.init_factors(torch.from_numpy(st["components"] * st["pc_std"][:, None]))
            self.morph_head.set_bias(torch.zeros(()))  # standardised targets

    @torch.no_grad()
    def set_expr_variance(self, expr):
        """The expression head's loss scale: the mean per-gene variance of the training cells (a tensor or
        :class:`~cosmic.crossmodal.rows.SparseRows`)."""
        variance = expr.column_variances().mean() if hasattr(expr, "column_variances") else expr.var(0).mean()
        self.expr_variance.fill_(max(float(variance), 1e-8))

    def rna_embedding(self, expr: torch.Tensor) -> torch.Tensor:
        return (expr - self.gene_mean) @ self.pca_map

    def conditions(self, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(morphology condition, RNA condition) of a batch; with a fine-tuned encoder tail the morphology
        condition is its embedding of the batch's cached stage inputs (standardised like ``X_fm``)."""
        rep = b["rep"]
        if self.tail is not None and "tail" in b:
            rep = (self.tail(b["tail"]) - self.fm_mean) / self.fm_std
        return torch.cat([rep, b["cov"]], 1), self.rna_condition(b)

    @staticmethod
    def rna_condition(b: dict) -> torch.Tensor:
        """The RNA condition of a batch: its RNA embedding and covariates."""
        return torch.cat([b["rna"], b["cov"]], 1)

    def _ridge(self, c_r: torch.Tensor) -> torch.Tensor:
        return c_r @ self.ridge_weight.T + self.ridge_bias

    def morph_mean(self, c_r: torch.Tensor) -> torch.Tensor:
        """``E[morphology target | RNA condition]``: the head blended with the ridge regression."""
        return self.head_share * self.morph_head(c_r) + (1 - self.head_share) * self._ridge(c_r)

    @torch.no_grad()
    def fit_morph_blend(self, train: dict, val: dict, seed: int = 0, steps: int = 10) -> dict:
        """Fit the ridge regression of the morphology target on the RNA condition (scikit-learn's
        ``RidgeCV``, leave-one-out penalty per output, on at most :data:`RIDGE_MAX_CELLS` training cells),
        then the head's share of the mean: the one of ``0, 1/steps, ..., 1`` with the lowest validation
        error. A flexible head fitted on a few thousand cells and a linear fit err differently, so their
        average is closer to the truth than either (on the demo's region properties, see the README).
        Returns ``{"head_share", "ridge_alpha_median"}``."""
        from sklearn.linear_model import RidgeCV

        training = self.training
        self.eval()
        rows = subset_indices(n_rows(train), RIDGE_MAX_CELLS, np.random.default_rng(seed))
        part = {k: train[k][rows] for k in ("rna", "cov", "rep", "morph") if k in train}
        x = self.rna_condition(part).double().cpu().numpy()
        y = self.morph_target(part).double().cpu().numpy()
        ridge = RidgeCV(alphas=RIDGE_ALPHAS, alpha_per_target=True).fit(x, y)
        self.ridge_weight.copy_(torch.as_tensor(np.atleast_2d(ridge.coef_), dtype=torch.float32))
        self.ridge_bias.copy_(torch.as_tensor(np.atleast_1d(ridge.intercept_), dtype=torch.float32))
        shares = torch.linspace(0.0, 1.0, int(steps) + 1, device=self.ridge_bias.device)
        errors = torch.zeros(len(shares), dtype=torch.float64, device=shares.device)
        for chunk in row_chunks(val):
            b = take(val, chunk)
            c_r = self.rna_condition(b)
            head, linear = self.morph_head(c_r), self._ridge(c_r)
            target = self.morph_target(b)
            for i, share in enumerate(shares):
                errors[i] += self._morph_error(share * head + (1 - share) * linear, target).double().sum()
        best = int(torch.argmin(errors))
        self.head_share.fill_(float(shares[best]))
        self.train(training)
        return dict(head_share=float(shares[best]), ridge_alpha_median=float(np.median(ridge.alpha_)))

    def morph_target(self, b: dict) -> torch.Tensor:
        return torch.cat([b["rep"], b["morph"]], 1) if self.use_fm else b["rep"]

    def _morph_error(self, pred, target):
        """Per-cell squared error (leading dimensions kept, e.g. ensemble members); with a foundation
        representation the embedding and the region properties weigh equally, however many dimensions each has."""
        err = (pred - target) ** 2
        if not self.use_fm:
            return err.mean(-1)
        return err[..., :self.rep_dim].mean(-1) + err[..., self.rep_dim:].mean(-1)

    def losses(self, b: dict, p: CosmicParams, sample_posterior: bool = True) -> torch.Tensor:
        """The loss of the current phase: the expression head's squared error relative to the mean gene
        variance (i.e. 1 - weighted R²), the morphology head's, or both residual diffusion losses (on the
        frozen heads' residuals of the batch, see :meth:`residuals`)."""
        if self.phase == "residual":
            with torch.no_grad():
                c_m, c_r = self.conditions(b)
                expr_residual, morph_residual = self.residuals(b, c_m, c_r)
            return (self.expr_residual.loss(expr_residual, c_m) + self.morph_residual.loss(morph_residual, c_r)).mean()
        c_m, c_r = self.conditions(b)
        # in training every ensemble member fits the target on its own; otherwise (validation) the ensemble mean
        if self.phase == "expr_head":
            pred = self.expr_head.members_out(c_m) if self.training else self.expr_head(c_m)[None]
            return ((pred - b["expr"][None]) ** 2).mean(-1).mean() / self.expr_variance
        pred = self.morph_head.members_out(c_r) if self.training else self.morph_head(c_r)[None]
        return self._morph_error(pred, self.morph_target(b)[None]).mean()

    def train(self, mode: bool = True):
        """In the residual phase the heads (and encoder tail) stay in eval mode: the residuals the
        diffusion models learn are those of the frozen heads, without dropout."""
        super().train(mode)
        if self.phase == "residual":
            for module in (self.expr_head, self.morph_head, self.tail):
                if module is not None:
                    module.eval()
        return self

    def phase_parameters(self, phase: str) -> list:
        modules = dict(expr_head=[self.expr_head] + ([self.tail] if self.tail is not None else []),
                       morph_head=[self.morph_head],
                       residual=[self.expr_residual, self.morph_residual])[phase]
        return [p for m in modules for p in m.parameters()]

    def residuals(self, b: dict, c_m=None, c_r=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads' residuals of the cells of batch ``b`` (expression; weighted morphology target)."""
        if c_m is None:
            c_m, c_r = self.conditions(b)
        return (b["expr"] - self.expr_head(c_m),
                (self.morph_target(b) - self.morph_mean(c_r)) * self.residual_weight)

    @torch.no_grad()
    def fit_residual_bases(self, train: dict, seed: int = 0, budget: int = CHUNK_VALUES):
        """Principal directions of both heads' training residuals, walking ``train`` a chunk of cells at a
        time (its expression may be :class:`~cosmic.crossmodal.rows.SparseRows`): the per-output mean and
        variance over every training cell, the directions from at most ``budget`` residual values (a
        seeded random subset of cells when there are more), their spread and the sampling clip from every cell."""
        training = self.training
        self.eval()
        n, chunks = n_rows(train), row_chunks(train)
        sums = [None, None]
        for rows in chunks:
            for i, r in enumerate(self.residuals(take(train, rows))):
                r = r.double()
                part = torch.stack([r.sum(0), (r ** 2).sum(0)])
                sums[i] = part if sums[i] is None else sums[i] + part
        rng = np.random.default_rng(seed)
        for i, module in enumerate((self.expr_residual, self.morph_residual)):
            mean = sums[i][0] / n
            variance = (sums[i][1] / n - mean ** 2).clamp_min(0.0)
            size = max(2, budget // max(1, module.out_dim))
            subset = subset_indices(n, size, rng)
            module.fit_basis(self.residuals(take(train, subset))[i], mean.float(), variance.float())
            if len(subset) < n:
                module.refit_spread(self.residuals(take(train, rows))[i] for rows in chunks)
        self.train(training)

    @torch.no_grad()
    def match_residual_moments(self, train: dict, seed: int = 0, max_cells: int = 2048, draws: int = 8):
        """Both residual diffusions' :meth:`~cosmic.crossmodal.diffusion.ResidualDiffusion.match_moments` at
        the conditions of at most ``max_cells`` training cells (a seeded subset)."""
        training = self.training
        self.eval()
        rows = subset_indices(n_rows(train), max_cells, np.random.default_rng(seed))
        c_m, c_r = self.conditions({k: train[k][rows] for k in ("rep", "rna", "cov", "tail") if k in train})
        gen = torch.Generator(device=c_m.device).manual_seed(seed + 104729)
        self.expr_residual.match_moments(c_m, draws, gen)
        self.morph_residual.match_moments(c_r, draws, gen)
        self.train(training)

    @torch.no_grad()
    def predict_tensors(self, t: dict, n_samples: int, gen) -> dict:
        """Means and ``n_samples`` draws in both directions (keys as
        :func:`cosmic.crossmodal.prediction.predict`)."""
        c_m, c_r = self.conditions(t)
        expr_mean = self.expr_head(c_m)
        expr_s = expr_mean[None] + self.expr_residual.sample(c_m, n_samples, gen)
        target_mean = self.morph_mean(c_r)
        target_s = target_mean[None] + self.morph_residual.sample(c_r, n_samples, gen) / self.residual_weight
        out = dict(expr_mean=expr_mean, expr_samples=expr_s, rna_mean=self.rna_embedding(expr_mean),
                   rna_samples=self.rna_embedding(expr_s))
        d = self.rep_dim
        out.update(rep_mean=target_mean[:, :d], rep_samples=target_s[..., :d])
        if self.use_fm:
            out.update(morph_mean=target_mean[:, d:], morph_samples=target_s[..., d:])
        else:
            out.update(morph_mean=out["rep_mean"], morph_samples=out["rep_samples"])
        return out

    def residual_modules(self) -> dict:
        """The modules whose ``calib_scale`` is fitted on validation cells, by the prediction key they
        scale (``morph_target``: the joint representation [+ region properties] draw)."""
        return {"expr": self.expr_residual, "morph_target": self.morph_residual}

    def dims(self) -> dict:
        return dict(rep_dim=self.rep_dim, rna_dim=self.pca_map.shape[1], n_genes=self.gene_mean.shape[0],
                    morph_dim=self.morph_dim, cov_dim=self.expr_head.linear.in_features - self.rep_dim,
                    use_fm=self.use_fm, method=self.method, tail=self.tail_spec)
