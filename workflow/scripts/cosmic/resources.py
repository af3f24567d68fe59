"""Cluster resources of the rules whose work grows with the data: memory (``mem_mb``) and run
time (``runtime``, minutes) computed from the size of each job's inputs.

Every function is a Snakemake resource callable (``resources: mem_mb=cosmic_resources.segment_mem_mb``):
Snakemake passes the wildcards, and the job's ``input`` and ``attempt`` by name. An input file that does not
exist yet (made by an earlier job) raises ``FileNotFoundError`` naming it, which Snakemake shows
as ``<TBD>`` in a dry run and evaluates again once the file exists, before the job is submitted.
A retried job (``retries:`` in the profile) gets ``attempt`` times the first request.

Calibration (one CPU core): segmentation ~0.07 s and ~16 MB of memory per MB of (zlib-compressed)
image; the nuclei stage ~0.2 s per MB of image (~2-9 ms per nucleus; 10^6 nuclei in 20 GB of
images took ~2.5 h on a cluster CPU); embedding 10^6 nuclei (16 GB of crops) on a CPU 1-3 h. The
factors below leave about twice that, since a job killed at its limit costs more than a
generous request.
"""

from __future__ import annotations

import errno
import math
import os

MB = 2**20


def as_list(paths) -> list:
    """One path or several as a list (Snakemake gives a named input of one file as a string)."""
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def file_mb(paths) -> float:
    """Total size in MB of ``paths`` (one path or several; a directory, such as a 10x ``matrix.mtx``
    folder, counts as all the files in it); ``FileNotFoundError`` naming the first missing one."""
    return sum(_size(path) for path in as_list(paths)) / MB


def _size(path) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
    return os.path.getsize(path)


def named(input, key: str):
    """The job's named input ``key``. While a checkpoint the job depends on is pending,
    Snakemake gives the job only the checkpoint's output: then ``FileNotFoundError`` naming that
    (shown as ``<TBD>`` until the job is planned again)."""
    if key in input.keys():
        return getattr(input, key)
    missing = str(input[0]) if len(input) else key
    raise FileNotFoundError(errno.ENOENT, f"input '{key}' is known once the checkpoint has run", missing)


def _scaled(value: float, attempt: int) -> int:
    return int(math.ceil(value)) * max(1, int(attempt))


def per_attempt(value: float):
    """A fixed request that grows with retries: ``value`` on the first attempt, twice on the second, ...
    (``resources: mem_mb=cosmic_resources.per_attempt(8000)``)."""

    def request(wildcards, attempt=1) -> int:
        return _scaled(value, attempt)

    return request


# ----------------------------------------------------------------- segment (one image)

def segment_mem_mb(wildcards, input, attempt=1) -> int:
    """1 GB plus 40x the image file (compressed images decode to 2-4x their size)."""
    return _scaled(1000 + 40 * file_mb(named(input, "image")), attempt)


def segment_runtime(wildcards, input, attempt=1) -> int:
    """2 minutes plus one per 50 MB of image (measured: ~4 s per 50 MB)."""
    return _scaled(2 + file_mb(named(input, "image")) / 50, attempt)


# ----------------------------------------------------------------- nuclei (one sample)

def nuclei_mem_mb(wildcards, input, attempt=1) -> int:
    """4 GB, plus 40x the largest image (one image at a time), plus 0.2 MB per MB of images
    for the growing nucleus table (~50 nuclei per MB of image, a few kB each)."""
    sizes = [file_mb(path) for path in as_list(input.images)]
    return _scaled(4000 + 40 * max(sizes, default=0) + 0.2 * sum(sizes), attempt)


def nuclei_runtime(wildcards, input, attempt=1) -> int:
    """10 minutes plus 0.75 s per MB of images (10,000 images of 2 MB: ~4.3 h)."""
    return _scaled(10 + 0.75 * file_mb(input.images) / 60, attempt)


# ----------------------------------------------------------------- embed (one sample)

def embed_mem_mb(wildcards, input, attempt=1) -> int:
    """8 GB (PyTorch and the model) plus 0.15 MB per MB of crops (the embeddings kept in
    memory; the crop bank itself is memory-mapped)."""
    return _scaled(8000 + 0.15 * file_mb(input.crops), attempt)


def embed_runtime(wildcards, input, attempt=1) -> int:
    """30 minutes plus 12 per GB of crops (10^6 two-channel 64 px nuclei, 16 GB: ~3.7 h on a
    CPU; much less on a GPU)."""
    return _scaled(30 + 12 * file_mb(input.crops) / 1024, attempt)


# ----------------------------------------------------------------- rna (one sample)

def rna_mem_mb(wildcards, input, attempt=1) -> int:
    """2 GB plus 6x the count matrix on disk, at least 8 GB: scanpy holds the sample's counts and their
    normalised copy (``benchmarks/scale.py``: 2.7 GB for a 480 MB h5ad of 50,000 cells x 20,000 genes)."""
    return _scaled(max(8000.0, 2000 + 6 * file_mb(input.counts)), attempt)


# ----------------------------------------------------------------- pair (one sample)

def pair_mem_mb(wildcards, input, attempt=1) -> int:
    """4 GB (one mask at a time) plus 3x the expression object, nucleus table and pairing
    table it holds, plus the foundation embedding's paired rows."""
    tables = file_mb([input.rna, input.nuclei, input.pairing]) if "nuclei" in input.keys() else file_mb(
        [input.rna, input.morphology])
    embedding = file_mb(input.embedding) if "embedding" in input.keys() else 0.0
    return _scaled(4000 + 3 * tables + embedding, attempt)


def pair_runtime(wildcards, input, attempt=1) -> int:
    """30 minutes plus one per 200 masks read (10,000 images: 80 minutes)."""
    n_masks = len(as_list(input.masks)) if "masks" in input.keys() else 0
    return _scaled(30 + n_masks / 200, attempt)


# ----------------------------------------------------------------- pairing_by_image (one sample)

def pairing_by_image_mem_mb(wildcards, input, attempt=1) -> int:
    """2 GB plus 10x the pairing table (10^6 rows, ~30 MB: 2.3 GB)."""
    return _scaled(2000 + 10 * file_mb(input.pairing), attempt)


# ----------------------------------------------------------------- cohort-level rules

def from_cohort_size(key: str, base: float, per_mb: float, floor: float = 0.0):
    """A request of ``base + per_mb`` x the size in MB of the job's input ``key`` (the gzip-compressed
    cohort, or the paired samples it is built from), at least ``floor``; doubled on each retry.

    Calibration (``benchmarks/scale.py``, 20,000 genes, ~1,250 genes detected per cell): the cohort file
    is ~6 MB per 1,000 cells, and the peak memory of ``cohort``, ``cosmic``, ``cell_cycle`` and
    ``drug_response`` grows by 3.5-5.5 MB per MB of it (10^5 cells: 2.5-3.9 GB); ``cosmic`` runs
    ~1.5 s per MB with 5 epochs, dominated by drawing 100 samples per held-out cell."""

    def request(wildcards, input, attempt=1) -> int:
        return _scaled(max(floor, base + per_mb * file_mb(named(input, key))), attempt)

    return request
