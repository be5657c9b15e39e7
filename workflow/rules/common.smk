# Helpers and input functions shared by every stage.
import re
from pathlib import Path

from snakemake.utils import validate

from tracelab.traces import TraceSheetError, load_trace_sheet


validate(config, schema="../schemas/config.schema.yaml")

REPO_ROOT = Path(workflow.basedir)
try:
    TRACES = load_trace_sheet(REPO_ROOT / config["traces"], REPO_ROOT)
except TraceSheetError as error:
    raise WorkflowError(str(error)) from None


wildcard_constraints:
    trace="|".join(re.escape(name) for name in TRACES.index),


def trace_row(wildcards):
    return TRACES.loc[wildcards.trace]


def trace_source(wildcards):
    return trace_row(wildcards)["path"]


def trace_labels():
    """trace -> label, for the comparison stage's legends and separability."""
    return {name: row["label"] for name, row in TRACES.iterrows()}


def final_outputs():
    return [
        *expand("results/features/{trace}/summary.json", trace=TRACES.index),
        "results/compare/summary.csv",
    ]
