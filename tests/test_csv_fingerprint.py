"""A trace file replaced by other content with an older mtime (`cp -p`, `tar x`) reruns its
chain: the validation rule takes the source's content fingerprint as a param."""

from __future__ import annotations

import os

from conftest import edited, planned_jobs

from tracelab.core.fingerprint import content_fingerprint

TRACE = "log4j_scan"


def test_fingerprint_follows_the_content_not_the_metadata(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"a" * 1000)
    cache = tmp_path / "cache"
    first = content_fingerprint(path, cache)
    os.chmod(path, 0o600)
    os.utime(path, ns=(1, 1))
    assert content_fingerprint(path, cache) == first  # metadata only: same content
    stat = path.stat()
    path.write_bytes(b"b" * 1000)  # same size, then the old times back, as cp -p leaves them
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert content_fingerprint(path, cache) != first


def test_cp_p_replacement_with_an_older_mtime_reruns_the_trace(bundled):
    target = f"results/features/{TRACE}/summary.json"
    assert planned_jobs(bundled, target) == {}
    source = bundled / f"data/{TRACE}.csv.gz"
    old = source.stat()
    other = (bundled / "data/web_browsing.csv.gz").read_bytes()
    with edited(source, lambda _: other):
        os.utime(source, ns=(old.st_atime_ns, old.st_mtime_ns - 10**12))  # older than outputs
        planned = planned_jobs(bundled, target)
    assert {"validate_trace": 1, "normalize_trace": 1, "trace_features": 1}.items() \
        <= planned.items(), planned
