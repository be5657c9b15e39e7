"""Each output table declared once: its columns, types, nullability, units, checks and meaning.

Like Zeek's `type Info: record` with a `##` comment per field, one `Table` is at once the Arrow
schema a table is written with, the pandera schema it is checked against before it is written,
its reader, and its documentation (docs/tables.md, made by `python -m tracelab.core.docs`).

    FLOWS = Table("flows", "results/features/{trace}/flows.parquet", "One row a connection.", [
        Column("uid", pa.string(), "Connection id, unique across traces.", unique=True),
        Column("orig_port", pa.int32(), "Originator's port.", checks=[Check.in_range(0, 65535)]),
        ...])
    FLOWS.write(table, path, metadata)      # cast to FLOWS.schema, check, write atomically
    FLOWS.read(path, columns)               # pyarrow.Table
    FLOWS.read_pandas(path, columns)        # pandas with nullable dtypes
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field, replace
from functools import cached_property

import pandas as pd
import pandera.pandas as pandera
import pyarrow as pa
import pyarrow.parquet as pq

from tracelab.core.arrow_types import DICT_STRING, TIMESTAMP
from tracelab.core.atomic import parquet_options, tracelab_metadata, write_parquet

# The column that tells apart the tables checked at once (`Table.check_parts`): a name no
# declared column takes (they are Zeek-style words).
PART = "_part"

# pandas dtypes for reading into pandas: nullable integers and booleans (no float coercion).
PANDAS_TYPES = {
    pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}


@dataclass(frozen=True)
class Column:
    """One column: name, Arrow type, one-line meaning, unit, nullability and value checks."""

    name: str
    type: pa.DataType
    doc: str
    unit: str = ""
    nullable: bool = False
    unique: bool = False
    checks: tuple[pandera.Check, ...] = field(default=())

    def __post_init__(self):
        object.__setattr__(self, "checks", tuple(self.checks))

    @property
    def field(self) -> pa.Field:
        return pa.field(self.name, self.type, nullable=self.nullable)

    def pandera_column(self) -> pandera.Column:
        return pandera.Column(pd.ArrowDtype(self.type), checks=list(self.checks),
                              nullable=self.nullable, unique=self.unique)

    def constraint_text(self) -> str:
        parts = [check.error for check in self.checks]
        if self.unique:
            parts.append("unique")
        return ", ".join(parts)


@dataclass(frozen=True)
class Table:
    """An output table: its name, where it is written, what a row is, and its columns."""

    name: str
    path: str
    doc: str
    columns: tuple[Column, ...]

    def __post_init__(self):
        object.__setattr__(self, "columns", tuple(self.columns))
        names = [column.name for column in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"table {self.name}: a column is declared twice")

    @property
    def names(self) -> list[str]:
        return [column.name for column in self.columns]

    def column(self, name: str) -> Column:
        return self.columns[self.names.index(name)]

    @cached_property
    def schema(self) -> pa.Schema:
        return pa.schema([column.field for column in self.columns])

    @cached_property
    def pandera_schema(self) -> pandera.DataFrameSchema:
        return pandera.DataFrameSchema(
            {column.name: column.pandera_column() for column in self.columns},
            strict=True, ordered=True, name=self.name)

    def conform(self, data: pa.Table | pd.DataFrame) -> pa.Table:
        """`data` as an Arrow table of exactly this schema (columns selected and cast)."""
        if isinstance(data, pd.DataFrame):
            data = pa.Table.from_pandas(data[self.names], preserve_index=False)
        return data.select(self.names).cast(self.schema)

    def check(self, table: pa.Table) -> pa.Table:
        """Raise pandera's SchemaErrors (every failed check) unless `table` satisfies the
        declaration; the checks run on Arrow-backed pandas, without copying the columns."""
        self.pandera_schema.validate(table.to_pandas(types_mapper=pd.ArrowDtype), lazy=True,
                                    inplace=True)
        return table

    @cached_property
    def parts_schema(self) -> pandera.DataFrameSchema:
        """pandera_schema for several tables at once: a PART column says which table a row is
        of, and a `unique` column must be unique within its table."""
        columns = {PART: pandera.Column(pd.ArrowDtype(pa.int32()))}
        columns.update({column.name: replace(column, unique=False).pandera_column()
                        for column in self.columns})
        return pandera.DataFrameSchema(
            columns, strict=True, ordered=True, name=self.name,
            checks=[_unique_within_part(column.name) for column in self.columns
                    if column.unique])

    def check_parts(self, tables: list[pa.Table]) -> None:
        """Raise pandera's SchemaErrors unless every one of `tables` (of this schema) satisfies
        the declaration, in one validation: its cost is ~1 ms a column whatever the rows, which
        is most of checking a small table."""
        parts = [table.add_column(0, PART, pa.repeat(pa.scalar(number, pa.int32()),
                                                     table.num_rows))
                 for number, table in enumerate(tables)]
        frame = pa.concat_tables(parts).to_pandas(types_mapper=pd.ArrowDtype)
        self.parts_schema.validate(frame, lazy=True, inplace=True)

    def write(self, data: pa.Table | pd.DataFrame, path, metadata: dict | None = None) -> None:
        """Conform, check and write atomically with zstd and `tracelab.*` metadata."""
        write_parquet(self.check(self.conform(data)), path, metadata)

    def read(self, path, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(path, columns=columns)

    def read_pandas(self, path, columns: list[str] | None = None) -> pd.DataFrame:
        """pandas with nullable integer and boolean columns (no float or object coercion)."""
        return self.read(path, columns).to_pandas(types_mapper=PANDAS_TYPES.get)

    def markdown(self) -> str:
        """The table's documentation: what a row is, then one line a column."""
        lines = [f"### `{self.name}`: `{self.path}`", "", self.doc, "",
                 "| column | type | unit | null | checks | meaning |",
                 "|---|---|---|---|---|---|"]
        for column in self.columns:
            lines.append(f"| `{column.name}` | {_type_text(column.type)} | {column.unit} | "
                         f"{'yes' if column.nullable else ''} | {column.constraint_text()} | "
                         f"{column.doc} |")
        return "\n".join(lines) + "\n"


def _unique_within_part(name: str) -> pandera.Check:
    return pandera.Check(lambda frame: ~frame.duplicated([PART, name], keep=False),
                         name=f"unique_within_part({name})", error=f"{name} unique in each part")


class TableParts:
    """Tables of one declaration written together: conformed as each is added, all checked in
    one validation (`Table.check_parts`) and written atomically when `write` is called. The
    robustness experiment's copies check their windows so: one at a time, the checks took 0.5
    CPU s of a small trace's 17 copies."""

    def __init__(self, table: Table):
        self.table = table
        self.parts: list[tuple[pa.Table, object, dict | None]] = []

    def add(self, data: pa.Table | pd.DataFrame, path, metadata: dict | None = None) -> None:
        """What `Table.write(data, path, metadata)` would write, written by `write`."""
        self.parts.append((self.table.conform(data), path, metadata))

    def write(self) -> None:
        self.table.check_parts([table for table, _, _ in self.parts])
        for table, path, metadata in self.parts:
            write_parquet(table, path, metadata)
        self.parts.clear()


class TableAppender:
    """Appends checked parts of a declared table to one Parquet file (`parquet_options`), with
    `tracelab.*` metadata: known at the start in the Arrow schema, found on the way in the
    file's."""

    def __init__(self, table: Table, path, metadata: dict):
        schema = table.schema.with_metadata(tracelab_metadata(metadata))
        self.writer = pq.ParquetWriter(path, schema, **parquet_options(schema))
        self.rows = 0

    def append(self, table: pa.Table) -> None:
        """Append rows checked already."""
        self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self, metadata: dict) -> None:
        self.writer.add_key_value_metadata(tracelab_metadata(metadata))
        self.writer.close()


def _type_text(type_: pa.DataType) -> str:
    if type_ == DICT_STRING:
        return "string (dictionary)"
    if type_ == TIMESTAMP:
        return "timestamp (ns, UTC)"
    return str(type_)


def declared_tables() -> list[Table]:
    """Every Table declared at module level anywhere in the package, in declaration order of
    their modules (walked by name)."""
    import tracelab

    tables = []
    for module_info in pkgutil.walk_packages(tracelab.__path__, "tracelab."):
        if module_info.name.startswith(("tracelab.synth", "tracelab.__main__", "tracelab.cli")):
            continue
        module = importlib.import_module(module_info.name)
        tables.extend(value for value in vars(module).values()
                      if isinstance(value, Table) and value not in tables)
    return tables


def tables_markdown() -> str:
    body = "\n".join(table.markdown() for table in declared_tables())
    return ("# Output tables\n\nMade by `python -m tracelab.core.docs` from the declarations in "
            "the package (`tracelab.core.tables.Table`); do not edit by hand.\n\n" + body)
