# Nuclei segmentation: one job per image, scattered over the images of every sample. Samples
# whose sample-sheet row gives `masks` have each given mask checked and imported instead.


# The pairing table's positions split into one small file per image (pairing.split_merged_nuclei),
# so each segment job reads only its own rows. A file is rewritten only when its rows change and the
# folder is not emptied before the job (`update`), so an edited row reruns only its image's
# segmentation. A checkpoint: the segment jobs are re-planned once it has run (a dry run lists all
# of the sample's images as to be redone while the split is pending).
checkpoint pairing_by_image:
    input:
        pairing=pairing_table,
    output:
        folder=update(directory(f"{RESULTS}/segmentation/{{sample}}/pairing_by_image")),
    log:
        f"{RESULTS}/logs/pairing_by_image/{{sample}}.log",
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=cosmic_resources.pairing_by_image_mem_mb,
    params:
        image_names=lambda wildcards: list(IMAGES[wildcards.sample]),
    script:
        "../scripts/pairing_by_image.py"


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
        mem_mb=cosmic_resources.segment_mem_mb,
        runtime=cosmic_resources.segment_runtime,
    params:
        segmentation=segmentation_params,
        dna_channel=config["imaging"]["dna_channel"],
        z_projection=config["imaging"]["z_projection"],
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
        mem_mb=cosmic_resources.per_attempt(2000),
        runtime=cosmic_resources.per_attempt(20),
    params:
        dna_channel=config["imaging"]["dna_channel"],
        z_projection=config["imaging"]["z_projection"],
    script:
        "../scripts/nucleus_diameter.py"
