rule validate_trace:
    input:
        source=trace_source,
    output:
        report="results/validation/{trace}.json",
        invalid="results/validation/{trace}.invalid.csv",
        staged=temp("results/staged/{trace}.parquet"),
    params:
        code=validation_code_version,
        source_format=lambda wc: trace_row(wc)["format"],
        timezone=lambda wc: trace_row(wc)["timezone"],
        settings=stable_params(config["validation"]),
    log:
        "results/logs/validate/{trace}.log",
    benchmark:
        "results/benchmarks/validate/{trace}.tsv"
    conda:
        "../envs/tracelab.yaml"
    script:
        "../scripts/validate_trace.py"
