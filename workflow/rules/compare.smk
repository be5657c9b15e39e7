rule compare_traces:
    input:
        summaries=expand("results/features/{trace}/summary.json", trace=TRACES.index),
        distributions=expand(
            "results/features/{trace}/distributions.parquet", trace=TRACES.index
        ),
    output:
        table="results/compare/summary.csv",
        markdown="results/compare/summary.md",
        iat_cdf="results/compare/iat_cdf.png",
        length_cdf="results/compare/length_cdf.png",
        protocols="results/compare/protocols.png",
        rate="results/compare/rate.png",
        destinations="results/compare/destinations.png",
    params:
        code=code_version("compare", "safe_text"),
        traces=list(TRACES.index),
        labels=trace_labels(),
    log:
        "results/logs/compare/compare_traces.log",
    benchmark:
        "results/benchmarks/compare/compare_traces.tsv"
    conda:
        "../envs/tracelab.yaml"
    script:
        "../scripts/compare_traces.py"
