"""Time in a Wireshark CSV export: local times with their timezone, impossible times, jumps,
and normalization of traces spanning any time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import REPO
from trace_files import assert_clean, export, packet, packets, validate

from tracelab.core.packets import read_staged
from tracelab.ingest.normalize import normalize_trace

BERLIN = ZoneInfo("Europe/Berlin")


def staged_ns(run) -> list[int]:
    return read_staged(run.paths["staged_path"]).column("ts").cast(pa.int64()).to_pylist()


def utc_ns(local: datetime) -> int:
    """An aware datetime as ns since the epoch, by Python's own arithmetic."""
    delta = local.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1_000


def test_bundled_trace_in_berlin_is_one_hour_earlier_than_in_utc(tmp_path):
    data = (REPO / "data/log4j_scan.csv.gz").read_bytes()
    (tmp_path / "utc").mkdir()
    (tmp_path / "berlin").mkdir()
    utc = validate(tmp_path / "utc", data, name="t.csv.gz")
    berlin = validate(tmp_path / "berlin", data, name="t.csv.gz", timezone="Europe/Berlin")
    assert utc.error is None and berlin.error is None, str(utc.error or berlin.error)
    assert berlin.report["rows_valid"] == utc.report["rows_valid"] > 1000
    hour = 3_600 * 10**9
    assert [u - b for u, b in zip(staged_ns(utc), staged_ns(berlin))] == \
        [hour] * utc.report["rows_valid"]
    assert berlin.report["local_times"]["ambiguous_rows"] == 0


def test_times_skipped_by_spring_forward_are_rejected(tmp_path):
    # Berlin, 2026-03-29: 02:00 local does not exist (the clocks go from 02:00 to 03:00).
    times = ["2026-03-29 01:59:59.500000", "2026-03-29 02:00:00.000000",
             "2026-03-29 02:30:00.250000", "2026-03-29 03:00:00.000000"]
    rows = packets() + [packet(301 + i, time=t) for i, t in enumerate(times)]
    run = validate(tmp_path, export(rows), timezone="Europe/Berlin", max_invalid_fraction=0.05)
    invalid = assert_clean(run, {"Time exists": 2})
    assert invalid.column("location").to_pylist() == ["line 303", "line 304"]
    assert invalid.column("Time").to_pylist() == times[1:3]
    kept = staged_ns(run)[-2:]
    assert kept == [utc_ns(datetime(2026, 3, 29, 1, 59, 59, 500000, tzinfo=BERLIN)),
                    utc_ns(datetime(2026, 3, 29, 3, 0, 0, tzinfo=BERLIN))]


def test_the_repeated_hour_of_fall_back_is_read_from_the_packet_order(tmp_path):
    # Berlin, 2026-10-25: 02:00-03:00 local happens twice (CEST, UTC+2, then CET, UTC+1).
    # Packets every 10 minutes from 01:40 CEST to 03:10 CET, with a little jitter backwards.
    start = datetime(2026, 10, 24, 23, 40, tzinfo=UTC)
    moments = [start + timedelta(minutes=10 * i) for i in range(13)]
    moments.insert(4, moments[3] - timedelta(milliseconds=3))  # jitter, not the clock change
    times = [m.astimezone(BERLIN).strftime("%Y-%m-%d %H:%M:%S.%f") for m in moments]
    rows = [packet(i + 1, time=t) for i, t in enumerate(times)]
    run = validate(tmp_path, export(rows), timezone="Europe/Berlin")
    assert_clean(run, {})
    assert staged_ns(run) == [utc_ns(m) for m in moments]
    # zoneinfo says which local times are ambiguous, and which of them are summer time.
    local_times = [m.astimezone(BERLIN) for m in moments]
    ambiguous = [t for t in local_times
                 if t.replace(fold=0).utcoffset() != t.replace(fold=1).utcoffset()]
    summer = [t for t in ambiguous if t.dst()]
    assert (len(ambiguous), len(summer)) == (12, 7)
    local = run.report["local_times"]
    assert (local["ambiguous_rows"], local["read_as_daylight_saving_time"],
            local["read_as_standard_time"]) == (12, 7, 5)


@pytest.mark.parametrize("bad_time", ["1970-01-01 00:00:00", "0", "86399.999999",
                                      "1900-01-01 12:00:00", "2100-01-01 00:00:00",
                                      "2150-06-01 00:00:00.5", "4102444800"])
def test_impossible_times_are_rejected_as_out_of_range(tmp_path, bad_time):
    run = validate(tmp_path, export(packets()[:150] + [packet(151, time=bad_time)] +
                                    packets(149, start=152)))
    invalid = assert_clean(run, {"Time in range": 1})
    assert invalid.column("location").to_pylist() == ["line 152"]


def test_the_range_bounds_themselves(tmp_path):
    rows = [packet(1, time="1970-01-02 00:00:00"), packet(2, time="2099-12-31 23:59:59.999999")]
    assert_clean(validate(tmp_path, export(rows)), {})


def test_a_forward_jump_far_beyond_the_usual_steps_is_counted(tmp_path):
    rows = packets()
    rows[200][1] = "2027-02-03 07:56:30.000200"  # a wrong year and month: ~67 days later
    run = validate(tmp_path, export(rows))
    assert_clean(run, {})
    jumps = run.report["time_jumps"]
    assert jumps["count"] == 1 and jumps["examples"][0]["line"] == 202
    assert jumps["examples"][0]["by_s"] > 60 * 86_400
    assert run.report["time_backwards"]["count"] == GOOD_AFTER(200)


def GOOD_AFTER(row: int) -> int:
    return 300 - row - 1


def test_usual_pauses_are_not_jumps(tmp_path):
    rows = [packet(n, time=f"2026-11-28 {7 + n // 60:02d}:{n % 60:02d}:00") for n in
            range(1, 301)]
    run = validate(tmp_path, export(rows))
    assert_clean(run, {})
    assert run.report["time_jumps"]["count"] == 0


@pytest.mark.parametrize("span_days", [103, 105, 3650, 47_000])
def test_normalization_of_any_span_is_exact(tmp_path, span_days):
    first = datetime(1970, 1, 2, tzinfo=UTC) + timedelta(microseconds=123)
    moments = [first, first + timedelta(seconds=1, microseconds=1),
               first + timedelta(days=span_days, microseconds=7)]
    rows = [packet(i + 1, time=m.strftime("%Y-%m-%d %H:%M:%S.%f")) for i, m in
            enumerate(moments)]
    run = validate(tmp_path, export(rows))
    assert_clean(run, {})
    out = tmp_path / "p.parquet"
    normalize_trace(trace="t", staged_path=run.paths["staged_path"], source=run.source,
                    source_format="wireshark_csv", packets_path=out)
    t_rel = pq.read_table(out).column("t_rel_s").to_pylist()
    # Python's int arithmetic, then one rounding to the nearest double.
    expected = [(utc_ns(m) - utc_ns(first)) / 10**9 for m in moments]
    assert t_rel == expected
    assert pc.min(pq.read_table(out).column("ts")).as_py() == first
