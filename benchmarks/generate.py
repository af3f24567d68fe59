"""Benchmark the RNA -> nucleus image generator (cosmic.generate): throughput and a GPU-hour projection.

For one preset (``--preset``, default ``cpu``) on whatever device the preset resolves to (CUDA
when present, else the CPU), with random crops of the bank's size (``--bank-size``, default 64,
so the CPU preset's resize is included) held in memory:

- training images/s through the real :func:`cosmic.generate.fit_generator` path (reading,
  resizing, scaling, augmentation, noising, AdamW, EMA), per phase, after a warm-up step;
- sampling images/s of :func:`cosmic.generate.generate` (guided DDIM with the preset's steps:
  two denoiser passes per step at a guidance scale other than 0 and 1);
- the U-Net's parameter count and the FLOPs per image of one denoiser forward pass
  (``torch.utils.flop_counter.FlopCounterMode``; a training step costs ~3 forward passes);
- a projection of GPU hours for ``--crops`` training crops with the preset's steps and
  ``--cells`` x ``n_generated`` generated crops, from the FLOPs at ``--tflops`` sustained TFLOP/s.

Run on the CPU (2 cores here)::

    PYTHONPATH=workflow/scripts python benchmarks/generate.py

On a GPU node::

    PYTHONPATH=workflow/scripts python benchmarks/generate.py --preset gpu128 --train-steps 20

Parameters, FLOPs and the projection alone (no timing; any machine)::

    PYTHONPATH=workflow/scripts python benchmarks/generate.py --preset gpu256 --flops-only --crops 2000000

On a shared CPU, compare ``--threads 1`` with the default: when other processes hold cores, OpenMP
threads wait for each other and 2 threads ran ~6x slower than 1 on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

# Sustained (not peak) mixed-precision TFLOP/s assumed for the projection: ~10% of the dense bf16
# peak of an H100 / H200 (989 TFLOP/s), as small-channel U-Nets with GroupNorm and attention on
# short sequences reach; 2-5x better with large batches and torch.compile.
ASSUMED_TFLOPS = 100.0


def forward_flops(model) -> int:
    """FLOPs of one denoiser forward pass for one image (conditional)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    C, S, _ = model.image_shape
    x = torch.randn(1, C, S, S, device=model.device)
    t = torch.full((1,), 500, device=model.device, dtype=torch.long)
    c = torch.zeros(1, model.cond_dim, device=model.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t, c)
    return int(counter.get_total_flops())


def train_throughput(params, crops, conditions, paired, steps: int) -> tuple[object, dict]:
    """Images/s per phase over ``steps`` timed steps, after a first (warm-up) step."""
    from cosmic.generate import fit_generator

    stamps: dict[str, list] = {}

    def callback(phase, step, loss):
        stamps.setdefault(phase, []).append(time.perf_counter())

    model = fit_generator(crops, conditions, paired, params, outdir=None, progress=False, callback=callback)
    rates = {ph: params.batch_size * (len(t) - 1) / (t[-1] - t[0]) for ph, t in stamps.items() if len(t) > 1}
    return model, rates


def sample_throughput(model, conditions, n_images: int, batch_size: int) -> float:
    from cosmic.generate import generate

    generate(model, conditions[:2], n_per_cell=1, batch_size=2, progress=False)  # warm-up
    t0 = time.perf_counter()
    generate(model, conditions[:n_images], n_per_cell=1, batch_size=batch_size, progress=False)
    return n_images / (time.perf_counter() - t0)


def project(params, flops: int, n_crops: int, n_cells: int, tflops: float, steps: int | None = None) -> dict:
    """GPU hours of training (3 forward-pass equivalents per image and step) and of sampling."""
    steps = params.pretrain_steps + params.finetune_steps if steps is None else steps
    passes = 1 if params.guidance_scale in (0.0, 1.0) else 2
    train_flops = 3 * flops * params.batch_size * steps
    sample_flops = flops * params.sampling_steps * passes * n_cells * params.n_generated
    rate = tflops * 1e12
    return {"assumed_sustained_tflops": tflops, "training_steps": steps,
            "epochs_over_crops": params.batch_size * steps / max(n_crops, 1),
            "train_pflop": train_flops / 1e15, "train_gpu_hours": train_flops / rate / 3600,
            "generated_images": n_cells * params.n_generated,
            "sample_pflop": sample_flops / 1e15, "sample_gpu_hours": sample_flops / rate / 3600}


def _static_report(args, params, model) -> dict:
    import torch

    flops = forward_flops(model)
    return {"preset": args.preset, "device": str(model.device), "torch_threads": torch.get_num_threads(),
            "crop_size": params.crop_size, "channels": len(params.channels), "batch_size": params.batch_size,
            "unet_parameters": int(sum(p.numel() for p in model.unet.parameters())),
            "all_parameters": model.n_parameters(), "forward_gflop_per_image": flops / 1e9,
            "sampling_steps": params.sampling_steps, "guidance_scale": params.guidance_scale,
            "projection": project(params, flops, args.crops, args.cells, args.tflops, args.steps)}


def _timed_report(args, base) -> dict:
    """Train a few steps of each phase and sample on random crops; the static report plus rates."""
    from cosmic.generate import GenerateParams

    S_bank = args.bank_size or (64 if args.preset == "cpu" else base.crop_size)
    n = max(4 * base.batch_size, 64)
    rng = np.random.default_rng(0)
    crops = rng.gamma(2.0, 0.1, size=(n, 2, S_bank, S_bank)).astype(np.float16)
    conditions = rng.normal(size=(n, args.cond_dim)).astype(np.float32)
    paired = np.ones(n, dtype=bool)
    params = GenerateParams.from_config({**base.to_dict(), "pretrain_steps": args.train_steps + 1,
                                         "finetune_steps": args.train_steps + 1, "warmup_steps": 1})
    model, rates = train_throughput(params, crops, conditions, paired, args.train_steps)
    report = _static_report(args, base, model)
    n_sample = min(n, args.sample_images or 2 * params.sample_batch_size)
    report.update({
        "bank_crop_size": S_bank, "train_images_per_s": rates,
        "sample_images_per_s": sample_throughput(model, conditions, n_sample, params.sample_batch_size),
        "preset_train_minutes_here": {
            "pretrain": base.pretrain_steps * base.batch_size / rates.get("pretrain", float("nan")) / 60,
            "finetune": base.finetune_steps * base.batch_size / rates.get("finetune", float("nan")) / 60}})
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu", choices=("cpu", "gpu128", "gpu256"))
    ap.add_argument("--bank-size", type=int, default=None, help="crop size of the random bank (default: 64 for "
                    "cpu, else the preset's crop_size)")
    ap.add_argument("--train-steps", type=int, default=6, help="timed training steps per phase (+1 warm-up)")
    ap.add_argument("--sample-images", type=int, default=None, help="images to sample (default 2 batches)")
    ap.add_argument("--cond-dim", type=int, default=32, help="width of the RNA latent")
    ap.add_argument("--crops", type=int, default=1_000_000, help="training crops for the projection")
    ap.add_argument("--cells", type=int, default=100_000, help="cells to generate crops for in the projection")
    ap.add_argument("--steps", type=int, default=None, help="training steps for the projection (default: the "
                    "preset's pretrain_steps + finetune_steps)")
    ap.add_argument("--flops-only", action="store_true", help="count parameters and FLOPs and project; no timing")
    ap.add_argument("--tflops", type=float, default=ASSUMED_TFLOPS, help="assumed sustained TFLOP/s")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--set", default="{}", help='JSON of generate parameters over the preset, e.g. '
                    '\'{"block_out_channels": [16, 32]}\'')
    args = ap.parse_args(argv)

    import torch

    from cosmic.generate import GenerateParams

    if args.threads:
        torch.set_num_threads(args.threads)
    base = GenerateParams.from_config({"preset": args.preset, **json.loads(args.set)})
    if args.flops_only:
        from cosmic.generate import ConditionalNucleusDiffusion

        model = ConditionalNucleusDiffusion(base, args.cond_dim).to("cpu").eval()
        report = _static_report(args, base, model)
    else:
        report = _timed_report(args, base)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
