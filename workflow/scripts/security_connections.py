from tracelab.core.runner import run_stage
from tracelab.security.security_connections import write_connections

run_stage(
    snakemake,
    write_connections,
    trace=snakemake.wildcards.trace,
    packets_path=snakemake.input.packets,
    flows_path=snakemake.output.flows,
    http_path=snakemake.output.http,
    conn_log_path=snakemake.output.conn_log,
    settings=snakemake.params.settings,
)
