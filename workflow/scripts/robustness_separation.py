from tracelab.core.runner import run_stage
from tracelab.robustness.separation import write_separation

run_stage(
    snakemake,
    write_separation,
    traces=snakemake.params.traces,
    labels=snakemake.params.labels,
    windows_paths=list(snakemake.input.windows),
    classes_csv=snakemake.input.classes,
    settings=snakemake.params.settings,
    table_csv=snakemake.output.table,
    table_md=snakemake.output.markdown,
    table_html=snakemake.output.html,
    figure_png=snakemake.output.figure,
)
