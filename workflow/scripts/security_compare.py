from tracelab.compare.security import compare_security
from tracelab.core.runner import run_stage

run_stage(
    snakemake,
    compare_security,
    traces=snakemake.params.traces,
    labels=snakemake.params.labels,
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
)
