# Which window features survive a change of recording and network conditions. Every trace's
# packet table is perturbed (another hour, a cut, names toggled, a coarser clock, other ports, a
# snap length, a slower path, loss...) in one job a trace that reads it once (a trace above
# robustness.sample_packets: the run of windows around its middle within that many); each copy's
# connections and windows are made as the original's are (or, for a time shift or a
# one-to-one renaming, relabelled from the original's). The comparison measures how far each
# perturbation moves each feature against the windows' own noise, how well the features
# separate the labels (with block-bootstrap intervals), and whether detectors transfer to a
# capture they have not seen. Outputs in results/robustness/.
from tracelab.robustness.perturbations import PERTURBATIONS

ROBUSTNESS = config["robustness"]
CHOSEN = ROBUSTNESS["perturbations"]
unknown_perturbations = sorted(set(CHOSEN) - set(PERTURBATIONS))
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
# `robustness.perturbations: []` leaves the copies out (the pages say so).
VARIANT_TRACES = list(TRACES.index) if CHOSEN else []
VARIANTS = [(t, p) for p in CHOSEN for t in VARIANT_TRACES]  # as expand orders the outputs


rule robustness_variants:
    input:
        unpack(variant_inputs),
    output:
        windows=expand(
            "results/robustness/{{trace}}/{perturbation}/windows.parquet",
            perturbation=CHOSEN,
        ),
        baseline="results/robustness/{trace}/baseline.parquet",
        records="results/robustness/{trace}/perturbations.json",
    log:
        "results/logs/robustness/variants/{trace}.log",
    benchmark:
        "results/benchmarks/robustness/variants/{trace}.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: 1
    resources:
        mem_mb=variants_memory_mb,
        runtime=runtime_minutes(10, 6 * max(len(CHOSEN), 1)),
    params:
        code=rule_code("robustness_variants"),
        perturbations=CHOSEN,
        parameters=lambda wc: stable_params(
            {name: ROBUSTNESS["parameters"].get(name, {}) for name in CHOSEN}
        ),
        seed=ROBUSTNESS["seed"],
        sample_packets=ROBUSTNESS["sample_packets"],
        # The copies' connections and windows are made as the original's are.
        settings=stable_params({key: config["security"][key] for key in ("flows", "windows")}),
    script:
        "../scripts/robustness_variants.py"


rule robustness_measures:
    input:
        windows=expand(rules.security_windows.output.windows, trace=TRACES.index),
        variant_windows=expand(rules.robustness_variants.output.windows, trace=VARIANT_TRACES),
        baselines=expand(rules.robustness_variants.output.baseline, trace=VARIANT_TRACES),
        records=expand(rules.robustness_variants.output.records, trace=VARIANT_TRACES),
    output:
        invariance=report(
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
        invariance_png=report(
            "results/robustness/invariance.png",
            caption="../report/robustness_invariance_figure.rst",
            category="Robust features",
            subcategory="Invariance",
            labels={"figure": "feature x perturbation"},
        ),
        separation=report(
            "results/robustness/separation.csv",
            caption="../report/robustness_separation.rst",
            category="Robust features",
            subcategory="Separation",
            labels={"table": "KS D and AUC with intervals", "format": "CSV"},
        ),
        separation_md="results/robustness/separation.md",
        separation_html=report(
            "results/robustness/separation.html",
            caption="../report/robustness_separation.rst",
            category="Robust features",
            subcategory="Separation",
            labels={"table": "KS D and AUC with intervals", "format": "HTML"},
        ),
        separation_png=report(
            "results/robustness/separation.png",
            caption="../report/robustness_separation_figure.rst",
            category="Robust features",
            subcategory="Separation",
            labels={"figure": "AUC with intervals"},
        ),
        transfer=report(
            "results/robustness/transfer.csv",
            caption="../report/robustness_transfer.rst",
            category="Robust features",
            subcategory="Transfer",
            labels={"table": "leave-one-capture-out", "format": "CSV"},
        ),
        transfer_md="results/robustness/transfer.md",
        transfer_html=report(
            "results/robustness/transfer.html",
            caption="../report/robustness_transfer.rst",
            category="Robust features",
            subcategory="Transfer",
            labels={"table": "leave-one-capture-out", "format": "HTML"},
        ),
        transfer_png=report(
            "results/robustness/transfer.png",
            caption="../report/robustness_transfer_figure.rst",
            category="Robust features",
            subcategory="Transfer",
            labels={"figure": "accuracy per left-out trace"},
        ),
        answer_png=report(
            "results/robustness/answer.png",
            caption="../report/robustness_answer.rst",
            category="Robust features",
            subcategory="Answer",
            labels={"figure": "which features transfer to an unseen capture"},
        ),
        answer_md="results/robustness/answer.md",
    log:
        "results/logs/robustness/measures.log",
    benchmark:
        "results/benchmarks/robustness/measures.tsv"
    conda:
        "../envs/tracelab.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(768, 4),
        runtime=runtime_minutes(30, 3),
    params:
        code=rule_code("robustness_measures"),
        traces=list(TRACES.index),
        labels=trace_labels(),
        variants=[list(variant) for variant in VARIANTS],
        format_pairs=FORMAT_PAIRS,
        skipped_pairs=SKIPPED_PAIRS,
        settings=stable_params(
            {key: ROBUSTNESS[key] for key in ("seed", "invariance", "bootstrap", "transfer")}
        ),
    script:
        "../scripts/robustness_measures.py"
