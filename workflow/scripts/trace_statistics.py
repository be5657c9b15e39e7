from tracelab.core.runner import run_stage
from tracelab.features.statistics import trace_statistics

run_stage(
    snakemake,
    trace_statistics,
    trace=snakemake.wildcards.trace,
    packets_path=snakemake.input.packets,
    summary_path=snakemake.input.summary,
    validation_path=snakemake.input.validation,
    endpoints_path=snakemake.output.endpoints,
    conversations_path=snakemake.output.conversations,
    hierarchy_path=snakemake.output.hierarchy,
    html_path=snakemake.output.html,
    flows=snakemake.params.flows,
)
