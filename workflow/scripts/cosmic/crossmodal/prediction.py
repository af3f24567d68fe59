"""Prediction: conditional means and samples in both directions, their calibration, the predictions file."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..atomic import atomic_path
from .nets import CosmicModel, LinearPlusMLP
from .params import CosmicParams
from .preprocess import Preprocessor
from .representation import MORPH

log = logging.getLogger(__name__)

GENERATED_IMAGES_LAYOUT = "(1 + n_samples) x cells x C x S x S; index 0 = mean"


def to_tensors(arrays: dict, device) -> dict:
    """float32 tensors on ``device`` of a dictionary of arrays; a sparse matrix becomes
    :class:`~cosmic.crossmodal.rows.SparseRows` (dense a batch of rows at a time)."""
    from .rows import as_batchable

    return {k: as_batchable(v, device) for k, v in arrays.items()}


# Samples are drawn for this many (samples x cells x outputs) values at a time: a chunk of cells at once,
# so memory does not grow with the number of cells (100 samples of 20,000 genes are 8 MB per cell).
SAMPLE_BUDGET = 2 ** 24  # also the largest tensor torch.quantile accepts
COVERED = ("expr", "rna", "rep", "morph")  # outputs whose interval coverage predict() reports


def cell_chunks(n_cells: int, n_samples: int, n_outputs: int, budget: int | None = None):
    """Slices of at most ``budget`` (default :data:`SAMPLE_BUDGET`) ``/ (n_samples * n_outputs)`` cells
    (at least one)."""
    budget = SAMPLE_BUDGET if budget is None else budget
    size = max(1, budget // max(1, n_samples * n_outputs))
    for start in range(0, n_cells, size):
        yield slice(start, min(n_cells, start + size))


def _inside(y: torch.Tensor, samples: torch.Tensor, level: float) -> tuple[float, int]:
    """Values of ``y`` (cells x outputs) inside the central ``level`` interval of ``samples``, and their count."""
    lo, hi = torch.quantile(samples.float(), torch.tensor([(1 - level) / 2, (1 + level) / 2], device=y.device),
                            dim=0)
    return float(((y >= lo) & (y <= hi)).sum()), int(y.numel())


@torch.no_grad()
def predict(model: CosmicModel, pre: Preprocessor, adata, n_samples: int = 100, seed: int = 0, keep: int | None = None,
            level: float | None = None) -> dict:
    """Conditional means and samples in both directions for the cells of ``adata``.

    Returns standardised arrays: ``rna_mean``/``rna_samples`` (generated RNA embedding from
    morphology), ``expr_mean``/``expr_samples`` (decoded expression), ``rep_mean``/``rep_samples``
    (generated morphology representation from RNA), ``morph_mean``/``morph_samples`` (region-property
    features; equal to the representation unless it is X_fm), plus the observed arrays.

    ``n_samples`` are drawn per cell, a chunk of cells at a time (:data:`SAMPLE_BUDGET`); only the
    first ``keep`` (default all) are returned. With ``level``, ``coverage`` holds, per output of
    :data:`COVERED`, the fraction of observed values inside the central ``level`` interval of all
    ``n_samples`` draws.
    """
    model.eval()
    device = next(model.parameters()).device
    observed = pre.transform(adata)
    tensors = to_tensors(observed, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    keep = n_samples if keep is None else max(1, min(int(keep), n_samples))
    width = max(observed[k].shape[1] for k in COVERED)  # the sampled outputs
    n_cells = len(observed["expr"])
    out, counts = {}, {k: [0.0, 0] for k in COVERED}
    for cells in cell_chunks(n_cells, n_samples, width):
        chunk = _predict_tensors(model, {k: v[cells] for k, v in tensors.items()}, n_samples, gen)
        if level is not None:
            for key in COVERED:
                inside, total = _inside(tensors[key][cells], chunk[f"{key}_samples"], level)
                counts[key][0] += inside
                counts[key][1] += total
        for key, value in chunk.items():  # written into arrays allocated once: no concatenated copies
            samples = key.endswith("_samples")
            value = (value[:keep] if samples else value).float().cpu().numpy()
            if key not in out:
                shape = (len(value), n_cells) + value.shape[2:] if samples else (n_cells,) + value.shape[1:]
                out[key] = np.empty(shape, np.float32)
            out[key][(slice(None), cells) if samples else cells] = value
    out.update({f"observed_{k}": v for k, v in observed.items()})
    if level is not None:
        out["coverage"] = {k: (c[0] / c[1] if c[1] else float("nan")) for k, c in counts.items()}
    return out


def _decode_samples(dec: LinearPlusMLP, mean: torch.Tensor, samples: torch.Tensor, gen) -> torch.Tensor:
    """Decoded samples with the decoder's noise; their spread around the decoded mean scaled per output
    by ``dec.calib_scale``."""
    noise = torch.exp(0.5 * dec.logvar)
    raw = torch.stack([dec(s) + noise * torch.randn(s.shape[0], noise.shape[0], device=s.device, generator=gen)
                       for s in samples])
    return mean + dec.calib_scale * (raw - mean)


@torch.no_grad()
def _predict_tensors(model: CosmicModel, t: dict, n_samples: int, gen) -> dict:
    if hasattr(model, "predict_tensors"):
        return model.predict_tensors(t, n_samples, gen)
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
    return conformal_scale(interval_needs(y, mean, samples, level), level)


@torch.no_grad()
def calibrate_model(model: CosmicModel, va: dict, level: float, n_samples: int = 100, seed: int = 0) -> dict:
    """Fit every ``calib_scale`` on validation cells (``va``: tensors of :meth:`Preprocessor.transform`).

    Upstream first: the two generators (RNA embedding, morphology representation), then the decoders
    given the calibrated generator samples (expression; region properties when the representation is
    X_fm). Scales fitted on the validation cells only; returns their summaries.
    """
    model.eval()
    if hasattr(model, "residual_modules"):
        return _calibrate_residuals(model, va, level, n_samples, seed)
    va = {k: v[:] if hasattr(v, "matrix") else v for k, v in va.items()}  # SparseRows: all rows dense
    for m in (model.m2r, model.r2m, model.expr_decoder, model.morph_decoder):
        if m is not None:
            m.calib_scale.fill_(1.0)
    gen = torch.Generator(device=va["rep"].device).manual_seed(seed + 7919)

    def as_numpy(x):
        return x.float().cpu().numpy()

    def fit(module, key, predictions):  # observed va[key] against the predicted <key>_mean, <key>_samples
        scale = interval_scale(as_numpy(va[key]), as_numpy(predictions[f"{key}_mean"]),
                               as_numpy(predictions[f"{key}_samples"]), level)
        module.calib_scale.copy_(torch.as_tensor(scale))

    predictions = _predict_tensors(model, va, n_samples, gen)
    fit(model.m2r, "rna", predictions)
    fit(model.r2m, "rep", predictions)
    predictions = _predict_tensors(model, va, n_samples, gen)  # decoders see the calibrated generator samples
    fit(model.expr_decoder, "expr", predictions)
    if model.use_fm:
        fit(model.morph_decoder, "morph", predictions)
    out = {}
    for name, m in (("rna_embedding", model.m2r), ("morphology_representation", model.r2m),
                    ("expression", model.expr_decoder), ("morphology_features", model.morph_decoder)):
        if m is not None:
            s = as_numpy(m.calib_scale)
            out[name] = dict(median=float(np.median(s)), min=float(s.min()), max=float(s.max()))
    return out


def interval_needs(y, mean, samples, level: float) -> np.ndarray:
    """Per cell and output, the factor by which the samples' spread around ``mean`` must be scaled for
    the central ``level`` interval to reach ``y`` (see :func:`interval_scale`)."""
    y, mean, samples = (np.asarray(a, dtype=np.float64) for a in (y, mean, samples))
    lo, hi = np.quantile(samples - mean[None], [(1 - level) / 2, (1 + level) / 2], axis=0)
    e = y - mean
    tiny = 1e-6 * (np.abs(hi - lo).mean(0, keepdims=True) + 1e-12)
    return np.where(e >= 0, e / np.maximum(hi, tiny), e / np.minimum(lo, -tiny)).astype(np.float32)


def conformal_scale(needs: np.ndarray, level: float) -> np.ndarray:
    """Per output, the finite-sample-corrected ``level`` quantile over cells of :func:`interval_needs`."""
    n = len(needs)
    q = min(1.0, level * (n + 1) / n) if n > 0 else level
    s = np.quantile(needs, q, axis=0, method="higher") if n > 0 else np.ones(needs.shape[1])
    return np.clip(np.nan_to_num(s, nan=1.0, posinf=10.0), 0.05, 10.0)


@torch.no_grad()
def _calibrate_residuals(model, va: dict, level: float, n_samples: int, seed: int) -> dict:
    """:func:`calibrate_model` for the ``diffusion`` method: the spread of each residual diffusion's draws,
    per output, fitted on validation cells (drawn a chunk of cells at a time)."""
    modules = model.residual_modules()
    for m in modules.values():
        m.calib_scale.fill_(1.0)
    gen = torch.Generator(device=va["rep"].device).manual_seed(seed + 7919)
    joint = ("rep", "morph") if model.use_fm else ("rep",)
    needs = {key: [] for key in modules}
    width = max(va["expr"].shape[1], model.morph_target(va).shape[1])
    for cells in cell_chunks(len(va["rep"]), n_samples, width):
        chunk = {k: v[cells] for k, v in va.items()}
        pred = model.predict_tensors(chunk, n_samples, gen)
        observed = dict(expr=chunk["expr"], morph_target=model.morph_target(chunk))
        means = dict(expr=pred["expr_mean"], morph_target=torch.cat([pred[f"{k}_mean"] for k in joint], -1))
        samples = dict(expr=pred["expr_samples"], morph_target=torch.cat([pred[f"{k}_samples"] for k in joint], -1))
        for key in modules:
            needs[key].append(interval_needs(observed[key].cpu().numpy(), means[key].cpu().numpy(),
                                             samples[key].cpu().numpy(), level))
    out = {}
    for key, module in modules.items():
        scale = conformal_scale(np.concatenate(needs[key]), level)
        module.calib_scale.copy_(torch.as_tensor(scale))
        out["expression" if key == "expr" else "morphology_representation"] = dict(
            median=float(np.median(scale)), min=float(scale.min()), max=float(scale.max()))
    return out


def generated_images_path(predictions_path) -> Path:
    """Default path of the decoded images beside ``predictions.h5ad``."""
    path = Path(predictions_path)
    return path.with_name(path.name.replace(".h5ad", "") + "_generated_images.npy")


def write_predictions(path, test_cells, genes, predictions: dict, pre: Preprocessor, params: CosmicParams,
                      decode_images: Callable[[np.ndarray], np.ndarray] | None = None, images_path=None):
    """Write ``predictions.h5ad`` (test cells: observed and generated, both directions) and, when
    ``decode_images`` is given and the representation is X_fm, the decoded images (``images_path``,
    default :func:`generated_images_path`)."""
    import anndata as ad

    n_out = min(params.n_output_samples, predictions["expr_samples"].shape[0])
    obs = test_cells.obs.copy()
    obs["split"] = "test"
    out = ad.AnnData(X=predictions["observed_expr"], obs=obs, var=pd.DataFrame(index=pd.Index(genes, name="gene")))
    out.layers["predicted_mean"] = predictions["expr_mean"]
    for i in range(n_out):
        out.layers[f"predicted_sample_{i}"] = predictions["expr_samples"][i]
    kind = pre.kind
    out.obsm["X_morph_observed"] = np.asarray(test_cells.obsm[kind.obsm_key], dtype=np.float32)
    out.obsm["X_morph_generated"] = pre.rep_to_raw(predictions["rep_mean"])
    for i in range(n_out):
        out.obsm[f"X_morph_generated_sample_{i}"] = pre.rep_to_raw(predictions["rep_samples"][i])
    out.obsm["X_morph_features"] = np.asarray(test_cells.obsm[MORPH.obsm_key], dtype=np.float32)
    out.obsm["X_morph_features_generated"] = pre.features_to_raw(predictions["morph_mean"])
    out.obsm["X_rna_observed"] = predictions["observed_rna"]
    out.obsm["X_rna_generated"] = predictions["rna_mean"]
    for i in range(n_out):
        out.obsm[f"X_rna_generated_sample_{i}"] = predictions["rna_samples"][i]
    out.uns["cosmic"] = dict(representation=kind.name, representation_key=kind.obsm_key,
                             morph_features=list(map(str, test_cells.uns.get("morph_features", []))),
                             note="X: observed log-normalised expression of kept genes; predicted_* from morphology; "
                                  "X_morph_generated*: generated from RNA in the units of obsm[representation_key]; "
                                  "X_rna_*: standardised training-cell PCA scores",
                             params=json.dumps(params.to_dict()))
    if decode_images is not None:
        if not kind.decodes_images:
            log.warning("cosmic: decode_images given but the representation is X_morph; no images generated")
        else:
            images_path = Path(images_path) if images_path is not None else generated_images_path(path)
            _write_generated_images(out, decode_images, n_out, images_path)
            out.uns["cosmic"]["generated_images"] = images_path.name
            out.uns["cosmic"]["generated_images_layout"] = GENERATED_IMAGES_LAYOUT
    with atomic_path(path) as tmp:
        out.write_h5ad(tmp)


def _write_generated_images(out, decode_images, n_out: int, images_path: Path):
    """Decode the generated representation (mean, then each written sample) to images, float16."""
    images = np.stack([np.asarray(decode_images(out.obsm["X_morph_generated"]), dtype=np.float16)]
                      + [np.asarray(decode_images(out.obsm[f"X_morph_generated_sample_{i}"]), dtype=np.float16)
                         for i in range(n_out)], 0)
    with atomic_path(images_path) as tmp:
        np.save(tmp, images)
