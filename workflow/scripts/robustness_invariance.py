from tracelab.core.runner import run_stage
from tracelab.robustness.invariance import write_invariance

run_stage(
    snakemake,
    write_invariance,
    traces=snakemake.params.traces,
    windows_paths=list(snakemake.input.windows),
    variants=snakemake.params.variants,
    variant_windows_paths=list(snakemake.input.variant_windows),
    record_paths=list(snakemake.input.records),
    format_pairs=snakemake.params.format_pairs,
    skipped_pairs=snakemake.params.skipped_pairs,
    settings=snakemake.params.settings,
    table_csv=snakemake.output.table,
    classes_csv=snakemake.output.classes,
    classes_md=snakemake.output.classes_md,
    classes_html=snakemake.output.classes_html,
    perturbations_md=snakemake.output.perturbations_md,
    perturbations_html=snakemake.output.perturbations_html,
    heatmap_png=snakemake.output.heatmap,
)
