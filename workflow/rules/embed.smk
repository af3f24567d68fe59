# One foundation-model embedding per nucleus, in crop-bank order.


rule embed:
    input:
        model=f"{RESULTS}/models/foundation/model.pt",
        crops=f"{RESULTS}/nuclei/{{sample}}/crops.npy",
    output:
        f"{RESULTS}/nuclei/{{sample}}/embedding.npy",
    log:
        f"{RESULTS}/logs/embed/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed/{{sample}}.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=cosmic_resources.embed_mem_mb,
        runtime=cosmic_resources.embed_runtime,
    params:
        batch_size=256,
    script:
        "../scripts/embed.py"
