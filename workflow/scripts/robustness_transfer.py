from tracelab.core.runner import run_stage
from tracelab.robustness.transfer import write_transfer

run_stage(
    snakemake,
    write_transfer,
    traces=snakemake.params.traces,
    labels=snakemake.params.labels,
    windows_paths=list(snakemake.input.windows),
    format_pairs=snakemake.params.format_pairs,
    classes_csv=snakemake.input.classes,
    settings=snakemake.params.settings,
    table_csv=snakemake.output.table,
    table_md=snakemake.output.markdown,
    table_html=snakemake.output.html,
    figure_png=snakemake.output.figure,
    answer_png=snakemake.output.answer,
    answer_md=snakemake.output.answer_md,
)
