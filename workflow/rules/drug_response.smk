# Treated vs control and resistant vs responsive cells in both modalities: differential
# expression, morphology tests, classifiers, and morphology-associated genes of resistance.


rule drug_response:
    input:
        cohort=f"{RESULTS}/paired/cohort.h5ad",
        variance=f"{RESULTS}/cosmic/variance_decomposition.tsv",
        truth=f"{DEMO_DIR}/genes.tsv" if DEMO else [],
    output:
        summary=f"{RESULTS}/analysis/drug_response/summary.json",
        de_treatment=f"{RESULTS}/analysis/drug_response/de_treatment.tsv",
        de_response=f"{RESULTS}/analysis/drug_response/de_response.tsv",
        morphology=f"{RESULTS}/analysis/drug_response/morphology_tests.tsv",
        classifiers=f"{RESULTS}/analysis/drug_response/classifiers.tsv",
        genes=f"{RESULTS}/analysis/drug_response/morphology_associated_genes.tsv",
        figures=report(
            expand(
                f"{RESULTS}/analysis/drug_response/figures/{{figure}}.png",
                figure=DRUG_RESPONSE_FIGURES,
            ),
            caption="../report/drug_response.rst",
            category="Drug response",
        ),
        captions=expand(
            f"{RESULTS}/analysis/drug_response/figures/{{figure}}.txt",
            figure=DRUG_RESPONSE_FIGURES,
        ),
    log:
        f"{RESULTS}/logs/drug_response.log",
    benchmark:
        f"{RESULTS}/benchmarks/drug_response.tsv"
    conda:
        "../envs/rna.yaml"
    resources:
        mem_mb=cosmic_resources.from_cohort_size("cohort", 2000, 10, floor=8000),
    params:
        drug_response=config["drug_response"],
        truth=lambda wildcards, input: (str(Path(input.truth).parent) if DEMO else None),
    script:
        "../scripts/drug_response.py"
