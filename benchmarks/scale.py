"""Benchmark: wall time and peak memory of the cohort-level stages as the cohort grows.

For each ``--cells`` N, builds in a temporary folder a synthetic paired cohort of N cells in two
samples (control and treated; no images: the morphology-table route), cheaply:
  * sparse counts over ``--genes`` genes (default 20,000: the shipped human cell-cycle genes plus
    background names), ~``--umis`` UMIs per cell drawn from a few cell states whose expression
    programmes include the S and G2/M genes;
  * a morphology table of 40 features driven by the same states, keyed by barcode;
then runs the real workflow (``snakemake --cores 2``, user sample sheet) up to the rules
``cohort``, ``cosmic``, ``cell_cycle`` and ``drug_response``, and reads each job's Snakemake
``benchmark:`` file. Prints one TSV row per stage and size:

    stage   cells   wall_s  peak_rss_mb

(``rna`` and ``pair`` are per sample: their rows give the larger of the two samples). ``--epochs``
shortens COSMIC's training (cosmic.epochs), ``--n-hvg`` limits its genes (cosmic.n_hvg).
``--images N`` also prints the dry-run figures of one sample with N images
(benchmarks/dry_run_scale.py).

    python benchmarks/scale.py --cells 10000 100000 [--epochs 5] [--images 10000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import run_snakemake  # noqa: E402  (the tests' Snakemake runner)

STAGES = ("rna", "pair", "cohort", "cosmic", "cell_cycle", "drug_response")
N_STATES, N_FEATURES, CHUNK = 8, 40, 5000


def cycle_genes() -> list[str]:
    names = []
    for name in ("tirosh2016_s_genes_human.txt", "tirosh2016_g2m_genes_human.txt"):
        names += (ROOT / "resources" / "cell_cycle" / name).read_text().split()
    return list(dict.fromkeys(names))


def gene_names(n_genes: int) -> list[str]:
    """The cycle genes first, then background names."""
    names = cycle_genes()
    return names + [f"SYNTH{i:05d}" for i in range(n_genes - len(names))]


def state_profiles(rng, n_genes: int, n_cycle: int) -> np.ndarray:
    """Cumulative gene probabilities of each cell state: a Zipf-like base expression, modulated
    per state on 500 random genes and, for the cycling states, on the cycle genes."""
    base = 1.0 / np.arange(1, n_genes + 1) ** 0.9
    rng.shuffle(base)
    profiles = np.tile(base, (N_STATES, 1))
    for state in range(N_STATES):
        genes = rng.choice(n_genes, 500, replace=False)
        profiles[state, genes] *= rng.lognormal(0, 1, 500)
        if state % 2:
            profiles[state, :n_cycle] *= 8
    profiles /= profiles.sum(1, keepdims=True)
    return np.cumsum(profiles, 1)


def synthetic_sample(rng, n_cells: int, genes: list[str], cumulative: np.ndarray, umis: int, sample: str):
    """Counts (CSR, built CHUNK cells at a time) and the morphology table of one sample."""
    states = rng.integers(0, N_STATES, n_cells)
    blocks = []
    for start in range(0, n_cells, CHUNK):
        chunk = states[start:start + CHUNK]
        totals = np.maximum(50, rng.lognormal(np.log(umis), 0.4, len(chunk))).astype(np.int64)
        rows = np.repeat(np.arange(len(chunk)), totals)
        uniform = rng.random(len(rows))
        cols = np.empty(len(rows), dtype=np.int64)
        for state in np.unique(chunk):
            pick = chunk[rows] == state
            cols[pick] = np.searchsorted(cumulative[state], uniform[pick])
        cols = np.minimum(cols, len(genes) - 1)
        blocks.append(sp.coo_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                                    shape=(len(chunk), len(genes))).tocsr())
    counts = sp.vstack(blocks).tocsr()
    barcodes = [f"{sample}_{i:07d}" for i in range(n_cells)]
    loadings = rng.normal(size=(N_STATES, N_FEATURES))
    features = loadings[states] + rng.normal(scale=1.0, size=(n_cells, N_FEATURES))
    features[:, 0] = np.abs(features[:, 0]) * 50 + 200  # an area-like column
    table = pd.DataFrame(features, columns=[f"feature_{j:02d}" for j in range(N_FEATURES)])
    table.insert(0, "barcode", barcodes)
    adata = ad.AnnData(X=counts, obs=pd.DataFrame(index=barcodes), var=pd.DataFrame(index=genes))
    return adata, table


def build_cohort(folder: Path, n_cells: int, n_genes: int, umis: int, epochs: int, n_hvg: int,
                 seed: int) -> Path:
    rng = np.random.default_rng(seed)
    genes = gene_names(n_genes)
    cumulative = state_profiles(rng, n_genes, n_cycle=len(cycle_genes()))
    rows = []
    for sample, treatment in (("scale_control", "control"), ("scale_treated", "docetaxel")):
        adata, table = synthetic_sample(rng, n_cells // 2, genes, cumulative, umis, sample)
        (folder / "data").mkdir(exist_ok=True)
        adata.write_h5ad(folder / "data" / f"{sample}.h5ad")
        table.to_parquet(folder / "data" / f"{sample}.morphology.parquet", index=False)
        rows.append({"sample": sample, "counts": f"data/{sample}.h5ad",
                     "morphology": f"data/{sample}.morphology.parquet", "treatment": treatment})
    pd.DataFrame(rows).to_csv(folder / "samples.tsv", sep="\t", index=False)
    config = {"demo": False, "samples": "samples.tsv", "results": "results", "seed": seed,
              "cosmic": {"epochs": epochs, "n_hvg": n_hvg, "evaluation": {"n_splits": 2}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml"


def stage_rows(results: Path, n_cells: int) -> list[str]:
    rows = []
    for stage in STAGES:
        files = sorted((results / "benchmarks").glob(f"{stage}.tsv")) + sorted(
            (results / "benchmarks" / stage).glob("*.tsv"))
        if not files:
            rows.append(f"{stage}\t{n_cells}\tnan\tnan")
            continue
        table = pd.concat([pd.read_csv(f, sep="\t") for f in files])
        rows.append(f"{stage}\t{n_cells}\t{table['s'].max():.1f}\t{table['max_rss'].max():.0f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--umis", type=int, default=2_000, help="median UMIs per cell")
    parser.add_argument("--epochs", type=int, default=5, help="cosmic.epochs")
    parser.add_argument("--n-hvg", type=int, default=0, help="cosmic.n_hvg (0: every gene)")
    parser.add_argument("--images", type=int, nargs="*", default=[], help="also dry-run one sample of N images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the run folders (printed)")
    args = parser.parse_args()
    print("stage\tcells\twall_s\tpeak_rss_mb", flush=True)
    for n_cells in args.cells:
        folder = Path(tempfile.mkdtemp(prefix=f"cosmic-scale-{n_cells}-"))
        start = time.perf_counter()
        config = build_cohort(folder, n_cells, args.genes, args.umis, args.epochs, args.n_hvg, args.seed)
        print(f"# {n_cells} cells: synthetic cohort built in {time.perf_counter() - start:.0f} s", flush=True)
        run = run_snakemake("--cores", "2", "--configfile", config, "--directory", folder, "--keep-going",
                            "cohort", "cosmic", "cell_cycle", "drug_response", cwd=folder, timeout=None)
        if run.returncode != 0:
            print(f"# {n_cells} cells: some stages failed (see {folder}/results/logs):\n# "
                  + run.stderr[-1500:].replace("\n", "\n# "), flush=True)
        for row in stage_rows(folder / "results", n_cells):
            print(row, flush=True)
        if args.keep or run.returncode != 0:
            print(f"# kept {folder}", flush=True)
        else:
            shutil.rmtree(folder)
    for n_images in args.images:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dry_run_scale.py"), "--images", str(n_images)])


if __name__ == "__main__":
    main()
