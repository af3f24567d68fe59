# Self-supervised nuclei foundation model, pretrained on all crops of all samples (objective
# `features` also predicts each nucleus's label-free region properties from its nuclei table).
# Several GPUs in one job (resources gpu > 1, see profiles/slurm) run under torchrun with DDP.


rule pretrain:
    input:
        crops=expand(f"{RESULTS}/nuclei/{{sample}}/crops.npy", sample=SAMPLES.index),
        tables=expand(
            f"{RESULTS}/nuclei/{{sample}}/nuclei.parquet", sample=SAMPLES.index
        ),
    output:
        model=f"{RESULTS}/models/foundation/model.pt",
        config=f"{RESULTS}/models/foundation/config.json",
    log:
        f"{RESULTS}/logs/pretrain.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=cosmic_resources.per_attempt(8000),
        runtime=cosmic_resources.per_attempt(240),
    params:
        foundation=config["foundation"],
    script:
        "../scripts/pretrain.py"
