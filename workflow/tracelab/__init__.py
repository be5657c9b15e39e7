"""tracelab: packet traces to validated tables, security features and comparisons.

`tracelab.read(path)` gives one trace file's packet table, `tracelab.inspect(path)` its
summary, and `tracelab.flows(path)`, `hosts(path)`, `windows(path)` its security tables (see
tracelab.api); the `tracelab` command line is tracelab.cli.
"""

import importlib

# Imported on first use, and by name rather than by an import statement: `import tracelab`
# stays fast, and the rules' code versions (which follow import statements, see
# core/code_version.py) do not take in the modules behind these functions.
_LAZY = {name: "tracelab.api" for name in ("read", "inspect", "flows", "hosts", "windows")}


def __getattr__(name: str):
    # The installed distribution's version (pyproject.toml's), asked only when wanted: the jobs
    # import this package from the checkout, where none may be installed.
    if name == "__version__":
        from importlib.metadata import version

        return version("tracelab")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tracelab' has no attribute {name!r}")
