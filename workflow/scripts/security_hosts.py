from tracelab.core.runner import run_stage
from tracelab.security.security_hosts import write_hosts

run_stage(
    snakemake,
    write_hosts,
    trace=snakemake.wildcards.trace,
    flows_path=snakemake.input.flows,
    hosts_path=snakemake.output.hosts,
    settings=snakemake.params.settings,
)
