checkpoint normalize_trace:
    input:
        staged=rules.validate_trace.output.staged,
        source=trace_source,
    output:
        packets="results/packets/{trace}.parquet",
    log:
        "results/logs/normalize/{trace}.log",
    benchmark:
        "results/benchmarks/normalize/{trace}.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: 2
    resources:
        mem_mb=memory_mb(384, 16, cap=row_group_memory_mb(config["normalize"]["row_group_rows"])),
        runtime=runtime_minutes(10, 1),
    params:
        code=rule_code("normalize_trace"),
        source_format=lambda wc: trace_row(wc)["format"],
        source_sha256=lambda wc: source_fingerprint(wc).removeprefix("sha256:"),
        row_group_rows=config["normalize"]["row_group_rows"],
    script:
        "../scripts/normalize_trace.py"
