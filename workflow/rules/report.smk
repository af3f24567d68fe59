# Report notebooks: papermill executes workflow/notebooks/<name>.ipynb with the run's paths and
# config, nbconvert renders it to HTML, and an index page links them.


rule report_notebook:
    input:
        unpack(report_inputs),
    output:
        f"{RESULTS}/reports/{{name}}.ipynb",
    log:
        f"{RESULTS}/logs/report/{{name}}.log",
    wildcard_constraints:
        name="|".join(REPORTS),
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=4000,
    params:
        parameters=report_parameters,
    script:
        "../scripts/report_notebook.py"


# Rendering an executed notebook to HTML takes seconds and little memory: on a cluster it runs
# on the submitting host rather than as one more queued job per report.
localrules:
    report_html,


rule report_html:
    input:
        f"{RESULTS}/reports/{{name}}.ipynb",
    output:
        f"{RESULTS}/reports/{{name}}.html",
    log:
        f"{RESULTS}/logs/report/{{name}}.html.log",
    wildcard_constraints:
        name="|".join(REPORTS),
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/report_html.py"


localrules:
    report_index,


rule report_index:
    input:
        expand(f"{RESULTS}/reports/{{name}}.html", name=REPORTS),
    output:
        f"{RESULTS}/reports/index.html",
    log:
        f"{RESULTS}/logs/report/index.log",
    conda:
        "../envs/report.yaml"
    params:
        titles=REPORTS,
    script:
        "../scripts/report_index.py"
