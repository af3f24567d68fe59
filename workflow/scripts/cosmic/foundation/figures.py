"""Figures: real crops beside the crops decoded from their embeddings
(:func:`plot_reconstructions`) and a UMAP of embeddings coloured by labels (:func:`plot_umap`)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ..errors import CosmicInputError
from ..plotting import save_figure
from .nets import FoundationModel
from .runtime import _model_device


def plot_reconstructions(model: FoundationModel, crops, path, n: int = 8, channel_names=None, seed: int = 0):
    """Gallery: for ``n`` nuclei, each channel of the real crop above the crop decoded from its
    embedding (encoder -> embedding -> image head)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    crops = np.asarray(crops)
    if crops.shape[0] == 0:
        raise CosmicInputError("plot_reconstructions: no crops to show")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(crops.shape[0], size=min(n, crops.shape[0]), replace=False))
    real = np.nan_to_num(crops[idx].astype(np.float32))
    dev = _model_device(model)
    model.eval()
    with torch.inference_mode():
        z = model.embed(torch.from_numpy(real).to(dev))
        dec = model.decode(z).float().cpu().numpy()
    C = real.shape[1]
    names = list(channel_names or [f"ch{c}" for c in range(C)])
    fig, axes = plt.subplots(2 * C, len(idx), figsize=(1.3 * len(idx) + 1, 1.3 * 2 * C + 0.8), squeeze=False)
    for c in range(C):
        vmin, vmax = np.percentile(real[:, c], [0.5, 99.5])
        for j in range(len(idx)):
            for r, (img, kind) in enumerate(((real, "real"), (dec, "decoded"))):
                ax = axes[2 * c + r, j]
                ax.imshow(img[j, c], cmap="gray", vmin=vmin, vmax=vmax)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(f"{kind}\n{names[c]}", fontsize=8)
                if 2 * c + r == 2 * C - 1:
                    ax.set_xlabel(f"crop {idx[j]}", fontsize=7)
    fig.suptitle("Foundation model: real crops vs decoded from embedding")
    fig.supxlabel("nucleus (crop index)")
    fig.supylabel("channel / kind")
    save_figure(fig, path, dpi=120)


def plot_umap(emb, labels: Mapping[str, Any], path, seed: int = 0, title: str = "Foundation embeddings"):
    """UMAP of ``emb`` (umap-learn), one panel per label column (categorical or numeric)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import umap

    emb = np.asarray(emb, dtype=np.float32)
    from sklearn.preprocessing import StandardScaler

    xy = umap.UMAP(n_neighbors=15, min_dist=0.3, random_state=seed).fit_transform(StandardScaler().fit_transform(emb))
    labels = dict(labels) or {"": np.zeros(len(emb))}
    k = len(labels)
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 4), squeeze=False)
    for ax, (name, vals) in zip(axes[0], labels.items()):
        vals = np.asarray(vals)
        if vals.dtype.kind in "fiu" and len(np.unique(vals[~np.isnan(vals.astype(float))])) > 12:
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=vals, s=3, cmap="viridis")
            fig.colorbar(sc, ax=ax, label=name)
        else:
            vs = vals.astype(str)
            for u in np.unique(vs):
                m = vs == u
                ax.scatter(xy[m, 0], xy[m, 1], s=3, label=u)
            ax.legend(markerscale=3, fontsize=7, title=name, loc="best")
        ax.set_title(f"coloured by {name}")
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
    fig.suptitle(title)
    save_figure(fig, path, dpi=120)
