"""The two large tables of `tracelab.features.statistics` (endpoints, conversations) made
partition by partition into sorted scratch files and merged into each table's file in its
order, and the pandas metadata their files carry."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracelab.core.atomic import atomic_path, parquet_options, tracelab_metadata
from tracelab.core.streaming import MERGE_BATCH_ROWS, batch_slices, merge_sorted
from tracelab.core.tables import PANDAS_TYPES, Table
from tracelab.features.statistics_page import Largest


@dataclass
class PartitionedTable:
    """One of the two large tables, made partition by partition into sorted scratch files
    and merged into its file in its order; the table of a trace of one partition is held (in
    its order already), not written to `scratch` (None) and merged. `names`: the texts the
    merge's sort keys rank (`order_keys`)."""

    table: Table
    order: dict[str, bool]
    scratch: Path | None
    names: pa.Array | None
    paths: list[Path] = field(default_factory=list)
    held: pa.Table | None = None

    def part(self, index: int, rows: pa.Table) -> pa.Table | Path:
        """Partition `index`'s rows checked: written to a scratch file with their sort keys
        (its path returned), or returned to be held; `keep` it, in partition order."""
        rows = self.table.check(rows)
        if self.scratch is None:
            return rows
        path = self.scratch / f"{self.table.name}-{index:05d}.parquet"
        pq.write_table(order_keys(rows, self.order, self.names), path, compression="lz4",
                       row_group_size=MERGE_BATCH_ROWS)
        return path

    def keep(self, part: pa.Table | Path) -> None:
        if isinstance(part, Path):
            self.paths.append(part)
        else:
            self.held = part

    def _ordered(self) -> Iterator[pa.Table]:
        """The rows in the table's order, in the tables `merge_sorted` gives (`batch_slices`):
        one a row group of the file."""
        if self.held is not None:
            yield from batch_slices(self.held)
            return
        keys = tuple(f"_key{index}" for index in range(len(self.order)))
        for rows in merge_sorted(self.paths, keys):
            yield rows.drop_columns(list(keys))

    def write(self, path, metadata: dict) -> Largest:
        """Write the rows in order into `path` (with `tracelab.*` `metadata` and pandas' own);
        what the page shows of it."""
        largest = Largest()
        schema = self.table.schema.with_metadata({**tracelab_metadata(metadata),
                                                  **pandas_metadata(self.table)})
        with atomic_path(path) as temporary, \
                pq.ParquetWriter(temporary, schema, **parquet_options(schema)) as writer:
            for rows in self._ordered():
                writer.write_table(rows)
                largest.add(rows)
        return largest


def order_keys(table: pa.Table, order: dict[str, bool], names: pa.Array) -> pa.Table:
    """`table` with one integer column a sort column (`_key0`, ...) that sorts as `order`
    does: texts by their rank among `names` (sorted), non-negative floats by their bits,
    descending columns negated, null ports as -1."""
    keys = {}
    for index, (name, descending) in enumerate(order.items()):
        column = table.column(name)
        if pa.types.is_floating(column.type):
            values = column.to_numpy().view(np.int64)
        elif pa.types.is_integer(column.type):
            values = pc.fill_null(column, -1).to_numpy().astype(np.int64)
        else:
            ranks = pc.index_in(column.cast(pa.string()), value_set=names)
            values = ranks.to_numpy(zero_copy_only=False).astype(np.int64)
        keys[f"_key{index}"] = -values if descending else values
    for name, values in keys.items():
        table = table.append_column(name, pa.array(values))
    return table


def pandas_metadata(table: Table) -> dict[bytes, bytes]:
    """pandas' schema metadata declaring each nullable integer column of `table` with its
    nullable dtype (PANDAS_TYPES), so that pandas reads a port as Int32 with nulls where
    the row has none, not as float64."""
    frame = table.schema.empty_table().to_pandas()
    for column in table.columns:
        if column.nullable and column.type in PANDAS_TYPES:
            frame[column.name] = frame[column.name].astype(PANDAS_TYPES[column.type])
    return pa.Schema.from_pandas(frame, preserve_index=False).metadata
