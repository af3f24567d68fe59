# Embedded IRIS-like demo dataset with known ground truth, and the scoring of the
# workflow's stages against that truth (only when `demo: true`).


rule demo:
    output:
        demo_outputs(),
        counts=[directory(f"{DEMO_DIR}/{s}/counts") for s in SAMPLES.index],
    log:
        f"{RESULTS}/logs/demo.log",
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=cosmic_resources.per_attempt(4000),
        runtime=cosmic_resources.per_attempt(30),
    params:
        settings=config["demo_dataset"],
        outdir=lambda wildcards, output: str(Path(output[0]).parent),
    script:
        "../scripts/demo.py"


rule segmentation_quality:
    input:
        masks=all_masks,
        truth=demo_truth_masks,
        images=[path for images in IMAGES.values() for path in images.values()],
    output:
        table=f"{RESULTS}/qc/segmentation_quality.tsv",
        figure=report(
            f"{RESULTS}/qc/segmentation_overlays.png",
            caption="../report/segmentation_overlays.rst",
            category="Quality control",
        ),
    log:
        f"{RESULTS}/logs/segmentation_quality.log",
    conda:
        "../envs/imaging.yaml"
    script:
        "../scripts/segmentation_quality.py"


rule pairing_accuracy:
    input:
        cohort=f"{RESULTS}/paired/cohort.h5ad",
        truth=f"{DEMO_DIR}/ground_truth.tsv",
        masks=all_masks,
        truth_masks=demo_truth_masks,
    output:
        f"{RESULTS}/qc/pairing_accuracy.tsv",
    log:
        f"{RESULTS}/logs/pairing_accuracy.log",
    conda:
        "../envs/rna.yaml"
    script:
        "../scripts/pairing_accuracy.py"


rule foundation_evaluation:
    input:
        model=f"{RESULTS}/models/foundation/model.pt",
        crops=expand(f"{RESULTS}/nuclei/{{sample}}/crops.npy", sample=SAMPLES.index),
        embeddings=expand(
            f"{RESULTS}/nuclei/{{sample}}/embedding.npy", sample=SAMPLES.index
        ),
        tables=expand(
            f"{RESULTS}/nuclei/{{sample}}/nuclei.parquet", sample=SAMPLES.index
        ),
        masks=all_masks,
        truth_masks=demo_truth_masks,
        truth=f"{DEMO_DIR}/ground_truth.tsv",
    output:
        probes=f"{RESULTS}/qc/foundation_probes.tsv",
        reconstructions=report(
            f"{RESULTS}/qc/foundation_reconstructions.png",
            caption="../report/foundation_reconstructions.rst",
            category="Foundation model",
        ),
        umap=report(
            f"{RESULTS}/qc/foundation_umap.png",
            caption="../report/foundation_umap.rst",
            category="Foundation model",
        ),
    log:
        f"{RESULTS}/logs/foundation_evaluation.log",
    conda:
        "../envs/torch.yaml"
    params:
        foundation=config["foundation"],
        seed=config["seed"],
    script:
        "../scripts/foundation_evaluation.py"
