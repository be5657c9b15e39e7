# Which window features survive a change of recording conditions. Every trace's packet table is
# perturbed (another hour, a cut, names toggled, a coarser clock, other client ports, a snap
# length), each copy goes through the same connection and window stages as the original, and
# the comparison measures how far each perturbation moves each feature, how well the features
# separate the labels (with block-bootstrap intervals), and whether detectors transfer to a
# capture they have not seen. Outputs in results/robustness/.
from tracelab.robustness.perturbations import PERTURBATIONS

ROBUSTNESS = config["robustness"]
unknown_perturbations = sorted(set(ROBUSTNESS["perturbations"]) - set(PERTURBATIONS))
if unknown_perturbations:
    raise WorkflowError(
        f"config robustness.perturbations: unknown {unknown_perturbations}; "
        f"registered: {sorted(PERTURBATIONS)}"
    )
# Export-format pairs whose two traces are both in the sheet; the others are named in the
# invariance table (a sheet without the bundled traces keeps the default config usable).
FORMAT_PAIRS = {
    trace: other
    for trace, other in ROBUSTNESS["format_pairs"].items()
    if trace in TRACES.index and other in TRACES.index
}
SKIPPED_PAIRS = [
    f"{trace} - {other}: not both in the trace sheet"
    for trace, other in ROBUSTNESS["format_pairs"].items()
    if trace not in FORMAT_PAIRS
]
VARIANTS = [(t, p) for t in TRACES.index for p in ROBUSTNESS["perturbations"]]
VARIANT_WILDCARDS = {
    "trace": [t for t, _ in VARIANTS],
    "perturbation": [p for _, p in VARIANTS],
}


wildcard_constraints:
    perturbation="|".join(PERTURBATIONS),


rule robustness_windows:
    input:
        packets=rules.normalize_trace.output.packets,
    output:
        packets=temp("results/robustness/{trace}/{perturbation}/packets.parquet"),
        flows=temp("results/robustness/{trace}/{perturbation}/flows.parquet"),
        http=temp("results/robustness/{trace}/{perturbation}/http.parquet"),
        conn_log=temp("results/robustness/{trace}/{perturbation}/conn.log"),
        windows="results/robustness/{trace}/{perturbation}/windows.parquet",
        record="results/robustness/{trace}/{perturbation}/perturbation.json",
    log:
        "results/logs/robustness/windows/{trace}.{perturbation}.log",
    benchmark:
        "results/benchmarks/robustness/windows/{trace}.{perturbation}.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: 1
    resources:
        # security_connections dominates (its slope).
        mem_mb=memory_mb(512, 28),
        runtime=runtime_minutes(10, 6),
    params:
        code=rule_code("robustness_windows"),
        perturbation_settings=lambda wc: stable_params(
            ROBUSTNESS["parameters"].get(wc.perturbation, {})
        ),
        seed=ROBUSTNESS["seed"],
        # The copy's connections and windows are made as the original's are.
        settings=stable_params({key: config["security"][key] for key in ("flows", "windows")}),
    script:
        "../scripts/robustness_windows.py"


rule robustness_invariance:
    input:
        windows=expand(rules.security_windows.output.windows, trace=TRACES.index),
        variant_windows=expand(rules.robustness_windows.output.windows, zip, **VARIANT_WILDCARDS),
        records=expand(rules.robustness_windows.output.record, zip, **VARIANT_WILDCARDS),
    output:
        table=report(
            "results/robustness/invariance.csv",
            caption="../report/robustness_invariance.rst",
            category="Robust features",
            subcategory="Invariance",
            labels={"table": "KS D per feature and perturbation", "format": "CSV"},
        ),
        classes=report(
            "results/robustness/classes.csv",
            caption="../report/robustness_classes.rst",
            category="Robust features",
            subcategory="Invariance",
            labels={"table": "measured class", "format": "CSV"},
        ),
        classes_md="results/robustness/classes.md",
        classes_html=report(
            "results/robustness/classes.html",
            caption="../report/robustness_classes.rst",
            category="Robust features",
            subcategory="Invariance",
            labels={"table": "measured class", "format": "HTML"},
        ),
        perturbations_md="results/robustness/perturbations.md",
        perturbations_html=report(
            "results/robustness/perturbations.html",
            caption="../report/robustness_perturbations.rst",
            category="Robust features",
            subcategory="Invariance",
            labels={"table": "what each perturbation changed", "format": "HTML"},
        ),
        heatmap=report(
            "results/robustness/invariance.png",
            caption="../report/robustness_invariance_figure.rst",
            category="Robust features",
            subcategory="Invariance",
            labels={"figure": "feature x perturbation"},
        ),
    log:
        "results/logs/robustness/invariance.log",
    benchmark:
        "results/benchmarks/robustness/invariance.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(512, 4),
        runtime=runtime_minutes(15, 1),
    params:
        code=rule_code("robustness_invariance"),
        traces=list(TRACES.index),
        variants=[list(variant) for variant in VARIANTS],
        format_pairs=FORMAT_PAIRS,
        skipped_pairs=SKIPPED_PAIRS,
        settings=stable_params(
            {key: ROBUSTNESS[key] for key in ("seed", "invariance", "bootstrap")}
        ),
    script:
        "../scripts/robustness_invariance.py"


rule robustness_separation:
    input:
        windows=expand(rules.security_windows.output.windows, trace=TRACES.index),
        classes=rules.robustness_invariance.output.classes,
    output:
        table=report(
            "results/robustness/separation.csv",
            caption="../report/robustness_separation.rst",
            category="Robust features",
            subcategory="Separation",
            labels={"table": "KS D and AUC with intervals", "format": "CSV"},
        ),
        markdown="results/robustness/separation.md",
        html=report(
            "results/robustness/separation.html",
            caption="../report/robustness_separation.rst",
            category="Robust features",
            subcategory="Separation",
            labels={"table": "KS D and AUC with intervals", "format": "HTML"},
        ),
        figure=report(
            "results/robustness/separation.png",
            caption="../report/robustness_separation_figure.rst",
            category="Robust features",
            subcategory="Separation",
            labels={"figure": "AUC with intervals"},
        ),
    log:
        "results/logs/robustness/separation.log",
    benchmark:
        "results/benchmarks/robustness/separation.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(512, 4),
        runtime=runtime_minutes(15, 1),
    params:
        code=rule_code("robustness_separation"),
        traces=list(TRACES.index),
        labels=trace_labels(),
        settings=stable_params({key: ROBUSTNESS[key] for key in ("seed", "bootstrap")}),
    script:
        "../scripts/robustness_separation.py"


rule robustness_transfer:
    input:
        windows=expand(rules.security_windows.output.windows, trace=TRACES.index),
        classes=rules.robustness_invariance.output.classes,
    output:
        table=report(
            "results/robustness/transfer.csv",
            caption="../report/robustness_transfer.rst",
            category="Robust features",
            subcategory="Transfer",
            labels={"table": "leave-one-capture-out", "format": "CSV"},
        ),
        markdown="results/robustness/transfer.md",
        html=report(
            "results/robustness/transfer.html",
            caption="../report/robustness_transfer.rst",
            category="Robust features",
            subcategory="Transfer",
            labels={"table": "leave-one-capture-out", "format": "HTML"},
        ),
        figure=report(
            "results/robustness/transfer.png",
            caption="../report/robustness_transfer_figure.rst",
            category="Robust features",
            subcategory="Transfer",
            labels={"figure": "accuracy per left-out trace"},
        ),
    log:
        "results/logs/robustness/transfer.log",
    benchmark:
        "results/benchmarks/robustness/transfer.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(768, 4),
        runtime=runtime_minutes(15, 1),
    params:
        code=rule_code("robustness_transfer"),
        traces=list(TRACES.index),
        labels=trace_labels(),
        settings=stable_params({key: ROBUSTNESS[key] for key in ("seed", "bootstrap", "transfer")}),
    script:
        "../scripts/robustness_transfer.py"
