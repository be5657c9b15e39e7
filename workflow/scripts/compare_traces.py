from tracelab.compare.traces import compare_traces
from tracelab.core.runner import run_stage

run_stage(
    snakemake,
    compare_traces,
    traces=snakemake.params.traces,
    labels=snakemake.params.labels,
    summary_paths=list(snakemake.input.summaries),
    distribution_paths=list(snakemake.input.distributions),
    table_path=snakemake.output.table,
    markdown_path=snakemake.output.markdown,
    html_path=snakemake.output.html,
    iat_cdf_path=snakemake.output.iat_cdf,
    length_cdf_path=snakemake.output.length_cdf,
    protocols_path=snakemake.output.protocols,
    rate_path=snakemake.output.rate,
    destinations_path=snakemake.output.destinations,
)
