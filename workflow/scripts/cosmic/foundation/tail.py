"""The last stages of the foundation encoder as a module of their own, for fine-tuning downstream.

:func:`split_encoder` cuts a trained :class:`~cosmic.foundation.nets.FoundationModel`'s encoder
before its last ``blocks`` stages (ViT: transformer blocks; CNN: conv stages) and returns
:class:`EncoderTail`, a copy of those stages plus the model's pooling. :func:`tail_inputs`
computes, once, what enters the tail for each crop (frozen), so fine-tuning the tail costs only the
tail's forward and backward passes. Before fine-tuning, ``tail(tail_inputs(crops))`` equals the
model's embedding (``X_fm``) of the crops.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..errors import CosmicInputError
from .nets import FoundationModel
from .params import FoundationParams


def _cnn_stages(net: nn.Sequential) -> list[list[nn.Module]]:
    """A CNN encoder's stages: conv-BN-ReLU(-MaxPool) groups, in order."""
    stages, current = [], []
    for module in net:
        current.append(module)
        if isinstance(module, nn.MaxPool2d):
            stages.append(current)
            current = []
    return stages + ([current] if current else [])


class EncoderTail(nn.Module):
    """The last ``blocks`` encoder stages and the pooling of a foundation model: cached stage inputs
    (cells x features, flattened) -> embeddings in ``X_fm`` units. BatchNorm statistics stay frozen."""

    def __init__(self, model: FoundationModel, blocks: int):
        super().__init__()
        self.encoder, self.blocks = model.params.encoder, int(blocks)
        self.params = model.params
        self.register_buffer("pool_weights", model.pool_weights.clone(), persistent=False)
        if self.encoder == "vit":
            depth = len(model.blocks)
            if not 1 <= blocks <= depth:
                raise CosmicInputError(f"cosmic.finetune_blocks must be between 1 and the encoder's {depth} blocks, "
                                       f"got {blocks}")
            self.stages = nn.Sequential(*copy.deepcopy(list(model.blocks)[depth - blocks:]), copy.deepcopy(model.norm))
            self.input_shape = (model.n_patches, model.params.embed_dim)
        else:
            stages = _cnn_stages(model.cnn.net)
            if not 1 <= blocks <= len(stages):
                raise CosmicInputError(f"cosmic.finetune_blocks must be between 1 and the encoder's {len(stages)} "
                                       f"conv stages, got {blocks}")
            self.stages = nn.Sequential(*copy.deepcopy([m for s in stages[len(stages) - blocks:] for m in s]))
            self.input_shape = None  # set by split_encoder from a probe

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()  # a few hundred cells per batch would make their statistics drift
        return self

    def forward(self, cached: torch.Tensor) -> torch.Tensor:
        x = cached.view((len(cached),) + tuple(self.input_shape))
        x = self.stages(x)
        tokens = x if self.encoder == "vit" else x.flatten(2).transpose(1, 2)
        return FoundationModel.pool(self, tokens)  # the model's pooling, on this module's weights


def _prefix(model: FoundationModel, blocks: int):
    """The frozen part of the encoder: crops -> what enters the tail."""
    if model.params.encoder == "vit":
        def run(x):
            t = model.patch_embed(model.patchify(x)) + model.pos
            for block in list(model.blocks)[:len(model.blocks) - blocks]:
                t = block(t)
            return t
        return run
    stages = _cnn_stages(model.cnn.net)
    head = nn.Sequential(*[m for s in stages[:len(stages) - blocks] for m in s])
    return head


def split_encoder(model: FoundationModel, blocks: int):
    """``(prefix, tail)``: ``prefix(crops)`` (frozen) feeds ``tail`` (an :class:`EncoderTail`)."""
    model = model.eval()
    tail = EncoderTail(model, blocks)
    prefix = _prefix(model, blocks)
    if tail.input_shape is None:
        with torch.no_grad():
            probe = prefix(torch.zeros((1, model.channels, model.crop_size, model.crop_size),
                                       device=model.pool_weights.device))
        tail.input_shape = tuple(probe.shape[1:])
    return prefix, tail


@torch.no_grad()
def tail_inputs(model: FoundationModel, crops, blocks: int, batch_size: int = 256) -> np.ndarray:
    """What enters the last ``blocks`` stages for each crop (N x C x S x S array-like): N x F float32."""
    prefix, tail = split_encoder(model, blocks)
    device = model.pool_weights.device
    n = len(crops)
    width = int(np.prod(tail.input_shape))
    out = np.zeros((n, width), dtype=np.float32)
    for a in range(0, n, batch_size):
        x = torch.as_tensor(np.nan_to_num(np.asarray(crops[np.arange(a, min(n, a + batch_size))], dtype=np.float32)),
                            device=device)
        out[a:a + len(x)] = prefix(x).reshape(len(x), -1).float().cpu().numpy()
    return out


def tail_from_spec(spec: dict) -> EncoderTail:
    """An :class:`EncoderTail` of the architecture ``spec`` (see :func:`tail_spec`), weights to be loaded."""
    params = FoundationParams.from_config(spec["params"])
    model = FoundationModel(params, spec["channels"], spec["crop_size"], spec["n_features"])
    _, tail = split_encoder(model, spec["blocks"])
    return tail


def tail_spec(model: FoundationModel, blocks: int) -> dict:
    """What :func:`tail_from_spec` needs to rebuild the tail."""
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(model.params).items()}
    return dict(params=params, channels=model.channels, crop_size=model.crop_size,
                n_features=model.n_features, blocks=int(blocks))
