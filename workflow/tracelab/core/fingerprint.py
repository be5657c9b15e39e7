"""A trace source's content fingerprint, for rerunning its chain when the content changes.

Snakemake reruns a job when an input is newer than its outputs, but a file replaced with
different content and an older mtime (`cp -p`, `tar x`, `rsync -t`) looks unchanged. The
fingerprint (SHA-256 of the content) goes into the validation rule's params, so a new content
reruns the trace's chain. It is cached per file, keyed by what any write changes (device, inode,
size, mtime and ctime, which no user can set back), so a planning run hashes a file only after
it changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tracelab.core.atomic import write_json


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's content."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def content_fingerprint(path, cache_dir) -> str:
    """`sha256:<hex>` of the file at `path`, from the cache in `cache_dir` when still valid."""
    path = Path(path).resolve()
    stat = path.stat()
    key = [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    cache = Path(cache_dir) / f"{hashlib.sha256(os.fsencode(path)).hexdigest()[:32]}.json"
    try:
        cached = json.loads(cache.read_text())
        if cached["path"] == str(path) and cached["key"] == key:
            return cached["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no cache yet, or an unreadable one: hash again
    fingerprint = f"sha256:{file_sha256(path)}"
    write_json(cache, {"path": str(path), "key": key, "fingerprint": fingerprint})
    return fingerprint
