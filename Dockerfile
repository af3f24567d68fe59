FROM condaforge/miniforge3:latest
LABEL io.github.snakemake.containerized="true"
LABEL io.github.snakemake.conda_env_hash="02aad532ea32de474412fc74896d4c1506a4f31e771333aaf9f9e4c29071130f"
ENV CONDA_OVERRIDE_CUDA=12.6
# Conda environment:
#   source: workflow/envs/imaging.yaml
#   prefix: /conda-envs/affc84086a6422151d114bc5707201cc
#   # Image reading, segmentation, per-nucleus features and crop banks; also the demo generator.
#   channels:
#     - conda-forge
#     - nodefaults
#   dependencies:
#     - python>=3.11,<3.13
#     - numpy=2.4.6
#     - scipy=1.17.1
#     - pandas=2.3.3
#     - pyarrow=26.0.1
#     - scikit-image=0.26.0
#     - tifffile=2026.3.3
#     - imagecodecs  # zlib/LZW-compressed TIFFs
#     - matplotlib-base=3.11.2
#     - jsonschema=4.26.0
#     - pyyaml=6.0.4
#     - tqdm=4.70.1
RUN mkdir -p /conda-envs/affc84086a6422151d114bc5707201cc
COPY workflow/envs/imaging.yaml /conda-envs/affc84086a6422151d114bc5707201cc/environment.yaml
# Conda environment:
#   source: workflow/envs/report.yaml
#   prefix: /conda-envs/dc84b2dc2475606825dedc3c92fff7f1
#   # Report notebooks: papermill execution and nbconvert HTML rendering.
#   channels:
#     - conda-forge
#     - nodefaults
#   dependencies:
#     - python>=3.11,<3.13
#     - papermill=2.7.0
#     - nbconvert=7.17.2
#     - ipykernel=7.4.0
#     - numpy=2.4.6
#     - scipy=1.17.1
#     - pandas=2.3.3
#     - pyarrow=26.0.1
#     - anndata=0.12.19
#     - scanpy=1.11.5
#     - scikit-learn=1.9.1
#     - scikit-image=0.26.0
#     - tifffile=2026.3.3
#     - matplotlib-base=3.11.2
#     - jsonschema=4.26.0
#     - pyyaml=6.0.4
#     - tqdm=4.70.1
RUN mkdir -p /conda-envs/dc84b2dc2475606825dedc3c92fff7f1
COPY workflow/envs/report.yaml /conda-envs/dc84b2dc2475606825dedc3c92fff7f1/environment.yaml
# Conda environment:
#   source: workflow/envs/rna.yaml
#   prefix: /conda-envs/9e672fd064c9e31e5cdc2074cb1381dd
#   # Count matrices, scanpy processing, pairing and cohort AnnData objects.
#   channels:
#     - conda-forge
#     - bioconda
#     - nodefaults
#   dependencies:
#     - python>=3.11,<3.13
#     - numpy=2.4.6
#     - scipy=1.17.1
#     - pandas=2.3.3
#     - pyarrow=26.0.1
#     - anndata=0.12.19
#     - scanpy=1.11.5
#     - scikit-learn=1.9.1
#     - scikit-image=0.26.0
#     - tifffile=2026.3.3
#     - matplotlib-base=3.11.2
#     - jsonschema=4.26.0
#     - pyyaml=6.0.4
#     - tqdm=4.70.1
#     - python-igraph=1.0.0
RUN mkdir -p /conda-envs/9e672fd064c9e31e5cdc2074cb1381dd
COPY workflow/envs/rna.yaml /conda-envs/9e672fd064c9e31e5cdc2074cb1381dd/environment.yaml
# Conda environment:
#   source: workflow/envs/torch.yaml
#   prefix: /conda-envs/7818ef7696f417f49c03de39411b13bf
#   # GPU training and inference (foundation model, COSMIC). A CUDA build of PyTorch:
#   # to solve this on a login node without a GPU, set CONDA_OVERRIDE_CUDA, e.g.
#   #   CONDA_OVERRIDE_CUDA=12.6 snakemake --profile profiles/slurm --conda-create-envs-only
#   # On a CPU-only machine the same code runs on the CPU build (pip: torch==2.13.0).
#   channels:
#     - conda-forge
#     - nodefaults
#   dependencies:
#     - python>=3.11,<3.13
#     - pytorch=2.13.0=cuda*
#     - numpy=2.4.6
#     - scipy=1.17.1
#     - pandas=2.3.3
#     - pyarrow=26.0.1
#     - anndata=0.12.19
#     - scanpy=1.11.5
#     - python-igraph=1.0.0
#     - scikit-learn=1.9.1
#     - scikit-image=0.26.0
#     - tifffile=2026.3.3
#     - matplotlib-base=3.11.2
#     - jsonschema=4.26.0
#     - pyyaml=6.0.4
#     - tqdm=4.70.1
#     - pot=0.9.7
#     - diffusers=0.42.1  # noise schedules of the residual diffusion (cosmic.method: diffusion)
RUN mkdir -p /conda-envs/7818ef7696f417f49c03de39411b13bf
COPY workflow/envs/torch.yaml /conda-envs/7818ef7696f417f49c03de39411b13bf/environment.yaml

RUN conda env create --prefix /conda-envs/affc84086a6422151d114bc5707201cc --file /conda-envs/affc84086a6422151d114bc5707201cc/environment.yaml && \
    conda env create --prefix /conda-envs/dc84b2dc2475606825dedc3c92fff7f1 --file /conda-envs/dc84b2dc2475606825dedc3c92fff7f1/environment.yaml && \
    conda env create --prefix /conda-envs/9e672fd064c9e31e5cdc2074cb1381dd --file /conda-envs/9e672fd064c9e31e5cdc2074cb1381dd/environment.yaml && \
    conda env create --prefix /conda-envs/7818ef7696f417f49c03de39411b13bf --file /conda-envs/7818ef7696f417f49c03de39411b13bf/environment.yaml && \
    conda clean --all -y
