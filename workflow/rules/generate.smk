# RNA -> nucleus images: a conditional diffusion U-Net trained in every evaluation split on that
# split's cells only (cosmic.generate); its nuclei are scored by `cosmic_split` as method `diffusion`.


if GENERATE_IMAGES:

    rule generate_split:
        input:
            cohort=f"{RESULTS}/paired/cohort.h5ad",
            crops=crops_inputs(),
        output:
            generated=generated_nuclei("{split}"),
            model=f"{RESULTS}/models/generate/split_{{split}}/model.pt",
            train_log=f"{RESULTS}/models/generate/split_{{split}}/train_log.tsv",
            summary=f"{RESULTS}/models/generate/split_{{split}}/summary.json",
        log:
            f"{RESULTS}/logs/generate_split/{{split}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/generate_split/{{split}}.tsv"
        # first in line: each split's scoring (cosmic_split) waits for its generated nuclei
        priority: 20
        conda:
            "../envs/torch.yaml"
        threads: 1
        resources:
            mem_mb=cosmic_resources.per_attempt(4000),
            runtime=cosmic_resources.per_attempt(120),
        params:
            cosmic=split_config(config["cosmic"]),
            generate=config["generate"],
            samples=list(SAMPLES.index),
        script:
            "../scripts/generate_split.py"

    rule generate_figures:
        input:
            unpack(generate_figures_inputs),
        output:
            **{
                name: report(
                    f"{GENERATE_FIGURE_DIR}/{name}.png",
                    caption=f"../report/{name}.rst",
                    category="COSMIC",
                )
                for name in layout.GENERATE_FIGURES
            },
            captions=[
                f"{GENERATE_FIGURE_DIR}/{name}.txt" for name in layout.GENERATE_FIGURES
            ],
        log:
            f"{RESULTS}/logs/generate_figures.log",
        conda:
            "../envs/torch.yaml"
        threads: 1
        resources:
            mem_mb=cosmic_resources.per_attempt(4000),
            runtime=cosmic_resources.per_attempt(30),
        params:
            cosmic=split_config(config["cosmic"]),
            dna_channel=config["imaging"]["dna_channel"],
            samples=list(SAMPLES.index),
        script:
            "../scripts/generate_figures.py"
