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
        placements="results/features/{trace}/placements.parquet",
    log:
        "results/logs/security/connections/{trace}.log",
    benchmark:
        "results/benchmarks/security/connections/{trace}.tsv"
    # The longest step of a trace's critical path (hosts, windows, statistics wait for it):
    # started before a one-thread job ready beside it (a sampled trace's robustness copies),
    # which would otherwise hold one of two cores while it waits for both.
    priority: 1
    conda:
        "../envs/tracelab.yaml"
    threads: connection_threads
    resources:
        mem_mb=lambda wc, attempt: attempt * connection_memory_mb(known_packets(wc.trace)),
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
        http=rules.security_connections.output.http,
        packets=rules.normalize_trace.output.packets,
    output:
        hosts="results/features/{trace}/hosts.parquet",
        notice_log="results/features/{trace}/notice.log",
        http_log="results/features/{trace}/http.log",
        dns_log="results/features/{trace}/dns.log",
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


# A trace of more than sharding.packets_per_shard packets has its connection stage run as one
# job a shard (tracelab.security.shards): split the packet table by address pair, make each
# shard's connections, and merge them in the trace's security_connections job. The shard count
# comes from the packet table's row count (normalize_trace is a checkpoint; validation's
# outputs cannot serve, its staged table is temporary): `snakemake -n` shows the shard jobs once
# a trace has been normalized, and a new packets_per_shard reruns the connection jobs only
# where it changes a trace's shard count.


wildcard_constraints:
    shards=r"\d+",
    shard=r"\d+",


rule security_split_shards:
    input:
        packets=rules.normalize_trace.output.packets,
    output:
        shards=temp(directory("results/shards/{trace}/{shards}/packets")),
    log:
        "results/logs/security/shards/{trace}/{shards}/split.log",
    benchmark:
        "results/benchmarks/security/shards/{trace}/{shards}/split.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: 1
    resources:
        # One row group of the packet table at a time (~300 MiB peak at 131,072-row groups).
        mem_mb=memory_mb(512),
        runtime=runtime_minutes(10, 1),
    params:
        code=rule_code("security_split_shards"),
    script:
        "../scripts/security_split_shards.py"


rule security_connections_shard:
    input:
        shards=rules.security_split_shards.output.shards,
    output:
        flows=temp("results/shards/{trace}/{shards}/{shard}/flows.parquet"),
        http=temp("results/shards/{trace}/{shards}/{shard}/http.parquet"),
        placements=temp("results/shards/{trace}/{shards}/{shard}/placements.parquet"),
    log:
        "results/logs/security/shards/{trace}/{shards}/{shard}.log",
    benchmark:
        "results/benchmarks/security/shards/{trace}/{shards}/{shard}.tsv"
    # On the critical path, as security_connections.
    priority: 1
    conda:
        "../envs/tracelab.yaml"
    threads: CONNECTION_THREADS
    resources:
        # From the shard's packets, not the trace's; 60 s a million packets (5x the measured rate).
        mem_mb=lambda wc, attempt: attempt * connection_memory_mb(shard_packets(wc)),
        runtime=lambda wc, attempt: attempt * math.ceil(10 + shard_packets(wc) / 1_000_000),
    params:
        code=rule_code("security_connections_shard"),
        settings=stable_params(config["security"]["flows"]),
    script:
        "../scripts/security_connections_shard.py"
