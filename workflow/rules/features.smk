rule trace_features:
    input:
        packets="results/packets/{trace}.parquet",
    output:
        summary="results/features/{trace}/summary.json",
        distributions="results/features/{trace}/distributions.parquet",
    params:
        code=code_version("features"),
        settings=stable_params(config["features"]),
    log:
        "results/logs/features/{trace}.log",
    benchmark:
        "results/benchmarks/features/{trace}.tsv"
    conda:
        "../envs/tracelab.yaml"
    script:
        "../scripts/trace_features.py"
