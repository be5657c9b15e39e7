"""Outputs appear whole or not at all: write to a temporary sibling, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

# mkstemp makes 0600 files; outputs get the usual permissions the umask gives.
_UMASK = os.umask(0)
os.umask(_UMASK)
OUTPUT_MODE = 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's folder; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, OUTPUT_MODE)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
