"""Synthetic Wireshark-style CSV exports: normal browsing mixed with scans, seeded and fast.

The flows and their rows are drawn as numbers by `tracelab.synth.export_flows`, chunk by chunk,
in time order. Here the seven columns are composed from them with Arrow string kernels and
streamed through pyarrow's CSV writer (on a second thread, gzip-compressed for a `.gz` path),
chunk by chunk, so memory does not grow with the trace; the time column is non-decreasing
across the whole file, and the same seed and options give the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import queue
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tracelab.core.atomic import atomic_path
from tracelab.synth.export_flows import (
    ADDRESSES,
    HEX4,
    INFO_PARTS,
    KIND_NAMES,
    KIND_PROTOCOL,
    NS,
    PROTOCOLS,
    SCAN_FLOWS,
    VOCABULARY,
    RowSource,
)

COLUMNS = ["No.", "Time", "Source", "Destination", "Protocol", "Length", "Info"]
ARROWS = {"gui": "  >  ", "tshark": " \u2192 "}
TIME_FORMATS = ("us", "ns", "epoch")
DEFAULT_START = "2026-11-28T08:00:00"


@dataclass(frozen=True)
class TraceOptions:
    packets: int
    seed: int = 0
    rate: float = 2000.0            # mean packets per second
    scan_share: float = 0.3         # share of flows that are scan flows
    start: str = DEFAULT_START      # UTC time of the first flow
    arrow: str = "gui"
    time_format: str = "us"
    chunk_rows: int = 1 << 19
    gzip_level: int = 1             # fast: the text compresses well at any level

    def __post_init__(self):
        if self.packets < 1:
            raise ValueError("packets must be at least 1")
        if self.arrow not in ARROWS:
            raise ValueError(f"arrow must be one of {sorted(ARROWS)}")
        if self.time_format not in TIME_FORMATS:
            raise ValueError(f"time_format must be one of {TIME_FORMATS}")
        if not 0.0 <= self.scan_share <= 1.0:
            raise ValueError("scan_share must be within [0, 1]")
        if self.rate <= 0 or self.chunk_rows < 1:
            raise ValueError("rate and chunk_rows must be positive")


@dataclass
class TraceSummary:
    path: str
    packets: int
    bytes: int = 0                  # sum of the Length column
    first_ts: str = ""
    last_ts: str = ""
    duration_s: float = 0.0
    protocol_counts: dict = field(default_factory=dict)
    flow_counts: dict = field(default_factory=dict)  # flows drawn, the last ones maybe cut short
    scan_packets: int = 0
    file_bytes: int = 0
    seconds: float = 0.0


# --- Formatting --------------------------------------------------------------------------------


def _as_string(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def _times(ts_ns: np.ndarray, time_format: str) -> pa.Array:
    seconds, fraction = np.divmod(ts_ns, NS)
    digits = 9 if time_format == "ns" else 6
    if digits == 6:
        fraction //= 1000
    fraction_text = pc.utf8_lpad(_as_string(fraction), digits, "0")
    if time_format == "epoch":
        whole = _as_string(seconds)
    else:
        # rows are in time order: format each distinct second once
        new_second = np.ones(len(seconds), bool)
        new_second[1:] = seconds[1:] != seconds[:-1]
        distinct = seconds[new_second]
        labels = pc.strftime(pa.array(distinct, pa.timestamp("s")), format="%Y-%m-%d %H:%M:%S")
        whole = labels.take(pa.array(np.cumsum(new_second) - 1))
    return pc.binary_join_element_wise(whole, fraction_text, ".")


def _info(rows: dict[str, np.ndarray], arrow: str) -> pa.Array:
    """Info for every row: each row kind's format applied to its rows, then put back in order."""
    kind = rows["kind"]
    n = len(kind)
    positions = np.argsort(kind, kind="stable")
    bounds = np.searchsorted(kind[positions], np.arange(len(KIND_NAMES) + 1))
    pieces = []
    for code, name in enumerate(KIND_NAMES):
        where = positions[bounds[code]:bounds[code + 1]]
        if len(where) == 0:
            continue
        args = []
        for literal, name_of_field in INFO_PARTS[name]:
            if literal:
                args.append(literal)
            if name_of_field is None:
                continue
            if name_of_field == "arrow":
                args.append(arrow)
            elif name_of_field in ("text", "text2"):
                args.append(VOCABULARY.take(pa.array(rows[name_of_field][where])))
            elif name_of_field == "answer":
                args.append(ADDRESSES.take(pa.array(rows["answer"][where])))
            elif name_of_field == "ident":
                args.append(HEX4.take(pa.array(rows["ident"][where])))
            else:
                args.append(_as_string(rows[name_of_field][where]))
        if any(isinstance(a, pa.Array) for a in args):
            pieces.append(pc.binary_join_element_wise(*args, ""))
        else:
            pieces.append(pa.nulls(len(where), pa.string()).fill_null("".join(args)))
    inverse = np.empty(n, np.int64)
    inverse[positions] = np.arange(n)
    return pa.concat_arrays(pieces).take(pa.array(inverse))


PROTOCOL_NAMES = pa.array(PROTOCOLS, pa.string())


def _table(rows: dict[str, np.ndarray], first_number: int, options: TraceOptions) -> pa.Table:
    n = len(rows["ts"])
    return pa.table([
        _as_string(np.arange(first_number, first_number + n)),
        _times(rows["ts"], options.time_format),
        ADDRESSES.take(pa.array(rows["src"])),
        ADDRESSES.take(pa.array(rows["dst"])),
        PROTOCOL_NAMES.take(pa.array(KIND_PROTOCOL[rows["kind"]])),
        _as_string(rows["length"]),
        _info(rows, ARROWS[options.arrow]),
    ], names=COLUMNS)


class _BackgroundWriter:
    """Formats and compresses chunks on a second thread while the next chunk is drawn."""

    def __init__(self, path: Path, gzip_level: int | None):
        self._raw = open(path, "wb")
        self._file = (gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0,
                                    compresslevel=gzip_level)
                      if gzip_level is not None else self._raw)
        self._sink = pa.PythonFile(self._file, mode="w")
        self._writer = None
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while (table := self._queue.get()) is not None:
                if self._writer is None:
                    self._writer = pacsv.CSVWriter(
                        self._sink, table.schema,
                        write_options=pacsv.WriteOptions(quoting_style="all_valid",
                                                         batch_size=1 << 16))
                self._writer.write_table(table)
        except BaseException as error:  # re-raised in the generating thread
            self._error = error
            while self._queue.get() is not None:
                pass

    def write(self, table: pa.Table) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(table)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._writer is not None:
            self._writer.close()
        self._sink.close()
        if self._file is not self._raw:
            self._file.close()
        self._raw.close()
        if self._error is not None:
            raise self._error


def generate_trace(path, options: TraceOptions) -> TraceSummary:
    """Write a synthetic Wireshark CSV export of `options.packets` packets to `path`.

    Gzip-compressed when `path` ends in `.gz`. Returns what was written, counted on the way.
    """
    began = time.perf_counter()
    path = Path(path)
    source = RowSource(options)
    summary = TraceSummary(path=str(path), packets=options.packets)
    protocol_counts = np.zeros(len(PROTOCOLS), np.int64)
    is_scan = np.array([name in SCAN_FLOWS for name in source.names])
    written = 0
    first_ts = last_ts = None
    with atomic_path(path) as tmp:
        writer = _BackgroundWriter(tmp, options.gzip_level if path.suffix == ".gz" else None)
        try:
            while written < options.packets:
                rows = source.next_rows(options.packets - written)
                writer.write(_table(rows, written + 1, options))
                written += len(rows["ts"])
                first_ts = rows["ts"][0] if first_ts is None else first_ts
                last_ts = rows["ts"][-1]
                summary.bytes += int(rows["length"].sum())
                protocol_counts += np.bincount(KIND_PROTOCOL[rows["kind"]],
                                               minlength=len(PROTOCOLS))
                summary.scan_packets += int(is_scan[rows["flow"]].sum())
        finally:
            writer.close()
        tmp.chmod(0o644)  # a data file like any other, not mkstemp's private mode
    summary.first_ts = str(np.datetime64(int(first_ts), "ns")) + "Z"
    summary.last_ts = str(np.datetime64(int(last_ts), "ns")) + "Z"
    summary.duration_s = (int(last_ts) - int(first_ts)) / NS
    summary.protocol_counts = {p: int(c) for p, c in zip(PROTOCOLS, protocol_counts) if c}
    summary.flow_counts = {k: v for k, v in source.flow_counts.items() if v}
    summary.file_bytes = path.stat().st_size
    summary.seconds = round(time.perf_counter() - began, 3)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tracelab.synth",
        description="Write a synthetic Wireshark CSV export: normal browsing mixed with scans.")
    parser.add_argument("--packets", type=int, required=True, help="rows to write")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--out", required=True, help="output path; gzip when it ends in .gz")
    parser.add_argument("--arrow", choices=sorted(ARROWS), default="gui",
                        help="port separator: GUI export '  >  ' or tshark '\u2192'")
    parser.add_argument("--time-format", choices=TIME_FORMATS, default="us",
                        help="date and time with us or ns digits, or seconds since the epoch")
    parser.add_argument("--rate", type=float, default=TraceOptions.rate,
                        help="mean packets per second")
    parser.add_argument("--scan-share", type=float, default=TraceOptions.scan_share,
                        help="share of flows that are scan flows")
    parser.add_argument("--start", default=DEFAULT_START, help="UTC start, ISO 8601")
    parser.add_argument("--chunk-rows", type=int, default=TraceOptions.chunk_rows,
                        help="rows drawn per chunk (peak memory is about 1.2 KiB a row)")
    parser.add_argument("--gzip-level", type=int, default=TraceOptions.gzip_level)
    args = parser.parse_args(argv)
    options = TraceOptions(packets=args.packets, seed=args.seed, rate=args.rate,
                           scan_share=args.scan_share, start=args.start, arrow=args.arrow,
                           time_format=args.time_format, chunk_rows=args.chunk_rows,
                           gzip_level=args.gzip_level)
    summary = generate_trace(args.out, options)
    json.dump(asdict(summary), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
