"""tracelab: packet traces to validated tables, security features and comparisons.

`tracelab.read(path)` gives one trace file's packet table and `tracelab.inspect(path)` its
summary (see tracelab.api); the `tracelab` command line is tracelab.cli.
"""

import importlib

__version__ = "0.1.0"

# Imported on first use, and by name rather than by an import statement: `import tracelab`
# stays fast, and the rules' code versions (which follow import statements, see
# core/code_version.py) do not take in the modules behind these functions.
_LAZY = {"read": "tracelab.api", "inspect": "tracelab.api"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tracelab' has no attribute {name!r}")
