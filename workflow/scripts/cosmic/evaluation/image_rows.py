"""One split's scores in image space: generated nuclei judged as images, beside the baselines.

When COSMIC renders generated nuclei (it models the foundation embedding), each method's nuclei
for the test cells are turned into crops and judged the same way as the real crops of those
cells: measured with the project's own region-property extractor (space ``image_properties``,
:func:`cosmic.evaluation.images.measure_crops`) and re-encoded by the foundation encoder (space
``image_embedding``). Methods: ``embedding_decoder`` (COSMIC's generated embeddings, decoded by the
foundation image head), ``diffusion`` (the pixel-space generator of :mod:`cosmic.generate`, trained on
this split's cells: its nuclei for a seeded subsample of the test cells, scored against the real
crops of those cells; in ``image_embedding`` too only when it generates every bank channel),
``ridge_residual`` (ridge mean + a resampled training residual in embedding space,
decoded the same way) and ``nearest_rna`` (the real crops of the training cells whose RNA is
nearest: real nuclei, the retrieval baseline). Features are standardised by the real test cells'
mean and SD; crops where no nucleus is segmented are left out of the distribution metrics and
counted by ``nucleus_found``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from . import baselines as B
from .images import measure_crops
from .. import metrics as M
from .generation import generation_scores
from .split import SplitData, metric_rows


@dataclass
class ImageContext:
    """What image-space scoring needs: the foundation model (decoder and encoder), each sample's
    crop bank, the DNA channel inside the crops, the nucleus diameter (px) the measurements use,
    and the preprocessor that maps generated embeddings back to X_fm units."""

    foundation: object
    banks: dict
    dna_channel: int
    nucleus_diameter: float | None = None
    preprocessor: object = None
    generated: str | None = None  # this split's cosmic.generate output (.npz), when the generator ran

    @classmethod
    def from_files(cls, foundation_path, crop_paths, samples, dna_channel, first_image=None,
                   generated=None) -> "ImageContext":
        """From the rule's inputs: the foundation model, the crop banks (one per sample, in ``samples``
        order), the ``imaging.dna_channel`` setting (a name is resolved on ``first_image``) and the
        generator's output for the split (``generated``, optional)."""
        from ..foundation import load_model
        from ..imageio import crop_banks_by_sample, crop_dna_channel

        banks = crop_banks_by_sample(crop_paths, samples)
        if banks is None:
            raise ValueError(f"{len(list(crop_paths))} crop banks for {len(list(samples))} samples")
        return cls(load_model(foundation_path), banks, crop_dna_channel(dna_channel, first_image),
                   generated=str(generated) if generated else None)

    def with_cohort(self, cohort) -> "ImageContext":
        """Set the nucleus diameter the crop measurements use from the cohort's own nuclei (median area)."""
        names = [str(n) for n in cohort.uns.get("morph_features", [])]
        if self.nucleus_diameter is None and "morph_area" in names:
            area = np.asarray(cohort.obsm["X_morph"])[:, names.index("morph_area")]
            self.nucleus_diameter = float(np.sqrt(4 * np.nanmedian(area) / np.pi))
        return self

    def real_crops(self, cells) -> np.ndarray:
        """Crops of the given cells (obs ``sample``, ``crop_index``), in cell order."""
        samples = cells.obs["sample"].astype(str).to_numpy()
        index = cells.obs["crop_index"].to_numpy(int)
        out = None
        for sample in np.unique(samples):
            bank = np.load(self.banks[sample], mmap_mode="r")
            rows = np.flatnonzero(samples == sample)
            if out is None:
                out = np.zeros((len(cells),) + bank.shape[1:], dtype=np.float32)
            out[rows] = bank[np.sort(index[rows])][np.argsort(np.argsort(index[rows]))]
        return out

    def decode(self, representation: np.ndarray) -> np.ndarray:
        """Crops rendered from standardised embeddings (samples x cells x dims -> samples x cells x C x S x S)."""
        from ..foundation import decode_embeddings

        flat = representation.reshape(-1, representation.shape[-1])
        crops = decode_embeddings(self.foundation, self.preprocessor.rep_to_raw(flat))
        return crops.reshape(representation.shape[:2] + crops.shape[1:])


def _scaler(real: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns kept (finite and not constant over the real cells with a nucleus), their mean and SD."""
    found = np.isfinite(real).all(1)
    keep = np.nanstd(real[found], 0) > 1e-9 if found.any() else np.zeros(real.shape[1], bool)
    return keep, real[found][:, keep].mean(0), real[found][:, keep].std(0)


def _space_rows(space: str, real: np.ndarray, generated: dict, data: SplitData, seed: int, max_cells: int):
    """Rows of one image space: every method's generation scores against the real test cells."""
    keep, mean, sd = _scaler(real)
    real_z = (real[:, keep] - mean) / sd
    real_found = np.isfinite(real_z).all(1)
    rows = []
    for method, samples in generated.items():
        samples_z = (samples[..., keep] - mean) / sd
        found = np.isfinite(samples_z).all(-1)
        scores = {}
        if found.sum() > 2 and real_found.sum() > 2:
            scores = generation_scores(real_z[real_found], samples_z[found], seed=seed, max_cells=max_cells)
            with warnings.catch_warnings():  # cells with no found sample give an all-NaN mean
                warnings.simplefilter("ignore", RuntimeWarning)
                cell_mean = np.nanmean(np.where(found[..., None], samples_z, np.nan), axis=0)
            ok = np.isfinite(cell_mean).all(1) & real_found
            scores["conditional_r2"] = M.total_r2(real_z[ok], cell_mean[ok]) if ok.sum() > 2 else float("nan")
        scores["nucleus_found"] = float(found.mean())
        rows += metric_rows("morphology_from_rna", space, method, scores, data.sizes)
    return rows


def _measured(crops: np.ndarray, context: ImageContext) -> np.ndarray:
    """Region properties of crops (any leading shape), NaN rows where no nucleus was found."""
    flat = crops.reshape((-1,) + crops.shape[-3:])
    table = measure_crops(flat, context.dna_channel, nucleus_diameter=context.nucleus_diameter)
    values = table.drop(columns="found").to_numpy(float)
    values[~table["found"].to_numpy(bool)] = np.nan
    return values.reshape(crops.shape[:-3] + (values.shape[1],))


def _encoded(crops: np.ndarray, context: ImageContext) -> np.ndarray:
    from ..foundation import embed_array

    flat = crops.reshape((-1,) + crops.shape[-3:])
    return embed_array(context.foundation, flat).reshape(crops.shape[:-3] + (-1,))


def generated_crops(data: SplitData, context: ImageContext, train_cells, n_generated: int, seed: int) -> dict:
    """Each method's crops for the test cells: samples x test cells x C x S x S."""
    x_train, x_test = data.inputs(data.train, "rna"), data.inputs(data.test, "rna")
    k = max(1, int(n_generated))
    retrieved = B.nearest_rna_samples(x_train, data.train["rep"], x_test, k).indices
    # only the retrieved training cells' crops are read, not the whole training set's
    cells, position = np.unique(retrieved, return_inverse=True)
    retrieved_crops = context.real_crops(train_cells[cells])[position.reshape(retrieved.shape)]
    return {
        "embedding_decoder": context.decode(np.asarray(data.predictions["rep_samples"][:k])),
        "ridge_residual": context.decode(B.ridge_residual_samples(x_train, data.train["rep"], x_test, k, seed)),
        "nearest_rna": retrieved_crops,
    }


def diffusion_crops(context: ImageContext, test_cells, bank_shape) -> tuple[np.ndarray, np.ndarray, bool]:
    """The generator's nuclei in the bank's geometry, the test-cell rows they belong to, and whether
    every bank channel was generated."""
    from ..generate.run import read_generated, to_bank_geometry

    out = read_generated(context.generated)
    names = test_cells.obs_names.astype(str)
    rows = names.get_indexer(out["cells"])
    if (rows < 0).any():
        raise ValueError(f"{context.generated}: {int((rows < 0).sum())} generated cells are not test cells of this "
                         "split; the generator output belongs to another split or cohort (re-run generate_split)")
    crops = to_bank_geometry(out["generated"], out["channels"], bank_shape[0], bank_shape[-1])
    return crops, rows, len(out["channels"]) == bank_shape[0]


def image_rows(data: SplitData, context: ImageContext, train_cells, test_cells, n_generated: int = 4,
               seed: int = 0, max_cells: int = 2000) -> list[dict]:
    """Every image-space row of one split (``image_properties`` and ``image_embedding``)."""
    real = context.real_crops(test_cells)
    crops = generated_crops(data, context, train_cells, n_generated, seed)
    real_measured, real_encoded = _measured(real, context), _encoded(real, context)
    rows = _space_rows("image_properties", real_measured,
                       {m: _measured(c, context) for m, c in crops.items()}, data, seed, max_cells)
    rows += _space_rows("image_embedding", real_encoded,
                        {m: _encoded(c, context) for m, c in crops.items()}, data, seed, max_cells)
    if context.generated is not None:
        generated, cells, all_channels = diffusion_crops(context, test_cells, real.shape[1:])
        sizes = {**data.sizes, "n_test": len(cells)}
        rows += [dict(r, **sizes) for r in _space_rows("image_properties", real_measured[cells],
                                                       {"diffusion": _measured(generated, context)}, data,
                                                       seed, max_cells)]
        if all_channels:
            rows += [dict(r, **sizes) for r in _space_rows("image_embedding", real_encoded[cells],
                                                           {"diffusion": _encoded(generated, context)}, data,
                                                           seed, max_cells)]
    return rows
