"""Stage: the window matrices of every perturbed copy of one trace, and what each changed.

One job a trace, whatever the number of perturbations: the packet table is read once (after a
pass over a few columns for `TraceFacts`), each row group perturbed by every perturbation. A
trace within one connection partition keeps its row groups in memory and makes each copy in
turn through the security stages' own functions (connections, then windows), without files;
a larger one appends each row group's copies to scratch files, then runs each copy through the
connection and window stages, one copy at a time, deleting its files. In memory, the windows
are totalled from the batches the window stage would read of the copy's files, so they equal
the streamed path's to the last bit (means of floats depend on where batches end). Memory is that of
the connection and window stages, plus the row groups (in memory) or one row group per copy
being written (streamed).

A perturbation that only moves every time by one offset or renames endpoints one-to-one
(`Perturbation.relabel`) cannot change which packets form which connection: it is applied to
the original's connections and requests instead of assembling them again, which skips the
dearest step. Where its renaming is not one-to-one on this trace (two names for one address),
its copy is assembled again like the others. A copy in which the perturbation changed no value
(a microsecond clock on a microsecond export) is the original, and keeps its windows.

The record of a copy says which packets it kept, how its time maps back to the original's
(first packet and scale, so that its windows can be matched with the original windows they
cover) and how many values of each column it changed.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracelab.core.atomic import atomic_path, write_json
from tracelab.core.packets import PACKET_SCHEMA, WRITE_OPTIONS
from tracelab.core.streaming import derived_row_groups, non_empty_groups
from tracelab.robustness.bootstrap import job_seed
from tracelab.robustness.perturbations import (
    PERTURBATIONS,
    PerturbationContext,
    Relabel,
    gather_facts,
    timestamps_ns,
)
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
            else self.mapping.apply(rows, ("ts",), ("src", "dst"))
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


def relabelled(source, relabel: Relabel, times: tuple, addresses: tuple) -> Iterator[pa.Table]:
    """A table of the original's (connections, requests) relabelled, row group by row group."""
    parquet = pq.ParquetFile(source)
    for group in range(parquet.num_row_groups):
        yield relabel.apply(parquet.read_row_group(group), times, addresses)


def relabel_table(source, destination, relabel: Relabel, times: tuple, addresses: tuple) -> None:
    with pq.ParquetWriter(destination, pq.read_schema(source)) as writer:
        for rows in relabelled(source, relabel, times, addresses):
            writer.write_table(rows)


def _unchanged(original_windows, windows_path) -> str:
    with atomic_path(windows_path) as tmp:
        shutil.copyfile(original_windows, tmp)
    return UNCHANGED


def copy_windows(copy: Copy, trace: str, originals: dict, windows_path, settings: dict,
                 scratch: Path) -> str:
    """The window matrix of a streamed copy, and how its connections were made: the original's
    windows where the perturbation changed no value on this trace (a µs clock on a µs export),
    else its connections assembled again or the original's relabelled."""
    flows_path = scratch / f"{copy.name}.flows.parquet"
    http_path = scratch / f"{copy.name}.http.parquet"
    if copy.record.unchanged():
        copy.packets.unlink()
        return _unchanged(originals["windows"], windows_path)
    if copy.relabel is None:
        connections.write_connections(trace=trace, packets_path=copy.packets,
                                      flows_path=flows_path, http_path=http_path,
                                      settings=settings["flows"])
    else:
        relabel_table(originals["flows"], flows_path, copy.relabel, ("first_ts", "last_ts"),
                      ("orig", "resp"))
        relabel_table(originals["http"], http_path, copy.relabel, ("ts",), ("src", "dst"))
    window_stage.write_windows(trace=trace, packets_path=copy.packets, flows_path=flows_path,
                               http_path=http_path, windows_path=windows_path,
                               settings=settings["windows"])
    for path in (copy.packets, flows_path, http_path):
        path.unlink()
    return copy.made


def memory_windows(copy: Copy, trace: str, groups: list[pa.Table], originals: dict,
                   windows_path, settings: dict) -> str:
    """As `copy_windows`, for a copy held in memory (the packet table's row groups, each
    perturbed as a streamed copy's are): the same connection and window functions on the same
    batches, without the scratch files, so the same windows to the last bit."""
    perturbed = [copy.perturbed(rows) for rows in groups]
    if copy.record.unchanged():
        return _unchanged(originals["windows"], windows_path)
    if copy.relabel is None:
        packets = pa.concat_tables(perturbed)
        assembled = connections.assemble_connections(
            packets.select(connections.PACKET_COLUMNS),
            connections.flow_settings(settings["flows"]), trace)
        flows, requests = connections.connection_tables(packets, assembled, trace)
    else:
        flows = pa.concat_tables(relabelled(originals["flows"], copy.relabel,
                                            ("first_ts", "last_ts"), ("orig", "resp")))
        # A chunk a row group: read in the batches a relabelled file's row groups give.
        requests = pa.concat_tables(relabelled(originals["http"], copy.relabel, ("ts",),
                                               ("src", "dst")))
    chosen = window_stage.window_settings(settings["windows"])
    window_stage.write_window_matrix(
        trace, window_stage.table_totals(perturbed, flows, requests, chosen), chosen,
        windows_path)
    return copy.made


def streamed_windows(copies: list[Copy], parquet: pq.ParquetFile, scratch: Path, trace: str,
                     originals: dict, windows_paths: list, settings: dict) -> list[str]:
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
    return [copy_windows(copy, trace, originals, path, settings, scratch)
            for copy, path in zip(copies, windows_paths)]


def write_variants(*, trace: str, perturbations: list[str], packets_path, flows_path, http_path,
                   original_windows_path, windows_paths: list, records_path, parameters: dict,
                   seed: int, settings: dict) -> dict:
    """Stage: results/robustness/{trace}/{perturbation}/windows.parquet for every perturbation,
    and results/robustness/{trace}/perturbations.json (`settings`: the config's `security`
    section, whose flows and windows settings the copies share with the original)."""
    chosen = window_stage.window_settings(settings["windows"])
    facts = gather_facts(packets_path, chosen.window_s)
    contexts = {name: PerturbationContext(
        seed=job_seed(seed, trace, name),
        params=parameters.get(name, {}), window_s=chosen.window_s,
        min_coverage=chosen.min_coverage, facts=facts) for name in perturbations}
    parquet = pq.ParquetFile(packets_path)
    copies = open_copies(perturbations, contexts, facts.endpoints)
    originals = {"flows": flows_path, "http": http_path, "windows": original_windows_path}
    if parquet.metadata.num_rows <= connections.flow_settings(settings["flows"]).partition_packets:
        # One partition: the connection stage holds the whole table too.
        groups = list(derived_row_groups(parquet, COPY_COLUMNS, non_empty_groups(parquet)))
        made = [memory_windows(copy, trace, groups, originals, path, settings)
                for copy, path in zip(copies, windows_paths)]
    else:
        with tempfile.TemporaryDirectory(prefix=".variants-",
                                         dir=Path(windows_paths[0]).parent.parent) as scratch:
            made = streamed_windows(copies, parquet, Path(scratch), trace, originals,
                                    windows_paths, settings)
    records = {}
    for copy, connections_made in zip(copies, made):
        records[copy.name] = {
            "trace": trace, "perturbation": copy.name,
            "description": PERTURBATIONS[copy.name].description,
            "params": parameters.get(copy.name, {}), "connections": connections_made,
            **copy.record.summary()}
        log.info("%s, %s: %d of %d packets kept, changed %s", trace, copy.name,
                 records[copy.name]["packets_out"], records[copy.name]["packets_in"],
                 {k: v for k, v in records[copy.name]["changed"].items() if v})
    write_json(records_path, records)
    return {"copies": len(records)}

