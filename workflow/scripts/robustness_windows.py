from tracelab.core.runner import run_stage
from tracelab.robustness.robustness_windows import write_variant

run_stage(
    snakemake,
    write_variant,
    trace=snakemake.wildcards.trace,
    perturbation=snakemake.wildcards.perturbation,
    packets_path=snakemake.input.packets,
    perturbed_path=snakemake.output.packets,
    flows_path=snakemake.output.flows,
    http_path=snakemake.output.http,
    conn_log_path=snakemake.output.conn_log,
    windows_path=snakemake.output.windows,
    record_path=snakemake.output.record,
    params=snakemake.params.perturbation_settings,
    seed=snakemake.params.seed,
    settings=snakemake.params.settings,
)
