"""The test suite's own layout: test modules share helpers only through conftest.py and the
helper modules (no test module imports another), and conftest's helpers are defined once."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
MODULES = sorted(TESTS.glob("*.py"))
TEST_MODULES = {path.stem for path in MODULES if path.stem.startswith("test_")}


def imported_names(path: Path) -> set[str]:
    """The test modules the file imports (nested imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name.split(".")[0] in TEST_MODULES | {"tests"}}


def top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return names


def test_no_test_module_imports_another():
    importing = {path.name: sorted(found) for path in MODULES if (found := imported_names(path))}
    assert importing == {}, "move what they share to conftest.py or a helper module"


def test_conftest_helpers_are_defined_nowhere_else():
    shared = top_level_names(TESTS / "conftest.py") - {"annotations"}
    assert {"REPO", "copy_workflow", "run_snakemake"} <= shared
    again = {path.name: sorted(both) for path in MODULES if path.name != "conftest.py"
             if (both := shared & top_level_names(path))}
    assert again == {}, "import these from conftest instead"
