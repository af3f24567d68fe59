"""Size, randomness and file layout of the demo dataset, known before anything is generated.

The Snakefile reads these at parse time (``workflow/rules/common.smk``: settings, sample sheet
and image names).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class DemoSettings:
    """Size and randomness of the demo dataset (``demo_dataset`` block of the config)."""

    seed: int = 7
    samples: dict = field(default_factory=lambda: {"demo_control": "control",
                                                   "demo_docetaxel": "docetaxel"})
    cells_per_sample: int = 1000
    uncaptured_fraction: float = 0.02
    nuclei_per_image: int = 100
    image_size: int = 1024
    touching_fraction: float = 0.15
    median_library_size: float = 5000.0
    oracle_replicates: int = 4

    @classmethod
    def from_config(cls, block: dict | None) -> "DemoSettings":
        block = dict(block or {})
        if "samples" in block:
            block["samples"] = {s["sample"]: s["treatment"] for s in block["samples"]}
        unknown = set(block) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown demo_dataset keys: {sorted(unknown)}")
        return cls(**block)

    def nuclei_per_sample(self) -> int:
        return self.cells_per_sample + int(round(self.cells_per_sample * self.uncaptured_fraction))


def image_names(settings: DemoSettings) -> dict[str, list[str]]:
    """The image names of every demo sample, known before anything is generated."""
    n_images = math.ceil(settings.nuclei_per_sample() / settings.nuclei_per_image)
    return {s: [f"fov_{i:03d}" for i in range(n_images)] for s in settings.samples}


def sample_paths(outdir, sample: str) -> dict[str, Path]:
    """Where the generator writes one sample's inputs (mirrors a user's raw-data folder)."""
    base = Path(outdir) / sample
    return {
        "images": base / "images",
        "truth_masks": base / "truth_masks",
        "counts": base / "counts",
        "pairing": base / "pairing.tsv",
        "annotations": base / "annotations.tsv",
    }


def sample_sheet(settings: DemoSettings, outdir) -> pd.DataFrame:
    """The sample sheet describing the demo samples (same columns as ``config/samples.tsv``)."""
    rows = []
    for sample, treatment in settings.samples.items():
        paths = sample_paths(outdir, sample)
        rows.append({
            "sample": sample, "images": str(paths["images"]), "counts": str(paths["counts"]),
            "pairing": str(paths["pairing"]), "annotations": str(paths["annotations"]),
            "condition": treatment, "cell_line": "demo_prostate",
            "treatment": treatment, "response": "mixed",
        })
    return pd.DataFrame(rows)
