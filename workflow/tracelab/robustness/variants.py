"""Stage: the window matrices of every perturbed copy of one trace, and what each changed.

One job a trace, whatever the number of perturbations: the packet table is read once (after a
pass over a few columns for `TraceFacts`; a sample is read as below), each row group perturbed
by every perturbation. A trace within one connection partition keeps its row groups in memory
and makes each copy in turn through the security stages' own functions (connections, then
windows), without files; a larger one appends each row group's copies to scratch files, then
runs each copy through the connection and window stages, one copy at a time, deleting its
files. In memory, the windows are totalled from the batches the window stage would read of the
copy's files, so they equal the streamed path's to the last bit (means of floats depend on
where batches end). Memory is that of the connection and window stages, plus the row groups
(in memory) or one row group per copy being written (streamed).

A perturbation that only moves every time by one offset or renames endpoints one-to-one
(`Perturbation.relabel`) cannot change which packets form which connection: it is applied to
the original's connections and requests instead of assembling them again, which skips the
dearest step. Where its renaming is not one-to-one on this trace (two names for one address),
its copy is assembled again like the others. A copy in which the perturbation changed no value
(a microsecond clock on a microsecond export) is the original, and keeps its windows.

A trace of more than `robustness.sample_packets` packets is measured on a sample
(`tracelab.robustness.sample`): the run of whole windows around its middle that holds at most
that many packets, chosen from the time column, and read from the row groups it reaches only.
The copies are made of the sample, in memory, and compared with the sample's own windows (its
connections assembled as the connection stage would assemble a trace of those packets alone),
so the cut at the sample's two ends is in both sides of every comparison and in neither's
difference: the trace's own connections, requests and windows are not read. The windows every
copy is compared with are written as the trace's baseline: its own windows, or the sample's.

The record of a copy says which packets it kept, how its time maps back to the original's
(first packet and scale, so that its windows can be matched with the original windows they
cover) and how many values of each column it changed.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracelab.core.atomic import atomic_path, write_json
from tracelab.core.packets import PACKET_SCHEMA, WRITE_OPTIONS
from tracelab.core.streaming import derived_row_groups, non_empty_groups, time_ranges
from tracelab.core.tables import TableParts
from tracelab.robustness.bootstrap import job_seed
from tracelab.robustness.perturbations import (
    PERTURBATIONS,
    PerturbationContext,
    Relabel,
    TraceFacts,
    WindowTally,
    facts_of,
    gather_facts,
    time_span,
    timestamps_ns,
)
from tracelab.robustness.sample import Sample, is_sampled, middle_run
from tracelab.security import connections
from tracelab.security import windows as window_stage

log = logging.getLogger(__name__)

# A copy holds every column of the packet table but the time since its first packet, which a
# cut or a stretch would change and no later stage reads.
COPY_COLUMNS = [name for name in PACKET_SCHEMA.names if name != "t_rel_s"]
# How a copy's connections were made (its record's `connections`).
UNCHANGED = "unchanged: the original's windows"
ASSEMBLED = "assembled again"
RELABELLED = "the original's, relabelled"


def _differs(before: pa.ChunkedArray, after: pa.ChunkedArray) -> int:
    """Rows whose value changed (null to value and back count; null to null does not)."""
    if pa.types.is_dictionary(before.type):
        before, after = before.cast(pa.string()), after.cast(pa.string())
    same = pc.fill_null(pc.equal(before, after), False)
    both_null = pc.and_(pc.is_null(before), pc.is_null(after))
    return int(pc.sum(pc.invert(pc.or_(same, both_null))).as_py() or 0)


@dataclass
class Record:
    """What one perturbation did to a trace, added up row group by row group."""

    packets_in: int = 0
    packets_out: int = 0
    kept: list = field(default_factory=lambda: [np.iinfo(np.int64).max, np.iinfo(np.int64).min])
    moved: list = field(default_factory=lambda: [np.iinfo(np.int64).max, np.iinfo(np.int64).min])
    changed: dict = field(default_factory=dict)

    def add(self, original: pa.Table, perturbed: pa.Table) -> None:
        kept = original
        # Most perturbations keep every row in place: no lookup and no copy then.
        if not perturbed.column("frame").equals(original.column("frame")):
            position = pc.index_in(perturbed.column("frame"), value_set=original.column("frame"))
            if position.null_count:
                raise ValueError("a perturbation added packets; it may only keep or change them")
            kept = original.take(position)
        self.packets_in += original.num_rows
        self.packets_out += perturbed.num_rows
        for span, ts in ((self.kept, timestamps_ns(kept)), (self.moved, timestamps_ns(perturbed))):
            if ts.size:
                span[:] = [min(span[0], int(ts.min())), max(span[1], int(ts.max()))]
        for name in original.schema.names:
            before, after = kept.column(name), perturbed.column(name)
            # Arrow's equals compares buffers: a column left as it was costs no comparison.
            differs = 0 if before.equals(after) else _differs(before, after)
            self.changed[name] = self.changed.get(name, 0) + differs

    def unchanged(self) -> bool:
        return self.packets_out == self.packets_in and not any(self.changed.values())

    def summary(self) -> dict:
        """The record as written; `time_map`: a time t of the copy stood at
        original_from_ns + (t - perturbed_from_ns) / scale in the original."""
        empty = self.packets_out == 0
        kept_span, moved_span = self.kept[1] - self.kept[0], self.moved[1] - self.moved[0]
        return {
            "packets_in": self.packets_in, "packets_out": self.packets_out,
            "kept_from": None if empty else self.kept[0],
            "kept_to": None if empty else self.kept[1],
            "time_offset_ns": 0 if empty else self.moved[0] - self.kept[0],
            "time_map": {"original_from_ns": 0 if empty else self.kept[0],
                         "perturbed_from_ns": 0 if empty else self.moved[0],
                         "scale": moved_span / kept_span if not empty and kept_span > 0 else 1.0},
            "changed": self.changed}


@dataclass
class Copy:
    """One perturbed copy of the trace: its record, the relabelling applied to the original's
    connections instead of assembling it again, and its scratch file when it is streamed."""

    name: str
    context: PerturbationContext
    mapping: Relabel | None  # a relabelling perturbation's change, worked out once
    relabel: Relabel | None  # ...when it is applied after assembly
    record: Record = field(default_factory=Record)
    packets: Path | None = None
    writer: pq.ParquetWriter | None = None

    def perturbed(self, rows: pa.Table) -> pa.Table:
        """`rows` perturbed, and recorded."""
        perturbed = PERTURBATIONS[self.name].func(rows, self.context) if self.mapping is None \
            else self.mapping.apply(rows, *ROW_LABELS)
        self.record.add(rows, perturbed)
        return perturbed

    @property
    def made(self) -> str:
        """How its connections were made, when it changed something (else UNCHANGED)."""
        return ASSEMBLED if self.relabel is None else RELABELLED

    def stream_to(self, path: Path, schema: pa.Schema) -> None:
        self.packets, self.writer = path, pq.ParquetWriter(path, schema, **WRITE_OPTIONS)

    def add(self, rows: pa.Table) -> None:
        self.writer.write_table(self.perturbed(rows))


def open_copies(perturbations: list[str], contexts: dict, endpoints: list[str]) -> list[Copy]:
    copies = []
    for name in perturbations:
        make = PERTURBATIONS[name].relabel
        mapping = make(contexts[name]) if make else None
        relabel = mapping if mapping is not None and mapping.one_to_one(endpoints) else None
        if mapping is not None and relabel is None:
            log.info("%s: not one-to-one on this trace; its connections are assembled again", name)
        copies.append(Copy(name, contexts[name], mapping, relabel))
    return copies


# The time and address columns a relabelling changes: of packets and requests alike, and of
# connections.
ROW_LABELS = (("ts",), ("src", "dst"))
FLOW_LABELS = (("first_ts", "last_ts"), ("orig", "resp"))


@dataclass(frozen=True)
class Baseline:
    """What the copies are compared with and what a relabelled copy starts from: the windows,
    connections and requests of the packets the copies were made of, as the trace's files or,
    for a sample, as tables."""

    windows: Path
    flows: Path | pa.Table
    requests: Path | pa.Table

    def relabelled(self, relabel: Relabel) -> tuple[pa.Table, pa.Table]:
        """(connections, requests) relabelled."""
        return (_relabelled_table(self.flows, relabel, FLOW_LABELS),
                _relabelled_table(self.requests, relabel, ROW_LABELS))


def _relabelled_table(source: Path | pa.Table, relabel: Relabel, labels: tuple) -> pa.Table:
    """A table relabelled; a file's a chunk a row group, as the window stage reads its batches."""
    if isinstance(source, pa.Table):
        return relabel.apply(source, *labels)
    return pa.concat_tables(relabelled(source, relabel, labels))


def relabelled(source: Path, relabel: Relabel, labels: tuple) -> Iterator[pa.Table]:
    """A file of connections or requests relabelled, row group by row group."""
    parquet = pq.ParquetFile(source)
    for group in range(parquet.num_row_groups):
        yield relabel.apply(parquet.read_row_group(group), *labels)


def relabel_table(source: Path, destination, relabel: Relabel, labels: tuple) -> None:
    with pq.ParquetWriter(destination, pq.read_schema(source)) as writer:
        for rows in relabelled(source, relabel, labels):
            writer.write_table(rows)


def _unchanged(baseline: Baseline, windows_path) -> str:
    with atomic_path(windows_path) as tmp:
        shutil.copyfile(baseline.windows, tmp)
    return UNCHANGED


def copy_windows(copy: Copy, trace: str, baseline: Baseline, windows_path, settings: dict,
                 scratch: Path) -> str:
    """The window matrix of a streamed copy, and how its connections were made: the baseline's
    windows where the perturbation changed no value on this trace (a µs clock on a µs export),
    else its connections assembled again or the baseline's relabelled."""
    flows_path = scratch / f"{copy.name}.flows.parquet"
    http_path = scratch / f"{copy.name}.http.parquet"
    if copy.record.unchanged():
        copy.packets.unlink()
        return _unchanged(baseline, windows_path)
    if copy.relabel is None:
        connections.write_connections(trace=trace, packets_path=copy.packets,
                                      flows_path=flows_path, http_path=http_path,
                                      settings=settings["flows"])
    else:
        relabel_table(baseline.flows, flows_path, copy.relabel, FLOW_LABELS)
        relabel_table(baseline.requests, http_path, copy.relabel, ROW_LABELS)
    window_stage.write_windows(trace=trace, packets_path=copy.packets, flows_path=flows_path,
                               http_path=http_path, windows_path=windows_path,
                               settings=settings["windows"])
    for path in (copy.packets, flows_path, http_path):
        path.unlink()
    return copy.made


def assembled(groups: list[pa.Table], trace: str, settings: dict) -> tuple[pa.Table, pa.Table]:
    """(connections, requests) of packets held in memory, as the connection stage makes them
    of a partition (unchecked: only their windows are kept, and checked)."""
    packets = pa.concat_tables(groups)
    made = connections.assemble_connections(packets.select(connections.PACKET_COLUMNS),
                                            connections.flow_settings(settings["flows"]), trace)
    return connections.conformed_tables(packets, made, trace)


@dataclass(frozen=True)
class WindowsFile:
    """Where a windows table goes, and what writes it (`Table.write`'s arguments; None: the
    table's own `write`)."""

    path: Path
    write: Callable | None = None


def memory_windows(copy: Copy, trace: str, groups: list[pa.Table], baseline: Baseline,
                   settings: dict, windows: WindowsFile) -> str:
    """As `copy_windows`, for a copy held in memory (the row groups of the packets, each
    perturbed as a streamed copy's are): the same connection and window functions on the same
    batches, without the scratch files, so the same windows to the last bit."""
    perturbed = [copy.perturbed(rows) for rows in groups]
    if copy.record.unchanged():
        return _unchanged(baseline, windows.path)
    flows, requests = assembled(perturbed, trace, settings) if copy.relabel is None \
        else baseline.relabelled(copy.relabel)
    write_totals(trace, perturbed, flows, requests, settings, windows)
    return copy.made


def write_totals(trace: str, groups: list[pa.Table], flows: pa.Table, requests: pa.Table,
                 settings: dict, windows: WindowsFile) -> None:
    chosen = window_stage.window_settings(settings["windows"])
    window_stage.write_window_matrix(
        trace, window_stage.table_totals(groups, flows, requests, chosen), chosen, windows.path,
        windows.write)


def streamed_windows(copies: list[Copy], parquet: pq.ParquetFile, scratch: Path, trace: str,
                     baseline: Baseline, windows_paths: list, settings: dict) -> list[str]:
    """Every copy's windows, the packet table read once row group by row group: each group
    perturbed by every perturbation and appended to that copy's scratch file."""
    schema = pa.schema([parquet.schema_arrow.field(name) for name in COPY_COLUMNS])
    for copy in copies:
        copy.stream_to(scratch / f"{copy.name}.packets.parquet", schema)
    for rows in derived_row_groups(parquet, COPY_COLUMNS, non_empty_groups(parquet)):
        for copy in copies:
            copy.add(rows)
    for copy in copies:
        copy.writer.close()
    return [copy_windows(copy, trace, baseline, path, settings, scratch)
            for copy, path in zip(copies, windows_paths)]


@dataclass(frozen=True)
class Packets:
    """What the copies are made of, with its TraceFacts: the trace's packet table, its row
    groups held in memory (`groups`) or not, or the sample of it (always in memory)."""

    parquet: pq.ParquetFile
    facts: TraceFacts
    sample: Sample | None
    groups: list[pa.Table] | None


def packets_to_copy(packets_path, window_s: float, budget: int | None,
                    in_memory: int) -> Packets:
    """The trace's packets, held in memory within `in_memory` packets (the connection stage's
    partition), or the middle run of windows within `budget` packets (always in memory). A
    table held whole is read once, its facts gathered from the rows held."""
    parquet = pq.ParquetFile(packets_path)
    groups = non_empty_groups(parquet)
    rows = parquet.metadata.num_rows
    if is_sampled(rows, budget):
        return sampled_packets(parquet, groups, window_s, budget)
    if rows <= in_memory:
        held = list(derived_row_groups(parquet, COPY_COLUMNS, groups))
        return Packets(parquet, facts_of(held, *time_span(parquet, groups), window_s), None,
                       held)
    return Packets(parquet, gather_facts(packets_path, window_s), None, None)


def sampled_packets(parquet: pq.ParquetFile, groups: list[int], window_s: float,
                    budget: int) -> Packets:
    """The middle run of windows within `budget` packets, held in memory, with its facts. The
    run is chosen from the time column alone, and only the row groups whose times reach into
    it are read whole (from the file's statistics): the rest of a large trace is never
    decoded."""
    ranges = time_ranges(parquet, groups)  # a sampled table has rows: groups, ranges
    first_ns = min(low for low, _ in ranges)
    tally = WindowTally(first_ns, window_s)
    for rows in derived_row_groups(parquet, ["ts"], groups):
        tally.add(rows)
    sample = middle_run(*tally.occupied(), budget)
    start, stop = sample.span_ns(first_ns, window_s)
    reaching = [group for group, (low, high) in zip(groups, ranges)
                if high >= start and low < stop]
    kept = [sample.within(rows, first_ns, window_s) for rows in
            derived_row_groups(parquet, COPY_COLUMNS, reaching)]
    kept = [rows for rows in kept if rows.num_rows]
    span = pc.min_max(pa.chunked_array([rows.column("ts") for rows in kept]).cast(pa.int64()))
    facts = facts_of(kept, span["min"].as_py(), span["max"].as_py(), window_s)
    return Packets(parquet, facts, sample, kept)


def baseline_of(packets: Packets, trace: str, originals: dict, baseline_path,
                settings: dict) -> Baseline:
    """The baseline the copies are compared with, written to `baseline_path`: the trace's own
    windows (`originals`: its windows, connections and requests files), or the sample's, its
    connections assembled (the originals are not read, and may be None)."""
    if packets.sample is None:
        missing = sorted(name for name, path in originals.items() if path is None)
        if missing:
            raise ValueError(f"{trace}: its copies are made of the whole trace, which needs "
                             f"the original's {', '.join(missing)} (only a sampled trace's "
                             f"copies go without: tracelab.robustness.sample)")
        with atomic_path(baseline_path) as tmp:
            shutil.copyfile(originals["windows"], tmp)
        return Baseline(Path(baseline_path), Path(originals["flows"]), Path(originals["http"]))
    flows, requests = assembled(packets.groups, trace, settings)
    write_totals(trace, packets.groups, flows, requests, settings,
                 WindowsFile(Path(baseline_path)))
    return Baseline(Path(baseline_path), flows, requests)


def write_variants(*, trace: str, perturbations: list[str], packets_path, windows_paths: list,
                   baseline_path, records_path, parameters: dict, seed: int,
                   sample_packets: int | None, settings: dict, flows_path=None, http_path=None,
                   original_windows_path=None) -> dict:
    """Stage: results/robustness/{trace}/{perturbation}/windows.parquet for every perturbation,
    the baseline they are compared with (results/robustness/{trace}/baseline.parquet) and
    results/robustness/{trace}/perturbations.json (`settings`: the config's `security` section,
    whose flows and windows settings the copies share with the original). The original's
    connections, requests and windows are needed unless the trace is sampled
    (`tracelab.robustness.sample.is_sampled`)."""
    chosen = window_stage.window_settings(settings["windows"])
    packets = packets_to_copy(packets_path, chosen.window_s, sample_packets,
                              connections.flow_settings(settings["flows"]).partition_packets)
    if packets.sample is not None:
        log.info("%s: copies made of windows %d-%d of the trace, %d of its %d packets", trace,
                 packets.sample.first_window, packets.sample.stop_window - 1,
                 packets.sample.packets, packets.sample.trace_packets)
    baseline = baseline_of(packets, trace, {"flows": flows_path, "http": http_path,
                                            "windows": original_windows_path},
                           baseline_path, settings)
    contexts = {name: PerturbationContext(
        seed=job_seed(seed, trace, name),
        params=parameters.get(name, {}), window_s=chosen.window_s,
        min_coverage=chosen.min_coverage, facts=packets.facts) for name in perturbations}
    copies = open_copies(perturbations, contexts, packets.facts.endpoints)
    if packets.groups is not None:
        # Checked together: a small trace's copies cost more in checks one by one than to make.
        parts = TableParts(window_stage.windows_table(window_stage.FEATURES))
        made = [memory_windows(copy, trace, packets.groups, baseline, settings,
                               WindowsFile(Path(path), parts.add))
                for copy, path in zip(copies, windows_paths)]
        parts.write()
    else:
        with tempfile.TemporaryDirectory(prefix=".variants-",
                                         dir=Path(windows_paths[0]).parent.parent) as scratch:
            made = streamed_windows(copies, packets.parquet, Path(scratch), trace, baseline,
                                    windows_paths, settings)
    sample = None if packets.sample is None else packets.sample.summary(chosen.window_s)
    records = {}
    for copy, connections_made in zip(copies, made):
        records[copy.name] = {
            "trace": trace, "perturbation": copy.name,
            "description": PERTURBATIONS[copy.name].description,
            "params": parameters.get(copy.name, {}), "connections": connections_made,
            "sample": sample, **copy.record.summary()}
        log.info("%s, %s: %d of %d packets kept, changed %s", trace, copy.name,
                 records[copy.name]["packets_out"], records[copy.name]["packets_in"],
                 {k: v for k, v in records[copy.name]["changed"].items() if v})
    write_json(records_path, records)
    return {"copies": len(records)}
