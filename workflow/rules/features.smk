rule trace_features:
    input:
        packets=rules.normalize_trace.output.packets,
        validation=rules.validate_trace.output.report,
        # Rows without ports are counted in the connection that stage placed them in.
        placements=rules.security_connections.output.placements,
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
        endpoints="results/features/{trace}/endpoints.parquet",
        conversations="results/features/{trace}/conversations.parquet",
        hierarchy="results/features/{trace}/protocol_hierarchy.parquet",
        html=report(
            "results/features/{trace}/statistics.html",
            caption="../report/trace_statistics.rst",
            category="Per trace",
            subcategory="Summaries and statistics",
            labels={"trace": "{trace}"},
        ),
    log:
        "results/logs/features/{trace}.log",
    benchmark:
        "results/benchmarks/features/{trace}.tsv"
    conda:
        "../envs/tracelab.yaml"
    # One thread: a second totals a large trace's statistics partitions only ~15 % sooner (10M
    # packets: 7.1-7.8 -> 6.3-6.5 s) and holds a core the trace's hosts, windows or robustness
    # copies could use (10M, whole run at --cores 2: 52.6 -> 50.0 s).
    threads: 1
    resources:
        mem_mb=features_memory_mb,
        runtime=runtime_minutes(10, 2),
    params:
        code=rule_code("trace_features"),
        settings=stable_params(config["features"]),
    script:
        "../scripts/trace_features.py"
