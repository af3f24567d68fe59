# COSMIC: bidirectional, stochastic generation between transcriptome and nuclear morphology,
# trained on paired cells and evaluated on held-out test cells only.


rule cosmic:
    input:
        unpack(cosmic_inputs),
    output:
        # The decoded generated nuclei exist only when COSMIC models the foundation embedding.
        **({"generated_images": GENERATED_IMAGES} if COSMIC_DECODES_IMAGES else {}),
        model=f"{RESULTS}/models/cosmic/model.pt",
        predictions=f"{RESULTS}/cosmic/predictions.h5ad",
        metrics=f"{RESULTS}/cosmic/metrics.json",
        variance=f"{RESULTS}/cosmic/variance_decomposition.tsv",
        gene_r2=report(
            f"{COSMIC_FIGURE_DIR}/gene_r2_ranked.png",
            caption="../report/cosmic_gene_r2.rst",
            category="COSMIC",
        ),
        decomposition=report(
            f"{COSMIC_FIGURE_DIR}/variance_decomposition.png",
            caption="../report/cosmic_variance.rst",
            category="COSMIC",
        ),
        confusion=f"{RESULTS}/cosmic/cell_type_confusion.tsv",
        confusion_figure=report(
            f"{COSMIC_FIGURE_DIR}/cell_type_confusion.png",
            caption="../report/cosmic_cell_types.rst",
            category="COSMIC",
        ),
        captions=COSMIC_CAPTIONS,
    log:
        f"{RESULTS}/logs/cosmic.log",
    benchmark:
        f"{RESULTS}/benchmarks/cosmic.tsv"
    # split 0 of the evaluation scores this model
    priority: 10
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=cosmic_resources.from_cohort_size("cohort", 2000, 10, floor=8000),
        runtime=cosmic_resources.from_cohort_size("cohort", 120, 0.2),
    params:
        cosmic=config["cosmic"],
        samples=list(SAMPLES.index),
    script:
        "../scripts/cosmic_model.py"


if COSMIC_DECODES_IMAGES:

    rule cosmic_nuclei_figure:
        input:
            unpack(cosmic_nuclei_figure_inputs),
        output:
            figure=report(
                f"{COSMIC_FIGURE_DIR}/{layout.GENERATED_NUCLEI_FIGURE}.png",
                caption="../report/cosmic_nuclei.rst",
                category="COSMIC",
            ),
            caption=f"{COSMIC_FIGURE_DIR}/{layout.GENERATED_NUCLEI_FIGURE}.txt",
        log:
            f"{RESULTS}/logs/cosmic_nuclei_figure.log",
        conda:
            "../envs/torch.yaml"
        threads: 1
        resources:
            mem_mb=cosmic_resources.per_attempt(4000),
            runtime=cosmic_resources.per_attempt(20),
        params:
            dna_channel=config["imaging"]["dna_channel"],
            samples=list(SAMPLES.index),
        script:
            "../scripts/cosmic_nuclei_figure.py"
