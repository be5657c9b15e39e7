from tracelab.core.runner import run_stage
from tracelab.features.summary import trace_features

run_stage(
    snakemake,
    trace_features,
    trace=snakemake.wildcards.trace,
    packets_path=snakemake.input.packets,
    summary_path=snakemake.output.summary,
    distributions_path=snakemake.output.distributions,
    settings=snakemake.params.settings,
)
