from tracelab.core.runner import run_stage
from tracelab.ingest.validate import validate_trace

run_stage(
    snakemake,
    validate_trace,
    trace=snakemake.wildcards.trace,
    source=snakemake.input.source,
    source_format=snakemake.params.source_format,
    staged_path=snakemake.output.staged,
    report_path=snakemake.output.report,
    invalid_path=snakemake.output.invalid,
    log_report_path=snakemake.params.kept_report,
    log_invalid_path=snakemake.params.kept_invalid,
    timezone=snakemake.params.timezone,
    settings=snakemake.params.settings,
)
