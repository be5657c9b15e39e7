"""The atomic writer the CSV reader stages through: commit() and discard(), said explicitly."""

from __future__ import annotations

import pytest

from tracelab.core.atomic import AtomicPath


def test_commit_renames_the_temporary_onto_the_path(tmp_path):
    output = AtomicPath(tmp_path / "out.txt")
    output.tmp.write_text("whole")
    assert not (tmp_path / "out.txt").exists()
    output.commit()
    assert (tmp_path / "out.txt").read_text() == "whole"
    assert list(tmp_path.iterdir()) == [tmp_path / "out.txt"]


def test_the_block_commits_unless_discarded(tmp_path):
    with AtomicPath(tmp_path / "out.txt") as tmp:
        tmp.write_text("whole")
    assert (tmp_path / "out.txt").read_text() == "whole"
    output = AtomicPath(tmp_path / "other.txt")
    with output as tmp:
        tmp.write_text("half")
        output.discard()
    assert not (tmp_path / "other.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_an_exception_discards(tmp_path):
    with pytest.raises(ValueError), AtomicPath(tmp_path / "out.txt") as tmp:
        tmp.write_text("half")
        raise ValueError
    assert list(tmp_path.iterdir()) == []
