# Security features per trace (connections, scan verdicts, HTTP/Log4Shell, window matrix) and
# their comparison across traces. Each rule takes only its own config section, so changing a
# threshold reruns that stage and the comparison, never validation or normalization.


rule security_connections:
    input:
        unpack(shard_outputs),
        packets=rules.normalize_trace.output.packets,
    output:
        flows="results/features/{trace}/flows.parquet",
        http="results/features/{trace}/http.parquet",
        conn_log="results/features/{trace}/conn.log",
    log:
        "results/logs/security/connections/{trace}.log",
    benchmark:
        "results/benchmarks/security/connections/{trace}.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: CONNECTION_THREADS
    resources:
        # Peak RSS grows ~25 MB a MB of packets up to one partition of the packet table a thread,
        # then stays flat: 1,482 MiB measured at 10M packets (two 1M-packet partitions at once).
        mem_mb=memory_mb(
            512,
            28,
            cap=512
            + CONNECTION_THREADS * config["security"]["flows"]["partition_packets"] // 1000,
        ),
        runtime=runtime_minutes(10, 4),
    params:
        code=rule_code("security_connections"),
        settings=stable_params(config["security"]["flows"]),
        shards=trace_shards,
    script:
        "../scripts/security_connections.py"


rule security_hosts:
    input:
        flows=rules.security_connections.output.flows,
    output:
        hosts="results/features/{trace}/hosts.parquet",
    log:
        "results/logs/security/hosts/{trace}.log",
    benchmark:
        "results/benchmarks/security/hosts/{trace}.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(384, 16),
        runtime=runtime_minutes(10, 1),
    params:
        code=rule_code("security_hosts"),
        settings=stable_params(config["security"]["scan"]),
    script:
        "../scripts/security_hosts.py"


rule security_windows:
    input:
        packets=rules.normalize_trace.output.packets,
        flows=rules.security_connections.output.flows,
        http=rules.security_connections.output.http,
    output:
        windows="results/features/{trace}/windows.parquet",
    log:
        "results/logs/security/windows/{trace}.log",
    benchmark:
        "results/benchmarks/security/windows/{trace}.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(384, 16),
        runtime=runtime_minutes(10, 1),
    params:
        code=rule_code("security_windows"),
        settings=stable_params(config["security"]["windows"]),
    script:
        "../scripts/security_windows.py"


rule security_compare:
    input:
        windows=expand(rules.security_windows.output.windows, trace=TRACES.index),
        hosts=expand(rules.security_hosts.output.hosts, trace=TRACES.index),
        flows=expand(rules.security_connections.output.flows, trace=TRACES.index),
        http=expand(rules.security_connections.output.http, trace=TRACES.index),
    output:
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
        "results/logs/security/compare.log",
    benchmark:
        "results/benchmarks/security/compare.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(512, 4),
        runtime=runtime_minutes(15, 1),
    params:
        code=rule_code("security_compare"),
        traces=list(TRACES.index),
        labels=trace_labels(),
    script:
        "../scripts/security_compare.py"
