rule compare_traces:
    input:
        summaries=expand(rules.trace_features.output.summary, trace=TRACES.index),
        distributions=expand(rules.trace_features.output.distributions, trace=TRACES.index),
        windows=expand(rules.security_windows.output.windows, trace=TRACES.index),
        hosts=expand(rules.security_hosts.output.hosts, trace=TRACES.index),
        flows=expand(rules.security_connections.output.flows, trace=TRACES.index),
        http=expand(rules.security_connections.output.http, trace=TRACES.index),
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
        features_csv=report(
            "results/compare/features.csv",
            caption="../report/security_features.rst",
            category="Security",
            subcategory="Window features",
            labels={"table": "window features", "format": "CSV"},
        ),
        features_md=report(
            "results/compare/features.md",
            caption="../report/security_features.rst",
            category="Security",
            subcategory="Window features",
            labels={"table": "window features", "format": "Markdown"},
        ),
        features_html=report(
            "results/compare/features.html",
            caption="../report/security_features.rst",
            category="Security",
            subcategory="Window features",
            labels={"table": "window features", "format": "HTML (shown here)"},
        ),
        separability=report(
            "results/compare/separability.png",
            caption="../report/security_separability.rst",
            category="Security",
            subcategory="Figures",
            labels={"figure": "feature separability"},
        ),
        fanout=report(
            "results/compare/fanout.png",
            caption="../report/security_fanout.rst",
            category="Security",
            subcategory="Figures",
            labels={"figure": "fan-out and failures per source"},
        ),
        conn_states=report(
            "results/compare/conn_states.png",
            caption="../report/security_conn_states.rst",
            category="Security",
            subcategory="Figures",
            labels={"figure": "connection states"},
        ),
        scan_report=report(
            "results/compare/scan_report.md",
            caption="../report/security_scan_report.rst",
            category="Security",
            subcategory="Scan report",
            labels={"table": "scan report", "format": "Markdown"},
        ),
        scan_report_html=report(
            "results/compare/scan_report.html",
            caption="../report/security_scan_report.rst",
            category="Security",
            subcategory="Scan report",
            labels={"table": "scan report", "format": "HTML (shown here)"},
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
        runtime=runtime_minutes(15, 2),
    params:
        code=rule_code("compare_traces"),
        traces=list(TRACES.index),
        labels=trace_labels(),
    script:
        "../scripts/compare_traces.py"
