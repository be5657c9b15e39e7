"""A code change reruns exactly the rules that run the changed module.

For every module of the package: append a comment, dry-run, and compare the jobs whose params
changed with the rules that import the module. The expected set is found by Python's own import
system (import what each rule's script imports, in a fresh interpreter, and list the package
files in sys.modules), not by the static import walk the workflow uses.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_snakemake

pytestmark = pytest.mark.slow

RUNTIME_CLOSURE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(m.__file__ for n, m in list(sys.modules.items())
                        if n.split(".")[0] == "tracelab" and getattr(m, "__file__", None))))
"""


def script_imports(script: Path) -> list[str]:
    """The package modules a rule's script names in its import statements."""
    names = []
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module.startswith("tracelab"):
            names.append(node.module)
    return names


def runtime_closure(workdir: Path, modules: list[str]) -> set[Path]:
    env = {"PYTHONPATH": str(workdir / "workflow"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", RUNTIME_CLOSURE, *modules], env=env,
                            capture_output=True, text=True, check=True)
    return {Path(path).resolve() for path in json.loads(result.stdout)}


def summary(workdir: Path) -> dict[str, tuple[str, str]]:
    """Output file -> (rule, status), from Snakemake's summary of the last run."""
    rows = run_snakemake(workdir, "--summary").stdout.splitlines()
    header = next(i for i, row in enumerate(rows) if row.startswith("output_file\t"))
    return {cells[0]: (cells[2], cells[4]) for cells in
            (row.split("\t") for row in rows[header + 1:]) if len(cells) > 4}


def trace_of(path: str, traces: list[str]) -> str:
    """The trace an output belongs to ('' for the comparisons across traces)."""
    parts = Path(path).parts
    return next((t for t in traces for part in parts
                 if part == t or part.startswith(f"{t}.")), "")


def code_changes(workdir: Path) -> tuple[set[tuple[str, str]], set[str]]:
    """(rule, output) of every output whose params differ from its last run, and the outputs
    Snakemake cannot judge: those downstream of a pending checkpoint (normalize_trace) whose
    input set is not known yet (the summary says "set of input files changed")."""
    changed, unknown = set(), set()
    for path, (rule, status) in summary(workdir).items():
        if status == "params changed":
            changed.add((rule, path))
        elif status == "set of input files changed":
            unknown.add(path)
    return changed, unknown


def test_editing_any_module_reruns_exactly_the_rules_that_import_it(workflow_copy):
    run_snakemake(workflow_copy, "--cores", "2")
    package = workflow_copy / "workflow" / "tracelab"
    sheet = [line.split("\t") for line in
             (workflow_copy / "config" / "traces.tsv").read_text().splitlines()[1:]]
    formats = {row[0]: row[2] or ("wireshark_csv" if ".csv" in row[1] else "pcapng")
               for row in sheet}
    readers = {"wireshark_csv": "tracelab.ingest.wireshark_csv",
               "pcap": "tracelab.ingest.capture.reader",
               "pcapng": "tracelab.ingest.capture.reader"}
    outputs = {path: rule for path, (rule, status) in summary(workflow_copy).items()
                if status == "ok"}   # temp() outputs are gone and cannot say
    assert {rule for rule in outputs.values()} >= {"validate_trace", "normalize_trace",
                                                    "security_connections"}
    closures = {}
    for rule, trace in {(rule, trace_of(path, list(formats))) for path, rule in outputs.items()}:
        imports = script_imports(workflow_copy / "workflow" / "scripts" / f"{rule}.py")
        if rule == "validate_trace":  # the reader is chosen by the trace's format at run time
            imports.append(readers[formats[trace]])
        closures[(rule, trace)] = runtime_closure(workflow_copy, imports)
    assert code_changes(workflow_copy) == (set(), set())

    modules = sorted(path for path in package.rglob("*.py") if "__pycache__" not in path.parts)
    assert len(modules) > 20
    for module in modules:
        original = module.read_text()
        module.write_text(original + "\n# an edit that changes nothing\n")
        try:
            changed, unknown = code_changes(workflow_copy)
            expected = {(rule, path) for path, rule in outputs.items() if path not in unknown
                        and module.resolve() in closures[(rule, trace_of(path, list(formats)))]}
            assert changed == expected, module.relative_to(package)
        finally:
            module.write_text(original)
