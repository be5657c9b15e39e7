# Ingest: validation (pandera checks, invalid rows put aside) and normalization to Parquet.


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
    benchmark:
        "results/benchmarks/validate/{trace}.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: validation_threads
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
        # Snakemake deletes a failed job's outputs: the report and the rejected rows are copied
        # here, and moved here when the trace fails. Not `log:` files, which Snakemake creates
        # empty when a job could not write them (a full disk).
        kept_report="results/logs/validate/{trace}.report.json",
        kept_invalid="results/logs/validate/{trace}.invalid.csv",
    script:
        "../scripts/validate_trace.py"


checkpoint normalize_trace:
    input:
        staged=rules.validate_trace.output.staged,
        source=trace_source,
    output:
        packets="results/packets/{trace}.parquet",
    log:
        "results/logs/normalize/{trace}.log",
    benchmark:
        "results/benchmarks/normalize/{trace}.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: 2
    resources:
        mem_mb=memory_mb(384, 16, cap=row_group_memory_mb(config["normalize"]["row_group_rows"])),
        runtime=runtime_minutes(10, 1),
    params:
        code=rule_code("normalize_trace"),
        source_format=lambda wc: trace_row(wc)["format"],
        source_sha256=lambda wc: source_fingerprint(wc).removeprefix("sha256:"),
        row_group_rows=config["normalize"]["row_group_rows"],
    script:
        "../scripts/normalize_trace.py"
