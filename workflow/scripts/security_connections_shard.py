from tracelab.core.runner import run_stage
from tracelab.security.shards import write_shard_connections

run_stage(
    snakemake,
    write_shard_connections,
    trace=snakemake.wildcards.trace,
    directory=snakemake.input.shards,
    shard=int(snakemake.wildcards.shard),
    flows_path=snakemake.output.flows,
    http_path=snakemake.output.http,
    placements_path=snakemake.output.placements,
    settings=snakemake.params.settings,
    threads=snakemake.threads,
)
