"""COSMIC: bidirectional, stochastic generation between morphology and expression.

Two conditional generators are trained jointly on paired training cells:

* morphology -> RNA: p(e | m) over the RNA embedding ``e`` (PCA of log-normalised highly
  variable genes, fitted on training cells), decoded to expression by a learned decoder
  (initialised at the exact PCA inverse, refined by a small MLP);
* RNA -> morphology: p(m | e) over the morphology representation ``m`` (the foundation-model
  embedding ``X_fm`` when present, else standardised region-property features ``X_morph``;
  see :mod:`.representation`).

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
distribution distances between real and generated morphology). On the demo, the results are also
scored against the generator's ground truth (:mod:`cosmic.truth.crossmodal`).

Modules, one concern each:

* :mod:`.representation` -- which morphology representation is modelled (standard library only;
  the Snakefile imports it at parse time);
* :mod:`.params` -- :class:`CosmicParams` (the ``cosmic:`` config block), file names, device;
* :mod:`.preprocess` -- :class:`Preprocessor` and scalers, fitted on training cells;
* :mod:`.nets` -- the networks (:class:`CosmicModel`);
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
