# Nuclei segmentation: one job per image, scattered over the images of every sample.


rule segment:
    input:
        unpack(segment_inputs),
    output:
        mask=f"{RESULTS}/segmentation/{{sample}}/{{image}}.mask.tif",
    log:
        f"{RESULTS}/logs/segment/{{sample}}/{{image}}.log",
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        segmentation=config["segmentation"],
        dna_channel=config["imaging"]["dna_channel"],
        z_projection=config["imaging"]["z_projection"],
        image_name=lambda wildcards: wildcards.image,
    script:
        "../scripts/segment.py"
