from tracelab.core.runner import run_stage
from tracelab.robustness.variants import write_variants

run_stage(
    snakemake,
    write_variants,
    trace=snakemake.wildcards.trace,
    perturbations=snakemake.params.perturbations,
    packets_path=snakemake.input.packets,
    flows_path=snakemake.input.get("flows"),
    http_path=snakemake.input.get("http"),
    original_windows_path=snakemake.input.get("windows"),
    windows_paths=list(snakemake.output.windows),
    baseline_path=snakemake.output.baseline,
    records_path=snakemake.output.records,
    parameters=snakemake.params.parameters,
    seed=snakemake.params.seed,
    sample_packets=snakemake.params.sample_packets,
    settings=snakemake.params.settings,
)
