# Repeated held-out evaluation of COSMIC against the baselines (cosmic.evaluation): one job per
# split, then the summary over splits.


# Repeated held-out evaluation: split 0 scores the `cosmic` rule's model; each further split
# refits COSMIC (resumable state in models/cosmic/splits/<split>/).
rule cosmic_split:
    input:
        unpack(cosmic_split_inputs),
    output:
        table=split_table("{split}"),
    log:
        f"{RESULTS}/logs/cosmic_split/{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cosmic_split/{{split}}.tsv"
    # the evaluation summary, the last job of a run, waits for every split: ahead of the figures and reports
    priority: 10
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=cosmic_resources.from_cohort_size("cohort", 2000, 10, floor=8000),
        runtime=cosmic_resources.from_cohort_size("cohort", 120, 0.2),
    params:
        cosmic=config["cosmic"],
        model_dir=lambda wildcards: f"{RESULTS}/models/cosmic/splits/{wildcards.split}",
        dna_channel=config["imaging"]["dna_channel"],
        samples=list(SAMPLES.index),
    script:
        "../scripts/cosmic_split.py"


localrules:
    cosmic_evaluation,


rule cosmic_evaluation:
    input:
        tables=[split_table(split) for split in range(N_SPLITS)],
        cell_cycle=f"{RESULTS}/analysis/cell_cycle/position_agreement.tsv",
    output:
        summary=f"{RESULTS}/cosmic/evaluation/summary.tsv",
        paired=f"{RESULTS}/cosmic/evaluation/paired.tsv",
        figure=report(
            f"{RESULTS}/cosmic/evaluation/figures/paired_differences.png",
            caption="../report/cosmic_evaluation.rst",
            category="COSMIC",
        ),
        caption=f"{RESULTS}/cosmic/evaluation/figures/paired_differences.txt",
    log:
        f"{RESULTS}/logs/cosmic_evaluation.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=cosmic_resources.per_attempt(2000),
    script:
        "../scripts/cosmic_evaluation.py"
