"""RNA -> nucleus images: a conditional diffusion model (issue #18).

A diffusers ``UNet2DConditionModel`` denoises single-nucleus crops (by default the DNA channel,
resized to ``crop_size``, intensities scaled to [-1, 1]) and cross-attends to the cell's RNA
latent, projected to a few condition tokens; learned null tokens stand in for a dropped
condition (classifier-free guidance). Training (:func:`fit_generator`) has two phases: an
unconditional pretraining on all crops (the unpaired corpus), then a conditional fine-tuning on
the paired training cells with condition dropout. Sampling (:func:`generate`) runs guided DDIM.

Presets (:data:`PRESETS`): ``cpu`` (32 x 32, 0.25 M parameters, a couple of minutes on 2 CPU
cores: runs the demo end to end), ``gpu128`` and ``gpu256`` (real cohorts on a GPU). The same
code runs on the CPU and uses CUDA when present (mixed precision on CUDA only).

Typical use::

    crops = np.load("results/nuclei/s1/crops.npy", mmap_mode="r")   # or CropBankDataset([...])
    model = fit_generator(crops, latents, is_training_cell, GenerateParams.from_config(cfg),
                          outdir="models/generate")
    images = generate(model, test_latents, n_per_cell=4, seed=0)   # 4 x M x 1 x 32 x 32
    model = ConditionalNucleusDiffusion.load("models/generate/model.pt")

Modules: :mod:`.params` (parameters, presets), :mod:`.model` (the denoiser, schedules, guidance,
save / load), :mod:`.data` (reading crops, checks, intensity scale), :mod:`.training`,
:mod:`.sampling`. Throughput and GPU-hour projections: ``benchmarks/generate.py``.
"""

from .data import check_inputs, crop_geometry, fit_intensity_scale, read_crops
from .model import (ConditionalNucleusDiffusion, build_unet, guide, noise_schedule, resolve_device,
                    sampling_schedule)
from .params import FORMAT, PRESETS, GenerateParams
from .sampling import generate, generate_to_file
from .training import CHECKPOINT, MODEL, PHASES, fit_generator

__all__ = [
    "GenerateParams", "PRESETS", "FORMAT",
    "ConditionalNucleusDiffusion", "build_unet", "guide", "noise_schedule", "sampling_schedule", "resolve_device",
    "crop_geometry", "read_crops", "check_inputs", "fit_intensity_scale",
    "fit_generator", "PHASES", "CHECKPOINT", "MODEL",
    "generate", "generate_to_file",
]
