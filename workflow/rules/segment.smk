# Nuclei segmentation: one job per image, scattered over the images of every sample. Samples
# whose sample-sheet row gives `masks` have each given mask checked and imported instead.


rule segment:
    input:
        unpack(segment_inputs),
    output:
        mask=f"{RESULTS}/segmentation/{{sample}}/{{image}}.mask.tif",
    log:
        f"{RESULTS}/logs/segment/{{sample}}/{{image}}.log",
    # on a cluster, many images per submitted job (group-components in profiles/slurm)
    group:
        "segment"
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        segmentation=segmentation_params,
        dna_channel=config["imaging"]["dna_channel"],
        z_projection=config["imaging"]["z_projection"],
        image_name=lambda wildcards: wildcards.image,
    script:
        "../scripts/segment.py"


# One nucleus diameter per sample, the run's reference unless the sample's scale differs
# (segmentation.nucleus_diameter: auto).
rule nucleus_diameter:
    input:
        unpack(nucleus_diameter_inputs),
    output:
        f"{RESULTS}/segmentation/{{sample}}/nucleus_diameter.json",
    log:
        f"{RESULTS}/logs/nucleus_diameter/{{sample}}.log",
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        dna_channel=config["imaging"]["dna_channel"],
        z_projection=config["imaging"]["z_projection"],
    script:
        "../scripts/nucleus_diameter.py"
