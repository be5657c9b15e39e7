from tracelab.core.runner import run_stage
from tracelab.ingest.normalize import normalize_trace

run_stage(
    snakemake,
    normalize_trace,
    trace=snakemake.wildcards.trace,
    staged_path=snakemake.input.staged,
    source=snakemake.input.source,
    source_format=snakemake.params.source_format,
    packets_path=snakemake.output.packets,
    row_group_rows=snakemake.params.row_group_rows,
    threads=snakemake.threads,
    source_sha256=snakemake.params.source_sha256,
)
