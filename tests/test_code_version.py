"""A code change reruns exactly the rules that run the changed module.

For every module of the package: append a comment, dry-run, and compare the jobs whose params
changed with the rules that import the module. The expected set is found by Python's own import
system (import what each rule's script imports, in a fresh interpreter, and list the package
files in sys.modules), not by the static import walk the workflow uses.
"""

from __future__ import annotations

import ast
import json
import re
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


def job_outputs(workdir: Path) -> dict[tuple[str, str], set[str]]:
    """(rule, trace or '') -> output files, of every job of a full run (a forced dry run)."""
    output = run_snakemake(workdir, "-n", "--forceall").stdout
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        files = re.search(r"^\s+output: (.+)$", block, flags=re.M)
        if rule and files:
            trace = re.search(r"wildcards: trace=(\S+)", block)
            jobs[(rule.group(1), trace.group(1) if trace else "")] = set(
                files.group(1).split(", "))
    return jobs


def params_changed(workdir: Path, jobs: dict[tuple[str, str], set[str]]) -> set[tuple[str, str]]:
    """The jobs with an output whose params differ from its last run (Snakemake's summary:
    unlike a dry run's reasons, it says so for jobs downstream of other changed jobs too)."""
    summary = run_snakemake(workdir, "--summary").stdout.splitlines()
    changed = {row.split("\t")[0] for row in summary if "\tparams changed\t" in row}
    return {job for job, files in jobs.items() if files & changed}


def test_editing_any_module_reruns_exactly_the_rules_that_import_it(workflow_copy):
    run_snakemake(workflow_copy, "--cores", "2")
    package = workflow_copy / "workflow" / "tracelab"
    scripts = sorted((workflow_copy / "workflow" / "scripts").glob("*.py"))
    sheet = [line.split("\t") for line in
             (workflow_copy / "config" / "traces.tsv").read_text().splitlines()[1:]]
    formats = {row[0]: row[2] or ("wireshark_csv" if ".csv" in row[1] else "pcapng")
               for row in sheet}
    readers = {"wireshark_csv": "tracelab.ingest.wireshark_csv",
               "pcap": "tracelab.ingest.capture.reader",
               "pcapng": "tracelab.ingest.capture.reader"}
    jobs = job_outputs(workflow_copy)
    closures = {}
    for rule, trace in jobs:
        imports = script_imports(workflow_copy / "workflow" / "scripts" / f"{rule}.py")
        if rule == "validate_trace":  # the reader is chosen by the trace's format at run time
            imports.append(readers[formats[trace]])
        closures[(rule, trace)] = runtime_closure(workflow_copy, imports)
    assert {rule for rule, _ in closures} == {script.stem for script in scripts}
    assert params_changed(workflow_copy, jobs) == set()

    modules = sorted(path for path in package.rglob("*.py") if "__pycache__" not in path.parts)
    assert len(modules) > 20
    for module in modules:
        original = module.read_text()
        module.write_text(original + "\n# an edit that changes nothing\n")
        try:
            expected = {job for job, closure in closures.items() if module.resolve() in closure}
            assert params_changed(workflow_copy, jobs) == expected, module.relative_to(package)
        finally:
            module.write_text(original)
