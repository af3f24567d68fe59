# COSMIC: bidirectional, stochastic generation between transcriptome and nuclear morphology,
# trained on paired cells and evaluated on held-out test cells only.


rule cosmic:
    input:
        unpack(cosmic_inputs),
    output:
        model=f"{RESULTS}/models/cosmic/model.pt",
        predictions=f"{RESULTS}/cosmic/predictions.h5ad",
        metrics=f"{RESULTS}/cosmic/metrics.json",
        variance=f"{RESULTS}/cosmic/variance_decomposition.tsv",
        gene_r2=report(
            f"{RESULTS}/cosmic/figures/gene_r2_ranked.png",
            caption="../report/cosmic_gene_r2.rst",
            category="COSMIC",
        ),
        decomposition=report(
            f"{RESULTS}/cosmic/figures/variance_decomposition.png",
            caption="../report/cosmic_variance.rst",
            category="COSMIC",
        ),
        confusion=f"{RESULTS}/cosmic/cell_type_confusion.tsv",
        confusion_figure=report(
            f"{RESULTS}/cosmic/figures/cell_type_confusion.png",
            caption="../report/cosmic_cell_types.rst",
            category="COSMIC",
        ),
    log:
        f"{RESULTS}/logs/cosmic.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        cosmic=config["cosmic"],
        truth=DEMO_DIR if DEMO else None,
        samples=list(SAMPLES.index) if not MORPHOLOGY_TABLES else [],
        first_image=FIRST_IMAGE,
    script:
        "../scripts/cosmic_model.py"
