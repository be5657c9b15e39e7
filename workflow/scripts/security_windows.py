from tracelab.core.runner import run_stage
from tracelab.security.windows import write_windows

run_stage(
    snakemake,
    write_windows,
    trace=snakemake.wildcards.trace,
    packets_path=snakemake.input.packets,
    flows_path=snakemake.input.flows,
    http_path=snakemake.input.http,
    windows_path=snakemake.output.windows,
    settings=snakemake.params.settings,
)
