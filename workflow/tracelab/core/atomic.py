"""Outputs appear whole or not at all: write to a temporary sibling, then rename."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import pyarrow as pa_arrow
import pyarrow.parquet as pq

# mkstemp makes 0600 files; outputs get the usual permissions the umask gives.
_UMASK = os.umask(0)
os.umask(_UMASK)
OUTPUT_MODE = 0o666 & ~_UMASK
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# The note a full disk's error gets from the first output it made us give up on: pyarrow's
# errors name no file.
WRITING = "writing "


class AtomicPath:
    """A temporary sibling `tmp` of `path`: `commit()` renames it onto `path`, `discard()`
    removes it. Used as a context manager (`with AtomicPath(p) as tmp:`), it commits when the
    block ends normally and discards when it raises, unless one of the two was called already.

    A temporary left by a killed run of the same output is removed first: one job owns an
    output, so no other writer can be using it.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(self.path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part",
                                   dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.settled = False

    def commit(self) -> None:
        os.chmod(self.tmp, OUTPUT_MODE)
        os.replace(self.tmp, self.path)
        self.settled = True

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
        self.settled = True
        error = sys.exc_info()[1]  # the error that made us give up, if one is being handled
        if is_disk_full(error) and _noted_path(error) is None:
            error.add_note(f"{WRITING}{self.path}")

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if self.settled:
            return False
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.discard()
                raise
        else:
            self.discard()
        return False


# The usual spelling at call sites: `with atomic_path(path) as tmp:`.
atomic_path = AtomicPath


def _remove_stale_temporaries(path: Path) -> None:
    # mkstemp's names: the prefix, 8 characters of [a-z0-9_], the suffix; the pattern does not
    # match the temporaries of a longer name such as `{path.name}.bak`.
    stale = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.part")
    for entry in os.scandir(path.parent):
        if stale.fullmatch(entry.name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def _chain(error: BaseException | None):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def is_disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error it came from, is a full disk or quota (pyarrow's errors
    carry the errno in their text only)."""
    return any(isinstance(e, OSError) and (e.errno in DISK_FULL or any(
        f"[errno {number}]" in str(e).lower() for number in DISK_FULL)) for e in _chain(error))


def _noted_path(error: BaseException) -> str | None:
    notes = (note for each in _chain(error) for note in getattr(each, "__notes__", ()))
    return next((note.removeprefix(WRITING) for note in notes if note.startswith(WRITING)), None)


def unwritten_path(error: BaseException) -> str | None:
    """The file a full disk stopped: the output it made us give up on first (not its
    temporary), else the error's own file name."""
    filenames = (each.filename for each in _chain(error) if getattr(each, "filename", None))
    return _noted_path(error) or next(map(str, filenames), None)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def tracelab_metadata(values: dict | None) -> dict[bytes, bytes]:
    """Parquet file metadata `tracelab.<key>`: <value as text> of `values`."""
    return {f"tracelab.{k}".encode(): str(v).encode() for k, v in (values or {}).items()}


def parquet_options(schema: pa_arrow.Schema) -> dict:
    """How every table is written: zstd, and dictionary pages only for dictionary columns.
    Parquet's default tries a dictionary for every column, and one of mostly distinct values
    (uids, URIs, ports) costs more than it saves: at 10M packets flows.parquet 0.70 -> 0.59
    CPU s and 75.5 -> 70.5 MB, placements 0.21 -> 0.11 s and 15.0 -> 8.3 MB."""
    return {"compression": "zstd",
            "use_dictionary": [f.name for f in schema if pa_arrow.types.is_dictionary(f.type)]}


def write_parquet(table: pa_arrow.Table, path, metadata: dict | None = None) -> None:
    """Write `table` atomically (`parquet_options`), adding `tracelab.*` metadata."""
    extra = tracelab_metadata(metadata)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **parquet_options(table.schema))
