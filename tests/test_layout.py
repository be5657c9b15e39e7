"""The package's layout rules, read from the source with `ast`: no module of workflow/tracelab
over MAX_LINES lines, and no private name (`_x`) of one tracelab module used by another module
of the package, an adapter (workflow/scripts) or a benchmark. Tests may still monkeypatch
private names."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "workflow" / "tracelab"
MAX_LINES = 600
# Modules allowed over MAX_LINES while they are being split, with the issue that splits them.
# Empty the list as they shrink: an entry that is within the limit (or gone) fails the test.
OVERSIZE_ALLOWED: dict[str, str] = {}


def module_name(path: Path) -> str | None:
    """The dotted name of a module of the package (None outside it)."""
    if not path.is_relative_to(PACKAGE):
        return None
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether the dotted `name` is a module or package of tracelab."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def private_uses(source: str, own: str | None) -> list[str]:
    """Private names of other tracelab modules that `source` (the module `own`, None for a
    script) imports (`from tracelab.x import _y`) or reads off an imported tracelab module
    (`x._y`), as 'line: module._name'."""
    tree = ast.parse(source)
    modules: dict[str, str] = {}  # local name -> tracelab module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tracelab.") and alias.asname:
                    modules[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tracelab"):
            for alias in node.names:
                if node.module == own:
                    continue
                if alias.name.startswith("_"):
                    found.append(f"{node.lineno}: {node.module}.{alias.name}")
                elif is_module(f"{node.module}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and modules[node.value.id] != own
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{node.lineno}: {modules[node.value.id]}.{node.attr}")
    return sorted(found, key=lambda use: int(use.split(":")[0]))


def checked_files() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *(REPO / "workflow" / "scripts").glob("*.py"),
                   *(REPO / "benchmarks").glob("*.py")])


def test_the_checker_finds_private_names_of_other_modules():
    source = ("from tracelab.security.connections import FLOWS, _aggregate\n"
              "from tracelab.security import shards\n"
              "import tracelab.core.tables as tables\n"
              "shards._without(1)\ntables._private\nshards.__name__\nFLOWS._cache\n")
    assert private_uses(source, "tracelab.security.hosts") == [
        "1: tracelab.security.connections._aggregate", "4: tracelab.security.shards._without",
        "5: tracelab.core.tables._private"]
    assert private_uses(source, "tracelab.security.connections") == [
        "4: tracelab.security.shards._without", "5: tracelab.core.tables._private"]


def test_no_private_name_is_used_across_modules():
    found = [f"{path.relative_to(REPO)}:{use}" for path in checked_files()
             for use in private_uses(path.read_text(encoding="utf-8"), module_name(path))]
    assert not found, "private names used outside their module:\n" + "\n".join(found)


def test_no_module_is_over_the_line_limit():
    lines = {str(path.relative_to(REPO)): len(path.read_text(encoding="utf-8").splitlines())
             for path in PACKAGE.rglob("*.py")}
    over = {path: count for path, count in lines.items()
            if count > MAX_LINES and path not in OVERSIZE_ALLOWED}
    assert not over, f"modules over {MAX_LINES} lines (split them by concern): {over}"
    stale = [path for path in OVERSIZE_ALLOWED if lines.get(path, 0) <= MAX_LINES]
    assert not stale, f"within {MAX_LINES} lines or gone, remove from OVERSIZE_ALLOWED: {stale}"
