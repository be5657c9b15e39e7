"""A rule's code version: a digest of every package module its entry script runs.

Snakemake reruns a job when its `script:` changes, but the logic lives in the package, so the
rule passes this digest as a param. It is the hash of the import closure of the script inside
the package (found by reading the imports, not by running them): editing any module that the
script imports, directly or not, reruns the rule; editing any other module does not.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "tracelab"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def module_file(name: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The source file of a package module (`tracelab.a.b`), or None if `name` is not one."""
    base = Path(package_dir).joinpath(*name.split(".")[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> frozenset[str]:
    """Package modules named by the file's imports, with the packages that contain them (an
    import runs every parent package's __init__)."""
    stat = path.stat()
    return _imports_of(path, stat.st_mtime_ns, stat.st_size)


@functools.cache
def _imports_of(path: Path, mtime_ns: int, size: int) -> frozenset[str]:
    """`_imported_modules` of one version of a file (its mtime and size in the key): every rule
    of a workflow shares most modules, and a Snakefile parse read each once a rule."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    inside = {name for name in names if name.split(".")[0] == PACKAGE}
    return frozenset(".".join(name.split(".")[:depth]) for name in inside
                     for depth in range(1, name.count(".") + 2))


def import_closure(*entries: Path | str, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """Every package file that the entry files import, transitively, sorted (with the entries
    themselves where they are package files)."""
    pending = [Path(entry).resolve() for entry in entries]
    package_dir = Path(package_dir).resolve()
    seen = {path for path in pending if path.is_relative_to(package_dir)}
    while pending:
        path = pending.pop()
        for name in _imported_modules(path):
            found = module_file(name, package_dir)
            if found is not None and found not in seen:
                seen.add(found)
                pending.append(found)
    return sorted(seen)


def files_digest(paths, package_dir: Path = PACKAGE_DIR) -> str:
    """Digest of package files: each one's path inside the package and its contents."""
    digest = hashlib.sha256()
    package_dir = Path(package_dir).resolve()
    for path in sorted(Path(path).resolve() for path in paths):
        digest.update(str(path.relative_to(package_dir)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def code_version(*entries: Path | str, package_dir: Path = PACKAGE_DIR) -> str:
    """Digest of the import closure of the entry files, the package being the one in
    `package_dir` (a checkout's own, whatever copy is installed)."""
    return files_digest(import_closure(*entries, package_dir=package_dir), package_dir)
