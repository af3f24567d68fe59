"""Nuclei foundation model: self-supervised encoder (crop -> embedding) and decoder
(embedding -> crop), trained on the unpaired corpus of all single-nucleus crops.

Encoders (``encoder``): a small CNN (``cnn``: 3 x 3 conv stages, one output position per
``patch_size`` block; the ``tiny`` CPU preset) or a ViT (``vit``: ``patch_size`` patches; the
``small``/``base`` GPU presets). Both give a grid of output tokens. Three objectives share the
encoder and one image decoder:

``features`` (default)
    feature prediction: a linear head on the embedding predicts the nucleus's own region
    properties (the ``morph_*`` columns of its ``nuclei.parquet``: size, shape, DNA intensity
    and GLCM texture, measured from the image and its segmentation, no labels), z-scored over
    the corpus; MSE. Handcrafted targets for self-supervision, as MaskFeat predicts HOG.
``vicreg``
    augmentation invariance: two augmented views of each crop, VICReg loss (invariance +
    variance + covariance) on a projector MLP of the embeddings.
``mae``
    masked autoencoding (ViT only): a random ``mask_ratio`` of the patches is hidden, the
    encoder sees the visible ones and a light transformer decoder reconstructs the hidden ones.

The embedding is read out from the encoder's output tokens (``pool``): by default the mean
and the SD of the tokens of the crop's central window (``center_stats``, statistics pooling;
crops are centred on the nucleus and include its neighbours), the mean alone (``center``), or
the mean of all tokens (``mean``, models made before ``pool`` existed).

Every objective adds an *image head* trained with a reconstruction loss from the pooled
embedding alone, so that :func:`decode_embeddings` renders any embedding (including embeddings
generated from RNA downstream) as a nucleus crop. Reconstruction losses are divided by the
variance of the target pixels in the batch (scale-free, ~1 for a constant predictor).

Why ``features`` on a CNN (issue #5, ``benchmarks/foundation_probes.py``; demo, 2,074 nuclei
matched to truth, held-out linear probes for cell type / phase / treatment): the tiny ViT
trained by VICReg for ~2 CPU minutes stayed near a random encoder (0.70 / 0.72 / 0.69 against
region properties 0.80 / 0.74 / 0.70 and random 0.68 / 0.69 / 0.64), and neither longer
training, MAE, other augmentations, a convolutional stem nor masked crops changed that. A
supervised CNN showed the crops hold the information (cell type ~0.83), and even regressing
the region properties did not teach the ViT much (cell type 0.71), while the small CNN learns
them within 600 steps. Nuclei-preserving augmentations (:data:`AUGMENT`: dihedral group and
whole-pixel shifts; no scale or intensity jitter, which erase nuclear size and DNA content)
keep the region properties unchanged, so they stay valid targets for every view.
In the workflow's own probe on the default demo (``results/qc/foundation_probes.tsv``; mean of
3 random 70/30 splits, each probe's regularisation chosen by cross-validation inside its
training split): foundation 0.822 / 0.736 / 0.735, region properties 0.809 / 0.729 / 0.717,
random-init CNN 0.732 / 0.705 / 0.646 (split SD ~0.01-0.02); 600 steps took 144 s on 2 cores.
The embedding is trained to hold the region properties, so matching them is by design; it
exceeds them because the CNN learns more of the image than the 34 targets name.

One code path for CPU and GPUs: the same :func:`train` runs a tiny model on a laptop or, when
launched by ``torchrun`` (``WORLD_SIZE > 1``), DistributedDataParallel over several GPUs
(NCCL) or CPU processes (gloo). Crops are streamed from the memory-mapped banks; training
checkpoints every ``checkpoint_every`` steps to ``last.pt`` and resumes from it.

Command line (the ``pretrain`` rule)::

    python -m cosmic.foundation train --crops a/crops.npy b/crops.npy --outdir models/foundation \\
        --config foundation.json
    torchrun --standalone --nproc_per_node=4 -m cosmic.foundation train --crops ... --outdir ...
    python -m cosmic.foundation embed --model models/foundation/model.pt --crops a/crops.npy \\
        --out a/embedding.npy

Modules: :mod:`.params` (parameters, presets), :mod:`.nets` (encoders, image heads, the model
and its objectives), :mod:`.augmentation`, :mod:`.data` (crop banks, region-property targets,
batch sampler), :mod:`.runtime` (device, torchrun, mixed precision, RNG), :mod:`.training`
(the training loop, checkpoints), :mod:`.embed` (loading, embedding, decoding), :mod:`.probes`
(linear probes), :mod:`.figures`, :mod:`.cli` (the command line).
"""

from .augmentation import AUGMENT, augment
from .cli import main
from .data import CropBankDataset, CropsWithTargets, StepBatchSampler, write_feature_targets
from .embed import decode_embeddings, embed_array, embed_crops, load_model, random_encoder_embeddings
from .figures import plot_reconstructions, plot_umap
from .nets import Block, ConvDecoder, ConvEncoder, FoundationModel, TokenDecoder, build_model
from .params import (AMP_MODES, DECODERS, DEFAULT_OBJECTIVE, DEVICES, ENCODERS, FORMAT, OBJECTIVES, POOLS,
                     PRESET_OBJECTIVE, PRESETS, FoundationParams)
from .probes import PROBE_CS, evaluate_representations, linear_probe
from .training import train

__all__ = [
    # parameters
    "FoundationParams", "PRESETS", "PRESET_OBJECTIVE", "OBJECTIVES", "DEFAULT_OBJECTIVE", "ENCODERS", "DECODERS",
    "POOLS", "AMP_MODES", "DEVICES", "FORMAT",
    # networks
    "FoundationModel", "build_model", "Block", "TokenDecoder", "ConvEncoder", "ConvDecoder",
    # data and augmentation
    "CropBankDataset", "CropsWithTargets", "write_feature_targets", "StepBatchSampler", "AUGMENT", "augment",
    # training, inference, evaluation, figures, command line
    "train", "load_model", "embed_crops", "embed_array", "decode_embeddings", "random_encoder_embeddings",
    "PROBE_CS", "linear_probe", "evaluate_representations", "plot_reconstructions", "plot_umap", "main",
]
