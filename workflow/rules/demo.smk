# Embedded IRIS-like demo dataset with known ground truth (only when `demo: true`).


rule demo:
    output:
        demo_outputs(),
        counts=[directory(f"{DEMO_DIR}/{s}/counts") for s in SAMPLES.index],
    log:
        f"{RESULTS}/logs/demo.log",
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=config["demo_dataset"],
        outdir=lambda wildcards, output: str(Path(output[0]).parent),
    script:
        "../scripts/demo.py"
