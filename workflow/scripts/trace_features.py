from functools import partial

from tracelab.core.runner import run_steps
from tracelab.features.statistics import trace_statistics
from tracelab.features.summary import trace_features

run_steps(
    snakemake,
    partial(
        trace_features,
        trace=snakemake.wildcards.trace,
        packets_path=snakemake.input.packets,
        summary_path=snakemake.output.summary,
        distributions_path=snakemake.output.distributions,
        settings=snakemake.params.settings,
    ),
    partial(
        trace_statistics,
        trace=snakemake.wildcards.trace,
        packets_path=snakemake.input.packets,
        placements_path=snakemake.input.placements,
        summary_path=snakemake.output.summary,
        validation_path=snakemake.input.validation,
        endpoints_path=snakemake.output.endpoints,
        conversations_path=snakemake.output.conversations,
        hierarchy_path=snakemake.output.hierarchy,
        html_path=snakemake.output.html,
        threads=snakemake.threads,
    ),
)
