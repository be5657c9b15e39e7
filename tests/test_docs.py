"""The reference documents are generated from the declarations and must be current."""

from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import REPO
from pandera.pandas import Check

from tracelab.core import docs
from tracelab.core.tables import Column, Table, declared_tables


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
