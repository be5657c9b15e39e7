"""The reference documents are generated from the declarations and must be current."""

from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import REPO
from pandera.pandas import Check

from tracelab.core import docs
from tracelab.core.tables import Column, Table, TableParts, declared_tables


def test_config_readme_and_tables_doc_are_up_to_date():
    assert docs.main(["--root", str(REPO), "--check"]) == 0, (
        "run `python -m tracelab.core.docs` and commit config/README.md and docs/tables.md")


def test_every_declared_table_is_documented_column_by_column():
    text = (REPO / "docs" / "tables.md").read_text()
    tables = declared_tables()
    assert "packets" in {table.name for table in tables}
    for table in tables:
        assert f"### `{table.name}`" in text
        for column in table.columns:
            assert column.doc, f"{table.name}.{column.name} has no meaning"
            assert f"| `{column.name}` |" in text


def test_a_table_declaration_checks_what_it_declares(tmp_path):
    table = Table("example", "x.parquet", "A row.", [
        Column("n", pa.int64(), "A count.", checks=[Check.ge(0)]),
        Column("name", pa.string(), "A name.", nullable=True)])
    table.write(pa.table({"name": ["a", None], "n": [1, 2]}), tmp_path / "ok.parquet")
    written = table.read(tmp_path / "ok.parquet")
    assert written.column_names == ["n", "name"]  # declared order
    assert written.schema.field("n").nullable is False
    with pytest.raises(Exception, match="greater_than_or_equal_to"):
        table.write(pa.table({"n": [-1], "name": ["a"]}), tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()
    with pytest.raises(ValueError, match="declared twice"):
        Table("twice", "x", "", [Column("a", pa.int8(), "a"), Column("a", pa.int8(), "a")])


def test_tables_checked_together_are_checked_as_each_alone(tmp_path):
    """TableParts: one validation for several tables, each as `Table.write` checks it: a
    unique column unique within each table (not across them), every value check on every row,
    and nothing written when one fails."""
    table = Table("example", "x.parquet", "A row.", [
        Column("n", pa.int64(), "A count.", checks=[Check.ge(0)], unique=True)])
    parts = TableParts(table)
    for index in range(3):
        parts.add(pa.table({"n": [0, 1]}), tmp_path / f"ok{index}.parquet", {"part": index})
    parts.write()
    for index in range(3):
        assert table.read(tmp_path / f"ok{index}.parquet").column("n").to_pylist() == [0, 1]
    for bad in ([0, 0], [-1, 2]):
        parts.add(pa.table({"n": [0, 1]}), tmp_path / "fine.parquet")
        parts.add(pa.table({"n": bad}), tmp_path / "bad.parquet")
        with pytest.raises(Exception, match="unique in each part|greater_than_or_equal_to"):
            parts.write()
        with pytest.raises(Exception, match="unique|greater_than_or_equal_to"):
            table.write(pa.table({"n": bad}), tmp_path / "alone.parquet")
        assert not any(tmp_path.glob("[fba]*.parquet"))
        parts.parts.clear()
