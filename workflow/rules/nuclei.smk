# Per-nucleus table (region-property features, QC flags) and crop bank, one job per sample.


rule nuclei:
    input:
        images=sample_images,
        masks=sample_masks,
        diameter=reference_diameter_input,
    output:
        table=f"{RESULTS}/nuclei/{{sample}}/nuclei.parquet",
        crops=f"{RESULTS}/nuclei/{{sample}}/crops.npy",
    log:
        f"{RESULTS}/logs/nuclei/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/nuclei/{{sample}}.tsv"
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=cosmic_resources.nuclei_mem_mb,
        runtime=cosmic_resources.nuclei_runtime,
    params:
        image_names=lambda wildcards: list(IMAGES[wildcards.sample]),
        segmentation=config["segmentation"],
        nuclei=config["nuclei"],
        dna_channel=config["imaging"]["dna_channel"],
        z_projection=config["imaging"]["z_projection"],
        channel_order=CHANNEL_ORDER,
    script:
        "../scripts/nuclei.py"
