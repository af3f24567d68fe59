# COSMIC: link single-nucleus morphology and gene expression in paired single cells.
# Usage: see README.md; every configuration key is documented in config/README.md.


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/nuclei.smk"
include: "workflow/rules/rna.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/pair.smk"
include: "workflow/rules/cosmic.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/cell_cycle.smk"
include: "workflow/rules/drug_response.smk"
include: "workflow/rules/report.smk"


if DEMO:

    include: "workflow/rules/demo.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
