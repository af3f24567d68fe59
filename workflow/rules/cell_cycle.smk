# Cell cycle read from RNA (Tirosh scoring, continuous position) and from morphology (DNA
# content, nuclear area, features), their agreement, and nuclei along the RNA-defined cycle.
# position_agreement.tsv: the position and the rna_pc_angle baseline against the reference
# angle / demo truth, with bootstrap intervals (header only without a reference).


rule cell_cycle:
    input:
        cohort=f"{RESULTS}/paired/cohort.h5ad",
        predictions=f"{RESULTS}/cosmic/predictions.h5ad",
        generated_images=GENERATED_IMAGES or [],
        crops=crops_inputs,
        truth=f"{DEMO_DIR}/ground_truth.tsv" if DEMO else [],
    output:
        summary=f"{RESULTS}/analysis/cell_cycle/summary.json",
        cells=f"{RESULTS}/analysis/cell_cycle/cells.tsv",
        confusion=f"{RESULTS}/analysis/cell_cycle/confusion.tsv",
        agreement=f"{RESULTS}/analysis/cell_cycle/position_agreement.tsv",
        figures=report(
            expand(
                f"{RESULTS}/analysis/cell_cycle/figures/{{figure}}.png",
                figure=CELL_CYCLE_FIGURES,
            ),
            caption="../report/cell_cycle.rst",
            category="Cell cycle",
        ),
        captions=expand(
            f"{RESULTS}/analysis/cell_cycle/figures/{{figure}}.txt",
            figure=CELL_CYCLE_FIGURES,
        ),
    log:
        f"{RESULTS}/logs/cell_cycle.log",
    benchmark:
        f"{RESULTS}/benchmarks/cell_cycle.tsv"
    conda:
        "../envs/rna.yaml"
    resources:
        mem_mb=cosmic_resources.from_cohort_size("cohort", 2000, 10, floor=8000),
    params:
        cell_cycle=config["cell_cycle"],
        samples=list(SAMPLES.index) if not MORPHOLOGY_TABLES else [],
        truth=lambda wildcards, input: (str(Path(input.truth).parent) if DEMO else None),
        first_image=FIRST_IMAGE,
        dna_channel=config["imaging"]["dna_channel"],
    script:
        "../scripts/cell_cycle.py"
