"""Outputs appear whole or not at all: write to a temporary sibling, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

import pyarrow as pa_arrow
import pyarrow.parquet as pq

# mkstemp makes 0600 files; outputs get the usual permissions the umask gives.
_UMASK = os.umask(0)
os.umask(_UMASK)
OUTPUT_MODE = 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's folder; rename it onto `path` only on success.

    A temporary left by a killed run of the same output is removed first: one job owns an
    output, so no other writer can be using it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, OUTPUT_MODE)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _remove_stale_temporaries(path: Path) -> None:
    # mkstemp's names: the prefix, 8 characters of [a-z0-9_], the suffix; the pattern does not
    # match the temporaries of a longer name such as `{path.name}.bak`.
    stale = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.part")
    for entry in os.scandir(path.parent):
        if stale.fullmatch(entry.name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet(table: pa_arrow.Table, path, metadata: dict | None = None) -> None:
    """Write `table` atomically with zstd, adding `tracelab.*` metadata."""
    extra = {f"tracelab.{k}".encode(): str(v).encode() for k, v in (metadata or {}).items()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
