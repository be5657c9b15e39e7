"""Row checks of a Wireshark CSV export added with issue 11: exact duplicates, and a sheet path
pointing at a file that is not an export."""

from __future__ import annotations

import os

import pytest
from trace_files import assert_clean, assert_one_clear_error, export, packets, validate

from tracelab.ingest.export.duplicates import DUPLICATE_LOOKBACK


def renumbered_copy(rows, original: int, at: int):
    """`rows` with a copy of row `original` (0-based) inserted at `at`, every No. renumbered."""
    rows = [list(r) for r in rows]
    rows.insert(at, list(rows[original]))
    for number, row in enumerate(rows, start=1):
        row[0] = str(number)
    return rows


@pytest.mark.parametrize("distance", [1, 5, DUPLICATE_LOOKBACK])
def test_a_renumbered_exact_copy_is_a_duplicate_of_its_line(tmp_path, distance):
    rows = renumbered_copy(packets(), 99, 99 + distance)
    invalid = assert_clean(validate(tmp_path, export(rows)), {"duplicate": 1})
    copy_line = 100 + distance + 1
    assert invalid.column("location").to_pylist() == [f"line {copy_line}"]
    assert invalid.column("reason").to_pylist() == ["duplicate of line 101"]


def test_copies_further_back_than_the_lookback_are_not_looked_for(tmp_path):
    rows = renumbered_copy(packets(), 99, 99 + DUPLICATE_LOOKBACK + 1)
    assert_clean(validate(tmp_path, export(rows)), {})


@pytest.mark.parametrize("field", [2, 3, 4, 5, 6])
def test_rows_differing_in_one_field_are_not_duplicates(tmp_path, field):
    rows = renumbered_copy(packets(), 99, 100)
    rows[100][field] = rows[100][field] + "0"
    assert_clean(validate(tmp_path, export(rows)), {})


def test_duplicates_across_batches(tmp_path):
    rows = packets(3000)
    rows = renumbered_copy(rows, 1499, 1501)
    invalid = assert_clean(validate(tmp_path, export(rows), batch_bytes=65536),
                           {"duplicate": 1})
    assert invalid.column("reason").to_pylist() == ["duplicate of line 1501"]


# As /etc/passwd is laid out, with names that appear nowhere else.
FOREIGN = b"zorbatron:x:0:0:Quuxley:/home/zorbatron:/bin/bash\nwimblex:x:1:1::/:/bin/sh\n"


def test_a_path_to_a_file_that_is_not_an_export_is_not_quoted(tmp_path):
    secret = tmp_path / "system-file"
    secret.write_bytes(FOREIGN)
    link = tmp_path / "trace.csv"
    os.symlink(secret, link)
    run = validate(tmp_path, None)
    message = assert_one_clear_error(run, "columns", row=1)
    assert "first line is not a CSV header with the expected columns" in message
    kept = run.paths["log_report_path"].read_text()
    for text in ("zorbatron", "Quuxley", "bash", "wimblex"):
        assert text not in message and text not in kept
