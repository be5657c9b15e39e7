from tracelab.core.runner import run_stage
from tracelab.security.hosts import hosts_stage

run_stage(
    snakemake,
    hosts_stage,
    trace=snakemake.wildcards.trace,
    packets_path=snakemake.input.packets,
    flows_path=snakemake.input.flows,
    http_path=snakemake.input.http,
    hosts_path=snakemake.output.hosts,
    notice_log_path=snakemake.output.notice_log,
    http_log_path=snakemake.output.http_log,
    dns_log_path=snakemake.output.dns_log,
    settings=snakemake.params.settings,
)
