"""The Time column of an export: parsing, and local times read in the trace's timezone."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa_arrow
import pyarrow.compute as pc

from tracelab.core.tables import TIMESTAMP

ABSOLUTE_TIME = r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?$"
EPOCH_TIME = r"^(?P<seconds>\d{1,11})(?:\.(?P<fraction>\d{1,9}))?$"
# What timestamp[ns] holds (1677-09-21 .. 2262-04-11): whole years for dates, seconds for epochs.
NS_YEARS = (1678, 2261)
NS_EPOCH_SECONDS_MAX = 9_223_372_035


# In the hour a fall-back change repeats, the clock has gone back at the first row that is more
# than this earlier than a row before it in that hour (less is the jitter of a capture's clock).
FALL_BACK_STEP_NS = 60 * 10**9


@dataclass
class Times:
    """Time of a batch's rows as UTC ns, and what the trace's timezone leaves open.

    Where a local time is ambiguous (the hour repeated when the clocks go back), `ts` holds the
    earlier reading (daylight saving time) and `standard` the later; FallBack chooses.
    """

    ts: pa_arrow.Array
    formats: dict[str, int]
    nonexistent: np.ndarray  # rows of local times skipped when the clocks go forward
    ambiguous: np.ndarray  # rows of local times in a repeated hour
    naive: np.ndarray  # their local times as ns (as if UTC)
    standard: np.ndarray  # their later reading, UTC ns


def parse_time(raw: pa_arrow.Array, timezone: str) -> Times:
    """Parse Time into UTC ns timestamps (null where unparseable); count each format seen."""
    naive = _usual_calendar_time(raw)
    if naive is not None:
        return _localized(naive, timezone, None, {"absolute": len(raw), "epoch_seconds": 0})
    absolute = pc.fill_null(pc.match_substring_regex(raw, ABSOLUTE_TIME), False)
    epoch_parts = pc.extract_regex(raw, EPOCH_TIME)
    epoch = epoch_parts.is_valid()

    naive = _calendar_time(pc.if_else(absolute, raw, None))
    absolute = pc.and_(absolute, naive.is_valid())

    seconds = pc.cast(pc.if_else(epoch, epoch_parts.field("seconds"), None), pa_arrow.int64())
    epoch = pc.fill_null(pc.less_equal(seconds, NS_EPOCH_SECONDS_MAX), False)
    seconds = pc.if_else(epoch, seconds, None)
    fraction = pc.utf8_rpad(epoch_parts.field("fraction"), 9, "0")
    fraction_ns = pc.cast(pc.if_else(epoch, fraction, None), pa_arrow.int64())
    epoch_ns = pc.add(pc.multiply(seconds, 1_000_000_000), fraction_ns)
    formats = {"absolute": int(pc.sum(absolute).as_py() or 0),
               "epoch_seconds": int(pc.sum(epoch).as_py() or 0)}
    return _localized(naive, timezone, epoch_ns, formats)


def _localized(naive: pa_arrow.Array, timezone: str, epoch_ns: pa_arrow.Array | None,
               formats: dict[str, int]) -> Times:
    """Local dates and times (`naive`) read in `timezone`, then the epoch times (absolute
    already) where there is no date."""
    none = np.zeros(0, dtype=np.int64)
    if timezone == "UTC":
        ns = pc.cast(naive, pa_arrow.int64())
        nonexistent = ambiguous = naive_ns = standard = none
    else:
        def reading(ambiguous: str, nonexistent: str) -> pa_arrow.Array:
            local = pc.assume_timezone(naive, timezone, ambiguous=ambiguous,
                                       nonexistent=nonexistent)
            return pc.cast(local, pa_arrow.int64())

        ns = reading("earliest", "earliest")
        later = reading("latest", "earliest")
        nonexistent = np.flatnonzero(pc.fill_null(
            pc.not_equal(ns, reading("earliest", "latest")), False).to_numpy(
                zero_copy_only=False))
        ambiguous = np.flatnonzero(pc.fill_null(pc.not_equal(ns, later), False).to_numpy(
            zero_copy_only=False))
        naive_ns = pc.cast(naive, pa_arrow.int64()).to_numpy(zero_copy_only=False)[ambiguous]
        standard = later.to_numpy(zero_copy_only=False)[ambiguous]
    if epoch_ns is not None:
        ns = pc.coalesce(ns, epoch_ns)
    return Times(pc.cast(ns, TIMESTAMP), formats, nonexistent, ambiguous,
                  naive_ns.astype(np.int64), standard.astype(np.int64))


def _usual_calendar_time(raw: pa_arrow.Array) -> pa_arrow.Array | None:
    """The usual batch, every Time an absolute date and time, as naive ns timestamps; else None.

    Arrow's cast is strict ISO 8601: with at least 19 characters (seconds given) it takes
    exactly what ABSOLUTE_TIME matches, so no regex pass is needed (it cost 3/4 of the parse).
    """
    if not len(raw) or raw.null_count or pc.min(pc.binary_length(raw)).as_py() < 19:
        return None
    try:
        return pc.cast(raw, pa_arrow.timestamp("ns"))
    except pa_arrow.ArrowInvalid:
        return None


def _calendar_time(text: pa_arrow.Array) -> pa_arrow.Array:
    """`YYYY-MM-DD hh:mm:ss[.fraction]` as naive ns timestamps; null where no such moment exists.

    Arrow's cast is strict and fast but fails the whole array on one bad value (month 13,
    February 30, year 0001), so only then are the real dates found, by a strptime round trip
    and the years timestamp[ns] can hold.
    """
    try:
        return pc.cast(text, pa_arrow.timestamp("ns"))  # takes either " " or "T" before the time
    except pa_arrow.ArrowInvalid:
        pass
    text = pc.replace_substring(text, "T", " ")
    clock = pc.utf8_slice_codeunits(text, 0, 19)
    seconds = pc.strptime(clock, format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=True)
    real = pc.and_(pc.equal(pc.strftime(seconds, format="%Y-%m-%d %H:%M:%S"), clock),
                   pc.and_(pc.greater_equal(pc.year(seconds), NS_YEARS[0]),
                           pc.less_equal(pc.year(seconds), NS_YEARS[1])))
    return pc.cast(pc.if_else(pc.fill_null(real, False), text, None), pa_arrow.timestamp("ns"))


@dataclass
class FallBack:
    """Which reading each time of a repeated hour (clocks going back) takes, from the sequence.

    Packets come in time order: in the repeated hour, rows are daylight saving time until the
    first row more than FALL_BACK_STEP_NS earlier than a row before it in that hour (the clock
    went back); that row and the repeated-hour rows after it are standard time. The state is
    kept per local day, carried from batch to batch.
    """

    day: int | None = None
    latest_naive: int | None = None
    went_back: bool = False
    ambiguous_rows: int = 0
    read_as_standard: int = 0

    def resolve(self, times: Times) -> pa_arrow.Array:
        """The batch's UTC times with each ambiguous row's reading chosen."""
        if not times.ambiguous.size:
            return times.ts
        days = times.naive // (86_400 * 10**9)
        later = np.zeros(times.ambiguous.size, dtype=bool)
        _, first = np.unique(days, return_index=True)
        for day in days[np.sort(first)]:
            rows = np.flatnonzero(days == day)
            later[rows] = self._went_back(int(day), times.naive[rows])
        ns = times.ts.cast(pa_arrow.int64()).to_numpy(zero_copy_only=False).copy()
        ns[times.ambiguous[later]] = times.standard[later]
        self.ambiguous_rows += int(times.ambiguous.size)
        self.read_as_standard += int(later.sum())
        valid = times.ts.is_valid().to_numpy(zero_copy_only=False)
        return pa_arrow.array(ns, TIMESTAMP, mask=~valid)

    def _went_back(self, day: int, naive: np.ndarray) -> np.ndarray:
        if day != self.day:
            self.day, self.latest_naive, self.went_back = day, None, False
        latest = np.maximum.accumulate(naive)
        if self.latest_naive is not None:
            latest = np.maximum(latest, self.latest_naive)
        before = np.concatenate([[naive[0] if self.latest_naive is None else self.latest_naive],
                                 latest[:-1]])
        went_back = np.logical_or.accumulate(before - naive > FALL_BACK_STEP_NS) | self.went_back
        self.latest_naive, self.went_back = int(latest[-1]), bool(went_back[-1])
        return went_back

    def notes(self, timezone: str) -> dict:
        return {"timezone": timezone, "ambiguous_rows": self.ambiguous_rows,
                "read_as_standard_time": self.read_as_standard,
                "read_as_daylight_saving_time": self.ambiguous_rows - self.read_as_standard}
