# Image <-> RNA pairing per sample (or RNA <-> precomputed morphology table by barcode),
# and the cohort object of all samples.


rule pair:
    input:
        unpack(pair_inputs),
    output:
        h5ad=f"{RESULTS}/paired/{{sample}}.h5ad",
        qc=f"{RESULTS}/paired/{{sample}}.pairing_qc.tsv",
    log:
        f"{RESULTS}/logs/pair/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pair/{{sample}}.tsv"
    conda:
        "../envs/rna.yaml"
    resources:
        mem_mb=cosmic_resources.pair_mem_mb,
        runtime=cosmic_resources.pair_runtime,
    params:
        image_names=lambda wildcards: list(IMAGES[wildcards.sample]),
        pairing=config["pairing"],
        morphology_table=config["morphology_table"],
        metadata=lambda wildcards: sample_metadata(wildcards.sample),
    script:
        "../scripts/pair.py"


rule cohort:
    input:
        paired=expand(f"{RESULTS}/paired/{{sample}}.h5ad", sample=SAMPLES.index),
        qc=expand(f"{RESULTS}/paired/{{sample}}.pairing_qc.tsv", sample=SAMPLES.index),
    output:
        h5ad=f"{RESULTS}/paired/cohort.h5ad",
        summary=f"{RESULTS}/paired/pairing_summary.tsv",
    log:
        f"{RESULTS}/logs/cohort.log",
    benchmark:
        f"{RESULTS}/benchmarks/cohort.tsv"
    conda:
        "../envs/rna.yaml"
    resources:
        mem_mb=cosmic_resources.from_cohort_size("paired", 2000, 10, floor=8000),
    params:
        n_pcs=config["rna"]["n_pcs"],
        max_fit_cells=config["rna"]["max_fit_cells"],
        n_top_genes=config["rna"]["n_top_genes"],
        seed=config["seed"],
    script:
        "../scripts/cohort.py"
