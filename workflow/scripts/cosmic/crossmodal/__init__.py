"""COSMIC: bidirectional, stochastic generation between morphology and expression.

Both directions are modelled on paired training cells, by one of two methods (``cosmic.method``):

* ``diffusion`` (default, :mod:`.diffusion_model`): morphology -> expression is a head from the
  morphology representation (the foundation-model embedding ``X_fm`` when present, else
  standardised region-property features ``X_morph``; see :mod:`.representation`) to every kept
  gene's log-normalised expression, through a reduced-rank layer that starts at the training-cell
  PCA; RNA -> morphology is a head from the RNA embedding (training-cell PCA) to the
  representation, plus the region properties when the representation is ``X_fm``. Around each
  head a :class:`~.diffusion.ResidualDiffusion` (a conditional denoising diffusion over the
  residual's leading principal directions, x0 prediction, :mod:`diffusers` schedule) supplies the
  samples, so they keep the joint structure of real cells. The heads and then the residual models
  are trained phase by phase, each with early stopping on validation cells.
* ``cvae`` (:mod:`.nets`, the earlier model): conditional generators over the RNA embedding and
  the representation, each a mean head plus a residual CVAE with heteroscedastic Gaussian output
  (``latent_dim = 0``: a heteroscedastic Gaussian), and decoders from the RNA embedding to
  expression (initialised at the PCA inverse) and from ``X_fm`` to region properties.

Point predictions are the conditional means. After training, the spread of the samples around them
is rescaled per output so that the central ``interval_level`` intervals cover that fraction of the
*validation* cells (split-conformal, :func:`calibrate_model`); the means are unchanged.

Every fitted transform (gene selection, PCA, scalers, covariate categories) lives in a
:class:`Preprocessor` fitted on training cells only and stored in the checkpoint; the evaluation's
own fitted pieces (baselines, RNA cell-type clusters, label classifiers) also see training cells
only. Metrics are computed on held-out test cells, beside baselines, and under
``reference_metrics`` in the terms of the published COSMIC evaluation (per-gene Pearson overall,
on detected cells and within cell type; cell-type classification of predicted expression;
distribution distances between real and generated morphology). On the demo, the results are also
scored against the generator's ground truth (:mod:`cosmic.truth.crossmodal`).

Modules, one concern each:

* :mod:`.representation` -- which morphology representation is modelled (standard library only;
  the Snakefile imports it at parse time);
* :mod:`.params` -- :class:`CosmicParams` (the ``cosmic:`` config block), file names, device;
* :mod:`.preprocess` -- :class:`Preprocessor` and scalers, fitted on training cells;
* :mod:`.diffusion` -- :class:`ResidualDiffusion`: a conditional diffusion over a residual's leading
  principal directions plus independent noise for the rest;
* :mod:`.diffusion_model` -- the ``diffusion`` method (:class:`DiffusionCosmicModel`, the default):
  mean heads in both directions plus a residual diffusion each;
* :mod:`.nets` -- the ``cvae`` method's networks (:class:`CosmicModel`);
* :mod:`.train` -- :func:`fit_cosmic`, checkpoints, :func:`save_model` / :func:`load_model`;
* :mod:`.prediction` -- :func:`predict`, sampling, :func:`calibrate_model`, ``predictions.h5ad``;
* :mod:`.evaluate` -- baselines and held-out scores; :mod:`.celltypes` -- RNA cell types read
  from morphology; :mod:`.reference` -- the published COSMIC evaluation;
* :mod:`.figures` -- the stage's figures and the real-vs-generated nuclei figure;
* :mod:`.run` -- :func:`run_cosmic`, the stage.

The names below are re-exported lazily (importing this package imports neither torch nor anndata).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Representation": "representation",
    "CosmicParams": "params",
    "CHECKPOINT": "params",
    "MODEL": "params",
    "resolve_device": "params",
    "Preprocessor": "preprocess",
    "CosmicModel": "nets",
    "DiffusionCosmicModel": "diffusion_model",
    "ResidualDiffusion": "diffusion",
    "fit_cosmic": "train",
    "save_model": "train",
    "load_model": "train",
    "predict": "prediction",
    "calibrate_model": "prediction",
    "interval_scale": "prediction",
    "write_predictions": "prediction",
    "generated_nuclei_figure": "figures",
    "run_cosmic": "run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
