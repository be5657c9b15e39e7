"""Streaming helpers: a Parquet table read row group by row group (each group's time range, its
rows in time order), integer ids for names met batch by batch, and exact distinct rows.

Packet tables are in source order, and a source's times may step back (within a row group and
across them). Stages that need time order read one row group at a time and hold back only the
rows a later row group may still precede: those at or after the earliest time of every later
group (from the file's min/max statistics, or one pass over the time column where a group has
none). Memory is bounded by a row group and the disorder across groups, never by the trace.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

NEVER = np.iinfo(np.int64).max
# Rows DistinctRows lets wait before it removes duplicates again (at least; or as many as kept).
COMPACT_ROWS = 1 << 20
# Rows of one batch of a table read in batches (connections, requests).
BATCH_ROWS = 1 << 17
# Rows a file gives `merge_sorted` at a time: files to be merged are written in row groups of
# this size, as a Parquet reader holds a whole row group of every file open.
MERGE_BATCH_ROWS = 1 << 13


def non_empty_groups(table: pq.ParquetFile) -> list[int]:
    return [i for i in range(table.num_row_groups) if table.metadata.row_group(i).num_rows]


def time_ranges(table: pq.ParquetFile, groups: list[int],
                column: str = "ts") -> list[tuple[int, int]]:
    """(earliest, latest) of `column` (a timestamp, as int64 ns) in each of `groups`: from the
    file's statistics when every group has them, else from one pass over that column alone."""
    metadata = table.metadata
    index = metadata.schema.names.index(column)
    stats = [metadata.row_group(i).column(index).statistics for i in groups]
    if all(s is not None and s.has_min_max and s.physical_type == "INT64" for s in stats):
        return [(s.min_raw, s.max_raw) for s in stats]
    ranges = []
    for i in groups:
        values = table.read_row_group(i, columns=[column]).column(column).cast(pa.int64())
        extremes = pc.min_max(values)
        ranges.append((extremes["min"].as_py(), extremes["max"].as_py()))
    return ranges


def derived_row_groups(table: pq.ParquetFile, columns: list[str], groups: list[int],
                       derive: Callable[[pa.Table], pa.Table] = lambda rows: rows,
                       ) -> Iterator[pa.Table]:
    """`derive` of each row group of `table` (only `columns`), one group at a time: a group is
    read in batches of BATCH_ROWS, each derived before the next is decoded (a large row group
    is never whole in memory), and the next group is read on a background thread (decoding
    releases the GIL) while the caller works on this one."""
    def derived(group: int) -> pa.Table:
        return pa.concat_tables([
            derive(pa.Table.from_batches([batch])) for batch in table.iter_batches(
                batch_size=BATCH_ROWS, row_groups=[group], columns=columns)])

    yield from read_ahead(map(derived, groups))


def read_ahead(items: Iterator) -> Iterator:
    """The items of `items` (never None), each next one made on a background thread while the
    caller works on this one: two in memory at most."""
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(next, items, None)
        while (item := pending.result()) is not None:
            pending = reader.submit(next, items, None)
            yield item


def ordered_map(function: Callable, items: Iterable, threads: int) -> Iterator:
    """`function` of each of `items`, in their order, `threads` calls at once on a thread pool
    (their work must release the GIL to gain: Arrow kernels, sorts, writing): at most `threads`
    items are in memory beside the result the caller holds."""
    if threads <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def record_batches(table: pq.ParquetFile, columns: list[str] | None = None,
                   batch_size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """`table` (only `columns`; all when None) in record batches of at most `batch_size` rows,
    read row group by row group: one reader over every row group keeps growing (by about
    0.8 MB a 64k-row batch of a packet table: 330 MB over 400 batches), one a group does not."""
    for group in range(table.num_row_groups):
        yield from table.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns)


def read_batches(table: pq.ParquetFile, columns: list[str]) -> Iterator[pa.Table]:
    """`table` (only `columns`) in tables of at most BATCH_ROWS rows: memory bounded by a batch
    and a row group's compressed columns, whatever the row groups' size."""
    for batch in record_batches(table, columns):
        yield pa.Table.from_batches([batch])


def later_minima(minima: list[int]) -> list[int]:
    """For each group, the earliest time of all groups after it (NEVER after the last)."""
    return np.minimum.accumulate(np.array([*minima, NEVER], np.int64)[::-1])[::-1][1:].tolist()


def _sorted(rows: pa.Table, order: tuple[str, ...]) -> pa.Table:
    """`rows` sorted by the integer (or timestamp) columns `order`, stably (taken only when not
    sorted already)."""
    keys = [rows.column(name).cast(pa.int64()).to_numpy() for name in order]
    ahead = np.zeros(max(len(rows) - 1, 0), bool)
    tied = np.ones_like(ahead)
    for key in keys:
        ahead |= tied & (key[1:] > key[:-1])
        tied &= key[1:] == key[:-1]
    return rows if (ahead | tied).all() else rows.take(np.lexsort(keys[::-1]))


def time_ordered(table: pq.ParquetFile, columns: list[str],
                 derive: Callable[[pa.Table], pa.Table] = lambda rows: rows,
                 order: tuple[str, ...] = ("ts", "frame")) -> Iterator[pa.Table]:
    """The rows of `table` (only `columns`, which hold `order`) sorted by `order`, as a
    sequence of tables of at most BATCH_ROWS rows: their concatenation equals sorting the
    whole table. `derive` maps each
    row group to the columns the caller needs (keeping `order`) before rows are held or sorted,
    so that only those are moved."""
    groups = non_empty_groups(table)
    bounds = later_minima([low for low, _ in time_ranges(table, groups, order[0])])
    return ordered_runs(derived_row_groups(table, columns, groups, derive), bounds, order)


def ordered_runs(groups: Iterable[pa.Table], bounds: list[int],
                 order: tuple[str, ...] = ("ts", "frame")) -> Iterator[pa.Table]:
    """The rows of row groups (each sorted here) in order, given for each group the earliest
    time of all groups after it (`later_minima`): as `time_ordered` yields them."""
    held = None
    for rows, bound in zip(groups, bounds):
        if held is not None:
            rows = pa.concat_tables([held, rows])
        rows = _sorted(rows.combine_chunks(), order)
        times = rows.column(order[0]).cast(pa.int64()).to_numpy()
        # Rows at the bound wait: a later group may hold the same time with a smaller key.
        cut = int(np.searchsorted(times, bound, side="left"))
        held = rows.slice(cut)
        yield from batch_slices(rows.slice(0, cut))
    if held is not None:
        yield from batch_slices(held)


class _SortedRun:
    """One file (or one row group of it) sorted by integer columns (lexicographically), read a
    batch at a time (only `columns`; all when None): the rows read and not yet taken (`held`),
    sorted."""

    def __init__(self, path, keys: tuple[str, ...], batch_rows: int, group: int | None = None,
                 columns: list[str] | None = None):
        self.key_names = keys
        parquet = pq.ParquetFile(path)
        if group is None:
            self.batches = record_batches(parquet, columns, batch_rows)
        else:
            self.batches = parquet.iter_batches(batch_size=batch_rows, row_groups=[group],
                                                columns=columns)
        schema = parquet.schema_arrow
        self.held = (schema if columns is None else pa.schema(
            [schema.field(name) for name in columns])).empty_table()
        self.more = True
        self.extend()

    def extend(self) -> None:
        """Read the next batch onto the held rows (the file's end: `more` turns False)."""
        batch = next(self.batches, None)
        if batch is None:
            self.more = False
        else:
            batch = pa.Table.from_batches([batch])
            self.held = pa.concat_tables([self.held, batch]) if self.held.num_rows else batch

    def keys(self) -> list[np.ndarray]:
        return [self.held.column(name).cast(pa.int64()).to_numpy() for name in self.key_names]

    def last(self) -> tuple[int, ...]:
        """The key of the last held row."""
        return tuple(int(values[-1]) for values in self.keys())

    def take_below(self, bound: tuple[int, ...] | None) -> pa.Table:
        """The held rows whose key is below `bound` (all when None): no later row of the file
        can be."""
        below = np.ones(self.held.num_rows, bool)
        if bound is not None:
            below[:], tied = False, np.ones_like(below)
            for values, limit in zip(self.keys(), bound):
                below |= tied & (values < limit)
                tied &= values == limit
        cut = int(below.sum())  # a prefix: the rows are sorted
        taken, self.held = self.held.slice(0, cut), self.held.slice(cut)
        return taken


def merge_sorted(paths: list, keys: tuple[str, ...],
                 batch_rows: int = MERGE_BATCH_ROWS) -> Iterator[pa.Table]:
    """The rows of Parquet files each sorted by the integer (or timestamp) columns `keys`, as
    tables of BATCH_ROWS rows (the last fewer; one a row group, for a writer) whose
    concatenation is the files' rows sorted by `keys`, ties in the order of `paths`, then of
    rows: what a stable sort of their concatenation gives. Memory: a row group and a batch of
    `batch_rows` rows a file (more only while rows share one key at a batch's end), and the
    table being gathered: write the files in row groups of MERGE_BATCH_ROWS."""
    return _merged([_SortedRun(path, keys, batch_rows) for path in paths], keys)


def merge_row_groups(path, keys: tuple[str, ...], columns: list[str] | None = None,
                     batch_rows: int = MERGE_BATCH_ROWS) -> Iterator[pa.Table]:
    """The rows of one Parquet file (only `columns`, which hold `keys`) whose row groups are
    each sorted by `keys` (sorted runs written one after another: http.parquet, a run a
    partition of the connection stage), in the order and batches `merge_sorted` gives for
    files: memory a batch of `batch_rows` rows and a compressed row group a group."""
    groups = non_empty_groups(pq.ParquetFile(path))
    return _merged([_SortedRun(path, keys, batch_rows, group, columns) for group in groups],
                   keys)


def _merged(runs: list[_SortedRun], keys: tuple[str, ...]) -> Iterator[pa.Table]:
    gathered: list[pa.Table] = []
    while True:
        for run in runs:
            while run.more and not run.held.num_rows:
                run.extend()
        # Rows below the smallest last key held by a file with more to read are final.
        reading = [run for run in runs if run.more]
        bound = min((run.last() for run in reading), default=None)
        taken = [part for part in (run.take_below(bound) for run in runs) if part.num_rows]
        if taken:
            gathered.append(_sorted(pa.concat_tables(taken), keys))
        if gathered and (not reading or sum(map(len, gathered)) >= BATCH_ROWS):
            # One step may take a batch from every file: 50 files gave 400k-row groups.
            rows = pa.concat_tables(gathered)
            whole = rows.num_rows if not reading else rows.num_rows // BATCH_ROWS * BATCH_ROWS
            yield from batch_slices(rows.slice(0, whole))
            gathered = [rows.slice(whole)]
        if not reading:
            return
        for run in reading:  # the files that set the bound read on
            if run.last() <= bound:
                run.extend()


def route(rows: pa.Table, part: np.ndarray, writers: list) -> np.ndarray:
    """Write each row of `rows` with the writer `part` names (0..len(writers)-1), the rows of
    one writer in their order; return the rows each writer got."""
    return write_routed(routed(rows, part, len(writers)), writers)


def routed(rows: pa.Table, part: np.ndarray, count: int) -> tuple[pa.Table, np.ndarray]:
    """`rows` ordered by the part (0..count-1) each goes to, the rows of a part in their order,
    and where each part's rows start (count + 1 bounds): what `write_routed` writes."""
    order = np.argsort(part, kind="stable")
    return rows.take(order), np.searchsorted(part[order], np.arange(count + 1))


def write_routed(parts: tuple[pa.Table, np.ndarray], writers: list) -> np.ndarray:
    """Write each part of `routed` rows with its writer (dictionaries cut to the part's own
    values: `compacted`); return the rows each writer got."""
    rows, bounds = parts
    for index in np.flatnonzero(np.diff(bounds)):
        writers[index].write_table(compacted(
            rows.slice(bounds[index], bounds[index + 1] - bounds[index])))
    return np.diff(bounds)


def compacted(rows: pa.Table) -> pa.Table:
    """`rows` with each dictionary column's dictionary cut to the values its rows use, in their
    order. A slice keeps its whole table's dictionary, and an IPC writer writes it out with
    every slice: a row group's thousands of addresses again in each partition it is split
    into, to be unified again by each partition's reader (at 10M packets in 10 partitions,
    about 2 CPU s of reading them back and a fifth of their bytes)."""
    for index in range(rows.num_columns):
        column = rows.column(index)
        if pa.types.is_dictionary(column.type):
            rows = rows.set_column(index, rows.schema.field(index), pa.chunked_array(
                [_compacted(chunk) for chunk in column.chunks], column.type))
    return rows


def _compacted(array: pa.DictionaryArray) -> pa.DictionaryArray:
    used = np.flatnonzero(np.bincount(array.indices.drop_null().to_numpy(),
                                      minlength=len(array.dictionary)))
    if len(used) == len(array.dictionary):
        return array
    renumbered = np.zeros(len(array.dictionary), array.indices.type.to_pandas_dtype())
    renumbered[used] = np.arange(len(used))
    return pa.DictionaryArray.from_arrays(pa.array(renumbered).take(array.indices),
                                          array.dictionary.take(used), ordered=array.type.ordered)


def batch_slices(rows: pa.Table) -> Iterator[pa.Table]:
    """`rows` in consecutive slices of at most BATCH_ROWS rows (none if empty)."""
    for start in range(0, rows.num_rows, BATCH_ROWS):
        yield rows.slice(start, BATCH_ROWS)


class NameIds:
    """A stable integer id for every distinct name (an address) met in any batch, each batch's
    dictionary matched against the names known so far in one vectorised look-up."""

    def __init__(self):
        self.names = pa.array([], pa.string())

    def of(self, column: pa.Array | pa.ChunkedArray) -> np.ndarray:
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        parts = [self._of_chunk(chunk) for chunk in chunks]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def _of_chunk(self, chunk: pa.Array) -> np.ndarray:
        if not pa.types.is_dictionary(chunk.type):
            chunk = pc.dictionary_encode(chunk)
        dictionary = chunk.dictionary.cast(pa.string())
        found = pc.index_in(dictionary, value_set=self.names)
        unseen = pc.unique(dictionary.filter(pc.is_null(found)))
        if len(unseen):
            self.names = pa.concat_arrays([self.names, unseen])
            found = pc.index_in(dictionary, value_set=self.names)
        return found.to_numpy(zero_copy_only=False).astype(np.int64)[
            chunk.indices.to_numpy(zero_copy_only=False)]

    def name(self, ids) -> np.ndarray:
        # Only the names asked for become Python strings, never every name known.
        return self.names.take(pa.array(np.asarray(ids, np.int64))).to_numpy(
            zero_copy_only=False)


class DistinctRows:
    """The distinct rows of a few columns, exact: batches wait in a list and duplicates are
    removed whenever the waiting rows outnumber the kept ones (and COMPACT_ROWS). With `key`
    (some of `columns`), rows are distinct by the key and the first added is kept."""

    def __init__(self, columns: list[str], key: list[str] | None = None):
        self.columns = columns
        self.key = key
        self._parts: list[pd.DataFrame] = []
        self._kept = 0
        self._waiting = 0

    def add(self, frame: pd.DataFrame) -> None:
        part = frame[self.columns].drop_duplicates(self.key)
        self._parts.append(part)
        self._waiting += len(part)
        if self._waiting > max(COMPACT_ROWS, self._kept):
            self._compact()

    def _compact(self) -> None:
        rows = (pd.concat(self._parts, ignore_index=True).drop_duplicates(self.key)
                if self._parts
                else pd.DataFrame({name: pd.Series(dtype=np.int64) for name in self.columns}))
        self._parts, self._kept, self._waiting = [rows], len(rows), 0

    def rows(self) -> pd.DataFrame:
        self._compact()
        return self._parts[0]

    def take_before(self, column: str, value: int) -> pd.DataFrame:
        """Remove and return the distinct rows whose `column` is below `value` (those no later
        batch can add to: the caller feeds batches in that column's order)."""
        rows = self.rows()
        before = rows[column].to_numpy() < value
        self._parts, self._kept = [rows[~before]], int((~before).sum())
        return rows[before]
