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
    log:
        "results/logs/security/shards/{trace}/{shards}/{shard}.log",
    benchmark:
        "results/benchmarks/security/shards/{trace}/{shards}/{shard}.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: CONNECTION_THREADS
    resources:
        # From the shard's packets, not the trace's: about 1 MB a thousand packets up to one
        # partition a thread (security_connections), and 60 s a million packets (5x the
        # measured rate).
        mem_mb=lambda wc, attempt: attempt
        * (
            512
            + CONNECTION_THREADS
            * min(shard_packets(wc), config["security"]["flows"]["partition_packets"])
            // 1000
        ),
        runtime=lambda wc, attempt: attempt * math.ceil(10 + shard_packets(wc) / 1_000_000),
    params:
        code=rule_code("security_connections_shard"),
        settings=stable_params(config["security"]["flows"]),
    script:
        "../scripts/security_connections_shard.py"
