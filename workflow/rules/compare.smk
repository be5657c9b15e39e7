rule compare_traces:
    input:
        summaries=expand(rules.trace_features.output.summary, trace=TRACES.index),
        distributions=expand(rules.trace_features.output.distributions, trace=TRACES.index),
    output:
        table=report(
            "results/compare/summary.csv",
            caption="../report/compare_summary.rst",
            category="Comparison",
            subcategory="Tables",
            labels={"table": "trace summary", "format": "CSV"},
        ),
        markdown=report(
            "results/compare/summary.md",
            caption="../report/compare_summary.rst",
            category="Comparison",
            subcategory="Tables",
            labels={"table": "trace summary", "format": "Markdown"},
        ),
        html=report(
            "results/compare/summary.html",
            caption="../report/compare_summary.rst",
            category="Comparison",
            subcategory="Tables",
            labels={"table": "trace summary", "format": "HTML (shown here)"},
        ),
        iat_cdf=report(
            "results/compare/iat_cdf.png",
            caption="../report/compare_iat_cdf.rst",
            category="Comparison",
            subcategory="Figures",
            labels={"figure": "inter-arrival time CDF"},
        ),
        length_cdf=report(
            "results/compare/length_cdf.png",
            caption="../report/compare_length_cdf.rst",
            category="Comparison",
            subcategory="Figures",
            labels={"figure": "frame length CDF"},
        ),
        protocols=report(
            "results/compare/protocols.png",
            caption="../report/compare_protocols.rst",
            category="Comparison",
            subcategory="Figures",
            labels={"figure": "protocol shares"},
        ),
        rate=report(
            "results/compare/rate.png",
            caption="../report/compare_rate.rst",
            category="Comparison",
            subcategory="Figures",
            labels={"figure": "packet rate over time"},
        ),
        destinations=report(
            "results/compare/destinations.png",
            caption="../report/compare_destinations.rst",
            category="Comparison",
            subcategory="Figures",
            labels={"figure": "distinct destinations over time"},
        ),
    log:
        "results/logs/compare/compare_traces.log",
    benchmark:
        "results/benchmarks/compare/compare_traces.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(768, 8),
        runtime=runtime_minutes(15, 1),
    params:
        code=rule_code("compare_traces"),
        traces=list(TRACES.index),
        labels=trace_labels(),
        rate_bin_s=config["features"]["rate_bin_s"],
    script:
        "../scripts/compare_traces.py"
