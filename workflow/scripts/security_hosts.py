from tracelab.core.runner import run_stage
from tracelab.security.hosts import write_hosts

run_stage(
    snakemake,
    write_hosts,
    trace=snakemake.wildcards.trace,
    flows_path=snakemake.input.flows,
    hosts_path=snakemake.output.hosts,
    settings=snakemake.params.settings,
)
