from tracelab.core.runner import run_stage
from tracelab.security.shards import ShardOutputs, connections_stage

run_stage(
    snakemake,
    connections_stage,
    trace=snakemake.wildcards.trace,
    packets_path=snakemake.input.packets,
    shards=ShardOutputs(
        flows=list(snakemake.input.get("shard_flows", [])),
        http=list(snakemake.input.get("shard_http", [])),
        placements=list(snakemake.input.get("shard_placements", [])),
    ),
    flows_path=snakemake.output.flows,
    http_path=snakemake.output.http,
    conn_log_path=snakemake.output.conn_log,
    placements_path=snakemake.output.placements,
    settings=snakemake.params.settings,
    threads=snakemake.threads,
)
