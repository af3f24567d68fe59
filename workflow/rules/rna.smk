# Count matrices -> QC-filtered, normalised AnnData with PCA (and external embeddings).


rule rna:
    input:
        unpack(rna_inputs),
    output:
        h5ad=f"{RESULTS}/rna/{{sample}}.h5ad",
        dropped=f"{RESULTS}/rna/{{sample}}.dropped_cells.tsv",
        qc_plot=report(
            f"{RESULTS}/rna/{{sample}}.qc.png",
            caption="../report/rna_qc.rst",
            category="Quality control",
            subcategory="{sample}",
        ),
    log:
        f"{RESULTS}/logs/rna/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rna/{{sample}}.tsv"
    conda:
        "../envs/rna.yaml"
    resources:
        mem_mb=cosmic_resources.rna_mem_mb,
        runtime=cosmic_resources.per_attempt(60),
    params:
        rna=config["rna"],
        counts_format=lambda wildcards: sample_value(
            wildcards.sample, "counts_format", "auto"
        ),
        orientation=lambda wildcards: sample_value(
            wildcards.sample, "counts_orientation", "auto"
        ),
        embedding=config["external_embedding"],
    script:
        "../scripts/rna.py"
