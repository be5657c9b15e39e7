"""A code change reruns exactly the rules that run the changed module.

The workflow finds a rule's package modules by reading imports (tracelab.core.code_version);
the expected set here is found by Python's own import system: import what the rule's script
imports (and validate_trace's reader, loaded by format at run time) in a fresh interpreter and
list the package files in sys.modules. Every job of the bundled run recorded its code version
among its params (Snakemake's metadata): it must be the digest of exactly those files. The slow
lane edits every module in turn: the code versions found from the import graph must change for
exactly the jobs whose Python imports hold it, and Snakemake itself, asked about a module of each
kind, must rerun exactly their outputs.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, bundled_run, dry_run_outputs, edited

from tracelab.core.code_version import code_version, files_digest, import_closure, module_file
from tracelab.ingest.validate import READERS

# For each list of modules: a child of an interpreter that has imported every third-party
# module the package names (and no package module), importing the list, prints the package
# files in sys.modules. One start-up for all lists, each list in a clean process.
RUNTIME_CLOSURES = """
import importlib, json, os, sys
third_party, module_lists = json.loads(sys.argv[1])
for name in third_party:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
assert not [name for name in sys.modules if name.split(".")[0] == "tracelab"]
closures = []
for modules in module_lists:
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        for name in modules:
            importlib.import_module(name)
        files = [m.__file__ for n, m in list(sys.modules.items())
                 if n.split(".")[0] == "tracelab" and getattr(m, "__file__", None)]
        os.write(write, json.dumps(files).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        closures.append(json.loads(pipe.read()))
    assert os.wait()[1] == 0, modules
print(json.dumps(closures))
"""
CODE_PARAM = re.compile(r"'([0-9a-f]{16})'")


def script_imports(script: Path) -> list[str]:
    """The package modules a rule's script names in its import statements."""
    names = []
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module.startswith("tracelab"):
            names.append(node.module)
    return names


def third_party_modules(package: Path) -> list[str]:
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return sorted(name for name in names if name.split(".")[0] != "tracelab")


def runtime_closures(workdir: Path, module_lists: list[tuple[str, ...]]) -> list[set[Path]]:
    """The package files Python imports for each list of modules, in the checkout `workdir`."""
    package = workdir / "workflow" / "tracelab"
    argument = json.dumps([third_party_modules(package), module_lists])
    env = {"PYTHONPATH": str(workdir / "workflow"), "PATH": os.environ["PATH"],
           "OPENBLAS_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-c", RUNTIME_CLOSURES, argument], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    closures = [{Path(path).resolve() for path in files} for files in json.loads(result.stdout)]
    assert all(path.is_relative_to(package.resolve()) for files in closures for path in files)
    return closures


def test_each_scripts_import_closure_is_what_python_imports():
    """Every rule's script, those the bundled run does not use (the shard rules) included."""
    scripts = sorted((REPO / "workflow" / "scripts").glob("*.py"))
    assert len(scripts) > 5
    # validate_trace with every reader here; the bundled run's jobs with one reader each.
    entries = [(script, *READERS.values()) if script.stem == "validate_trace" else (script,)
               for script in scripts]
    imports = [tuple(script_imports(script)) + tuple(modules) for script, *modules in entries]
    package = REPO / "workflow" / "tracelab"
    for (script, *modules), runtime in zip(entries, runtime_closures(REPO, imports)):
        readers = [module_file(name, package) for name in modules]
        static = set(import_closure(script, *readers, package_dir=package))
        assert static == runtime, (script.name, sorted(static ^ runtime))


def recorded_jobs(workdir: Path) -> dict[tuple[str, str, str], str]:
    """(rule, script, source format or '') -> the code version the jobs recorded, from
    Snakemake's metadata of every output of the last run."""
    jobs = {}
    for path in (workdir / ".snakemake" / "metadata").iterdir():
        record = json.loads(path.read_text())
        codes = [m.group(1) for p in record["params"] if (m := CODE_PARAM.fullmatch(p))]
        if not codes:
            continue
        assert len(codes) == 1, (base64.b64decode(path.name), record["params"])
        script = record["code"].strip().strip('"')
        formats = [p.strip("'") for p in record["params"] if p.strip("'") in READERS]
        source_format = formats[0] if record["rule"] == "validate_trace" else ""
        key = (record["rule"], script, source_format)
        assert jobs.setdefault(key, codes[0]) == codes[0], key
    return jobs


def test_every_jobs_code_version_is_the_digest_of_what_python_imports():
    workdir = bundled_run()
    jobs = recorded_jobs(workdir)
    assert {rule for rule, _, _ in jobs} >= {"validate_trace", "normalize_trace",
                                             "security_connections", "compare_traces"}
    assert {fmt for _, _, fmt in jobs} >= {"wireshark_csv", "pcapng"}
    rules_dir = workdir / "workflow" / "rules"
    imports = [tuple(script_imports(rules_dir / script))
               + ((READERS[source_format],) if source_format else ())
               for _, script, source_format in jobs]
    package = workdir / "workflow" / "tracelab"
    for (key, recorded), files in zip(jobs.items(), runtime_closures(workdir, imports)):
        assert files_digest(files, package) == recorded, key


# --- Slow lane: Snakemake itself asked about an edit of each module ----------------------------

def summary(workdir: Path) -> dict[str, tuple[str, str]]:
    """Output file -> (rule, status), from Snakemake's summary of the last run."""
    [(returncode, output)] = dry_run_outputs([(workdir, ("--summary",))])
    assert returncode == 0, output[-4000:]
    rows = output.splitlines()
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


def commented(source: bytes) -> bytes:
    return source + b"\n# an edit that changes nothing\n"


@pytest.mark.slow
def test_editing_any_module_reruns_exactly_the_rules_that_import_it():
    workdir = bundled_run()
    package = workdir / "workflow" / "tracelab"
    sheet = [line.split("\t") for line in
             (workdir / "config" / "traces.tsv").read_text().splitlines()[1:]]
    formats = {row[0]: row[2] or ("wireshark_csv" if ".csv" in row[1] else "pcapng")
               for row in sheet}
    outputs = {path: rule for path, (rule, status) in summary(workdir).items()
               if status == "ok"}   # temp() outputs are gone and cannot say
    assert {rule for rule in outputs.values()} >= {"validate_trace", "normalize_trace",
                                                    "security_connections"}
    # An output's code version depends on its rule and, for validation, its trace's format.
    jobs = {path: (rule, formats[trace_of(path, list(formats))] if rule == "validate_trace"
                   else "") for path, rule in outputs.items()}
    keys = sorted(set(jobs.values()))
    scripts = {key: workdir / "workflow" / "scripts" / f"{key[0]}.py" for key in keys}
    readers = {key: (READERS[key[1]],) if key[1] else () for key in keys}
    closures = dict(zip(keys, runtime_closures(
        workdir, [tuple(script_imports(scripts[key])) + readers[key] for key in keys])))

    def versions() -> dict[tuple[str, str], str]:
        """Each job's code version as the workflow finds it, from the import graph."""
        return {key: code_version(scripts[key], *(module_file(name, package)
                                                  for name in readers[key]), package_dir=package)
                for key in keys}

    modules = sorted(path.resolve() for path in package.rglob("*.py")
                     if "__pycache__" not in path.parts)
    assert len(modules) > 20
    importing = {module: {key for key in keys if module in closures[key]} for module in modules}
    unedited = versions()
    for module in modules:
        with edited(module, commented):
            changed = {key for key, version in versions().items() if version != unedited[key]}
        assert changed == importing[module], module.relative_to(package)

    # Snakemake's own verdict, for a module no job imports, each bundled format's reader (that
    # format's validation only) and a module every job imports.
    assert code_changes(workdir) == (set(), set())
    asked = [next(module for module in modules if not importing[module]),
             *sorted({module_file(READERS[fmt], package).resolve() for fmt in formats.values()}),
             next(module for module in modules if importing[module] == set(keys))]
    for module in asked:
        with edited(module, commented):
            changed, unknown = code_changes(workdir)
        expected = {(rule, path) for path, rule in outputs.items()
                    if path not in unknown and jobs[path] in importing[module]}
        assert changed == expected, module.relative_to(package)
