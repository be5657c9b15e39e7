from functools import partial

from tracelab.compare.security import compare_security
from tracelab.compare.traces import compare_traces
from tracelab.core.runner import run_steps

traces, labels = snakemake.params.traces, snakemake.params.labels
run_steps(
    snakemake,
    partial(
        compare_traces,
        traces=traces,
        labels=labels,
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
    ),
    partial(
        compare_security,
        traces=traces,
        labels=labels,
        windows_paths=list(snakemake.input.windows),
        hosts_paths=list(snakemake.input.hosts),
        flows_paths=list(snakemake.input.flows),
        http_paths=list(snakemake.input.http),
        features_csv=snakemake.output.features_csv,
        features_md=snakemake.output.features_md,
        features_html=snakemake.output.features_html,
        separability_png=snakemake.output.separability,
        fanout_png=snakemake.output.fanout,
        conn_states_png=snakemake.output.conn_states,
        scan_report_md=snakemake.output.scan_report,
        scan_report_html=snakemake.output.scan_report_html,
    ),
)
