"""Inference: load a trained model (:func:`load_model`), embed crop banks
(:func:`embed_crops`) and in-memory crops (:func:`embed_array`), render embeddings as crops
(:func:`decode_embeddings`), and the random-encoder baseline (:func:`random_encoder_embeddings`)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..errors import CosmicInputError
from .data import CropBankDataset
from .nets import FoundationModel, build_model
from .params import _LEGACY, FORMAT, FoundationParams
from .runtime import _amp_dtype, _autocast, _model_device, _resolve_device


def load_model(path, device=None) -> FoundationModel:
    """Load ``model.pt`` (or a ``last.pt`` checkpoint) in eval mode on ``device`` (default: GPU
    when present). The model carries ``params`` and ``input_shape`` (channels, crop size)."""
    path = Path(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as exc:
        raise CosmicInputError(f"file '{path}': foundation model not found; run the pretrain step first") from exc
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CosmicInputError(f"file '{path}': not a COSMIC foundation model; re-run the pretrain step")
    params = FoundationParams.from_config({**_LEGACY, **ck["params"]})
    C, S = ck["input_shape"]
    model = FoundationModel(params, C, S, int(ck.get("n_features", 1)))
    model.load_state_dict(ck.get("state_dict") or ck["model"])
    model.input_shape = (C, S)
    return model.to(_resolve_device(device)).eval()


def _embed_batches(model: FoundationModel, n: int, read, batch_size: int) -> np.ndarray:
    """N x D float32 embeddings of ``n`` crops; ``read(rows)`` returns the float32 tensor of
    those rows. The one batch loop behind :func:`embed_crops` and :func:`embed_array`."""
    dev = _model_device(model)
    out = np.zeros((n, model.embedding_dim), dtype=np.float32)
    if n == 0:
        return out
    amp = _amp_dtype(model.params.amp, dev)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for a in range(0, n, batch_size):
            x = read(np.arange(a, min(n, a + batch_size)))
            xb = x.to(dev, non_blocking=True)
            with _autocast(dev, amp):
                z = model.embed(xb)
            out[a:a + len(x)] = z.float().cpu().numpy()
    model.train(was_training)
    return out


def _check_input_shape(model: FoundationModel, shape, what: str) -> None:
    if tuple(shape) != (model.channels, model.crop_size, model.crop_size):
        raise CosmicInputError(
            f"{what}: crops of shape {tuple(shape)} do not match the foundation model's input "
            f"{(model.channels, model.crop_size, model.crop_size)}; re-run pretrain on these crops")


def embed_crops(model: FoundationModel, crops_path, batch_size: int = 256, device=None) -> np.ndarray:
    """N x D float32 embeddings of a crop bank, in crop-bank order, streamed in batches."""
    if device is not None:
        model = model.to(_resolve_device(device))
    data = CropBankDataset([crops_path])
    N = len(data)
    if N:
        _check_input_shape(model, data.shape, f"file '{crops_path}'")
    return _embed_batches(model, N, data.__getitems__, batch_size)


def embed_array(model: FoundationModel, crops, batch_size: int = 256) -> np.ndarray:
    """N x D float32 embeddings of in-memory crops (N x C x S x S, e.g. crops rendered by
    :func:`decode_embeddings`), in row order; the same batches, dtype handling (float32,
    non-finite values -> 0) and mixed precision as :func:`embed_crops` on a crop bank."""
    crops = np.asarray(crops)
    if crops.ndim != 4:
        raise CosmicInputError(f"embed_array: expected N x C x S x S crops, got shape {crops.shape}")
    if len(crops):
        _check_input_shape(model, crops.shape[1:], "embed_array")

    def read(rows):
        x = np.array(crops[rows[0]:rows[-1] + 1], dtype=np.float32)  # a copy, as the bank reader's
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return torch.from_numpy(x)

    return _embed_batches(model, len(crops), read, batch_size)


def decode_embeddings(model: FoundationModel, emb, batch_size: int = 256) -> np.ndarray:
    """Render embeddings (N x D) as crops (N x C x S x S float32) with the image head."""
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[1] != model.embedding_dim:
        raise CosmicInputError(f"decode_embeddings: expected N x {model.embedding_dim} embeddings, got {emb.shape}")
    dev = _model_device(model)
    out = np.zeros((emb.shape[0], model.channels, model.crop_size, model.crop_size), dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for a in range(0, emb.shape[0], batch_size):
            z = torch.from_numpy(emb[a:a + batch_size]).to(dev)
            out[a:a + len(z)] = model.decode(z).float().cpu().numpy()
    model.train(was_training)
    return out


def random_encoder_embeddings(crops_paths, params: FoundationParams | Mapping | None = None,
                              seed: int | None = None, batch_size: int = 256, device=None) -> np.ndarray:
    """Embeddings from the same architecture at random initialisation (the seed path of
    :func:`train`: ``build_model(params)``), concatenated over ``crops_paths`` in order."""
    if isinstance(crops_paths, (str, os.PathLike)):
        crops_paths = [crops_paths]
    if not isinstance(params, FoundationParams):
        params = FoundationParams.from_config(params)
    if seed is not None:
        params = dataclasses.replace(params, seed=int(seed))
    data = CropBankDataset(crops_paths)
    if data.shape is None:
        raise CosmicInputError("random_encoder_embeddings: no crop banks given")
    model = build_model(params, data.shape[0], data.shape[1]).to(_resolve_device(device or params.device)).eval()
    parts = [embed_crops(model, p, batch_size) for p in crops_paths]
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, model.embedding_dim), np.float32)
