from functools import partial

from tracelab.core.runner import run_steps
from tracelab.robustness.invariance import write_invariance
from tracelab.robustness.separation import write_separation
from tracelab.robustness.transfer import write_transfer

windows_paths = list(snakemake.input.windows)
settings = snakemake.params.settings
run_steps(
    snakemake,
    partial(
        write_invariance,
        traces=snakemake.params.traces,
        windows_paths=windows_paths,
        variants=snakemake.params.variants,
        variant_windows_paths=list(snakemake.input.variant_windows),
        baseline_paths=list(snakemake.input.baselines),
        record_paths=list(snakemake.input.records),
        format_pairs=snakemake.params.format_pairs,
        skipped_pairs=snakemake.params.skipped_pairs,
        settings=settings,
        table_csv=snakemake.output.invariance,
        classes_csv=snakemake.output.classes,
        classes_md=snakemake.output.classes_md,
        classes_html=snakemake.output.classes_html,
        perturbations_md=snakemake.output.perturbations_md,
        perturbations_html=snakemake.output.perturbations_html,
        heatmap_png=snakemake.output.invariance_png,
    ),
    partial(
        write_separation,
        traces=snakemake.params.traces,
        labels=snakemake.params.labels,
        windows_paths=windows_paths,
        classes_csv=snakemake.output.classes,
        settings=settings,
        table_csv=snakemake.output.separation,
        table_md=snakemake.output.separation_md,
        table_html=snakemake.output.separation_html,
        figure_png=snakemake.output.separation_png,
    ),
    partial(
        write_transfer,
        traces=snakemake.params.traces,
        labels=snakemake.params.labels,
        windows_paths=windows_paths,
        format_pairs=snakemake.params.format_pairs,
        classes_csv=snakemake.output.classes,
        settings=settings,
        table_csv=snakemake.output.transfer,
        table_md=snakemake.output.transfer_md,
        table_html=snakemake.output.transfer_html,
        figure_png=snakemake.output.transfer_png,
        answer_png=snakemake.output.answer_png,
        answer_md=snakemake.output.answer_md,
    ),
)
