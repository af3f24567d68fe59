"""The ``cosmic:`` config block (:class:`CosmicParams`), file names and the compute device."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import CosmicInputError, require_flag
from .representation import CHOICES, check_choice

REPRESENTATIONS = CHOICES
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINT = "checkpoint.pt"  # resumable training state
MODEL = "model.pt"  # final model (best validation state + preprocessor + params)

METHODS = ("diffusion", "cvae")
_INTEGER_MINIMA = (("finetune_blocks", 0), ("n_heads", 1), ("head_rank", 0), ("residual_rank", 0),
                   ("diffusion_steps", 2), ("diffusion_layers", 1),
                   ("n_rna_pcs", 1), ("n_hvg", 0), ("latent_dim", 0), ("hidden_dim", 1), ("n_layers", 1),
                   ("epochs", 0), ("batch_size", 1), ("patience", 1), ("n_samples", 2), ("n_output_samples", 0),
                   ("n_clusters", 2), ("knn_neighbors", 1), ("n_bootstrap", 0), ("seed", 0), ("num_threads", 0))
_NUMBER_RANGES = (("diffusion_dropout", 0.0, 0.99), ("condition_noise", 0.0, None), ("dropout", 0.0, 0.99),
                  ("beta", 0.0, None), ("expr_weight", 0.0, None), ("lr", 1e-12, None),
                  ("weight_decay", 0.0, None), ("interval_level", 0.01, 0.999))


@dataclass
class CosmicParams:
    """The ``cosmic:`` config block (see :func:`CosmicParams.from_config`)."""

    method: str = "diffusion"  # "diffusion" (mean heads + residual diffusion) | "cvae" (the earlier model)
    representation: str = "auto"  # "auto" (X_fm when present, else X_morph) | "fm" | "morph"
    n_rna_pcs: int = 30
    n_hvg: int = 0  # 0 = all genes kept after QC; N: the N most variable of the training cells
    latent_dim: int = 0  # 0: heteroscedastic Gaussian residual; >0: residual CVAE (validation favoured 0 on the demo)
    hidden_dim: int = 128
    n_layers: int = 2
    dropout: float = 0.5  # lower validation loss than 0.3 on the demo (seeds 0 and 1); 0.1 overfits
    beta: float = 1.0  # KL weight of the residual CVAE
    expr_weight: float = 1.0  # weight of the expression-space loss of morphology -> RNA
    n_heads: int = 1  # diffusion: each mean head is the average of this many independently trained heads
    head_rank: int = 16  # diffusion: expression head through this many factors (reduced rank; 0: full)
    residual_rank: int = 64  # diffusion: principal directions of the residual modelled jointly
    diffusion_steps: int = 20  # diffusion: denoising steps (cosine schedule, x0 prediction)
    diffusion_layers: int = 3  # diffusion: residual MLP blocks of each denoiser
    diffusion_dropout: float = 0.1  # diffusion: dropout inside each denoiser
    moment_matching: bool = True  # diffusion: draws keep the training residuals' covariance (match_moments)
    morph_ridge_blend: bool = True  # diffusion: RNA -> morphology mean averaged with a ridge fit (fit_morph_blend)
    finetune_blocks: int = 0  # diffusion + X_fm: last encoder stages trained with the expression head
    condition_noise: float = 2.0  # diffusion: SD of the noise added to the (standardised) condition in training
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
    evaluation: dict = field(default_factory=dict)  # repeated splits: see cosmic.evaluation.params

    @property
    def evaluation_params(self):
        from ..evaluation.params import EvaluationParams

        return EvaluationParams.from_config(self.evaluation)

    def __post_init__(self):
        check_choice(self.representation)
        if self.method not in METHODS:
            raise CosmicInputError(f"cosmic parameter method must be one of {METHODS}, got {self.method!r}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise CosmicInputError(f"cosmic parameter device must be one of {DEVICES} or 'cuda:N', "
                                   f"got {self.device!r}")
        for name, lo in _INTEGER_MINIMA:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer, float)) or not float(v).is_integer() \
                    or v < lo:
                raise CosmicInputError(f"cosmic parameter {name} must be an integer >= {lo}, got {v!r}")
            setattr(self, name, int(v))
        for name, lo, hi in _NUMBER_RANGES:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(v) or v < lo or (hi is not None and v > hi):
                raise CosmicInputError(f"cosmic parameter {name} must be a number in [{lo}, {hi or 'inf'}], "
                                       f"got {v!r}")
            setattr(self, name, float(v))
        self.moment_matching = require_flag("cosmic", "moment_matching", self.moment_matching)
        self.morph_ridge_blend = require_flag("cosmic", "morph_ridge_blend", self.morph_ridge_blend)
        self._check_lists()
        self.evaluation = dict(self.evaluation or {})
        self.evaluation_params  # validates the block

    def _check_lists(self):
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
        from ..config import params_from_config

        return params_from_config(cls, "cosmic", mapping, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


# keys that decide a split's cells and the training-cell PCA that gives the RNA latent: all that a rule
# which only re-creates the splits (the image generator) reads, so that other model keys do not rerun it
SPLIT_KEYS = ("seed", "split_fractions", "stratify", "holdout_samples", "n_hvg", "n_rna_pcs", "covariates")


def split_config(mapping: Mapping[str, Any] | None) -> dict:
    """The :data:`SPLIT_KEYS` entries of a ``cosmic:`` config block."""
    return {k: v for k, v in (mapping or {}).items() if k in SPLIT_KEYS}


# keys that change what is trained (a checkpoint with other values is not resumed)
TRAINING_KEYS = ("method", "n_heads", "head_rank", "residual_rank", "diffusion_steps", "diffusion_layers",
                 "diffusion_dropout", "condition_noise", "moment_matching", "morph_ridge_blend", "finetune_blocks",
                 "representation", "n_rna_pcs", "n_hvg", "latent_dim", "hidden_dim", "n_layers", "dropout", "beta",
                 "expr_weight", "epochs", "batch_size", "lr", "weight_decay", "patience", "split_fractions",
                 "stratify", "holdout_samples", "covariates", "seed")


def resolve_device(device: str = "auto"):
    """``auto`` picks CUDA when a GPU is visible, else CPU (a ``torch.device``)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise CosmicInputError("cosmic: device 'cuda' requested but no CUDA GPU is visible; set cosmic.device "
                               "to 'auto' or 'cpu'")
    return torch.device(device)
