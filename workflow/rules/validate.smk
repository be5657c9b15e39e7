rule validate_trace:
    input:
        source=trace_source,
    output:
        report=report(
            "results/validation/{trace}.json",
            caption="../report/validation_report.rst",
            category="Validation",
            subcategory="Validation reports",
            labels={"trace": "{trace}"},
        ),
        invalid=report(
            "results/validation/{trace}.invalid.csv",
            caption="../report/validation_invalid.rst",
            category="Validation",
            subcategory="Rejected rows",
            labels={"trace": "{trace}"},
        ),
        staged=temp("results/staged/{trace}.arrow"),
    log:
        "results/logs/validate/{trace}.log",
        # Snakemake deletes a failed job's outputs but keeps its logs: the report and the
        # rejected rows are copied here, and moved here when the trace fails.
        report="results/logs/validate/{trace}.report.json",
        invalid="results/logs/validate/{trace}.invalid.csv",
    benchmark:
        "results/benchmarks/validate/{trace}.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: 1
    resources:
        # Streams the source in batch_bytes batches: ~600 MB peak from 0.03 to 330 MB of input.
        mem_mb=memory_mb(1024),
        runtime=runtime_minutes(10, 2),
    params:
        code=validation_code,
        source_fingerprint=source_fingerprint,
        source_format=lambda wc: trace_row(wc)["format"],
        timezone=lambda wc: trace_row(wc)["timezone"],
        settings=stable_params(config["validation"]),
    script:
        "../scripts/validate_trace.py"
