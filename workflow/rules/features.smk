rule trace_features:
    input:
        packets=rules.normalize_trace.output.packets,
    output:
        summary=report(
            "results/features/{trace}/summary.json",
            caption="../report/trace_summary.rst",
            category="Per trace",
            subcategory="Summaries",
            labels={"trace": "{trace}"},
        ),
        distributions=report(
            "results/features/{trace}/distributions.parquet",
            caption="../report/trace_distributions.rst",
            category="Per trace",
            subcategory="Distributions",
            labels={"trace": "{trace}"},
        ),
    params:
        code=rule_code("trace_features"),
        settings=stable_params(config["features"]),
    threads: 1
    resources:
        mem_mb=memory_mb(256, 8),
        runtime=runtime_minutes(10, 1),
    log:
        "results/logs/features/{trace}.log",
    benchmark:
        "results/benchmarks/features/{trace}.tsv"
    conda:
        "../envs/tracelab.yaml"
    script:
        "../scripts/trace_features.py"
