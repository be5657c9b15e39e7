"""A real `snakemake` killed mid-write, then rerun, ends with the outputs of a clean run.

Outputs are written to a temporary sibling and renamed when complete, so a kill leaves no
half-written output under its final name; the temporary it leaves is removed by the job that
next writes that output. Nothing is written outside `results/` and `.snakemake/`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest
from conftest import REPO, copy_workflow, run_snakemake

pytestmark = pytest.mark.slow

TRACE = "big"
TARGETS = [f"results/features/{TRACE}/summary.json", f"results/validation/{TRACE}.json"]
# Compared between the rerun and a clean run: everything but timings and logs.
COMPARED = ["validation", "packets", "features"]
TILES = 21  # ~300k packets: the normalize job takes seconds, long enough to be caught mid-write


def write_big_trace(path: Path) -> None:
    """The bundled web trace repeated, renumbered (its times repeat, which is allowed)."""
    columns = ["No.", "Time", "Source", "Destination", "Protocol", "Length", "Info"]
    table = pacsv.read_csv(REPO / "data/web_browsing.csv.gz", convert_options=pacsv.ConvertOptions(
        column_types={name: pa.string() for name in columns}))
    tiles = pa.concat_tables([table] * TILES)
    numbers = pc.cast(pa.array(range(1, tiles.num_rows + 1)), pa.string())
    tiles = tiles.set_column(0, "No.", numbers)
    pacsv.write_csv(tiles, path, write_options=pacsv.WriteOptions(quoting_style="all_valid"))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file outside results/ and .snakemake/ (Python's own __pycache__ aside)."""
    files = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if relative.parts[0] in ("results", ".snakemake") or "__pycache__" in relative.parts:
            continue
        if path.is_file():
            stat = path.stat()
            files[str(relative)] = (stat.st_size, stat.st_mtime_ns)
    return files


def outputs(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes()
            for folder in COMPARED for path in sorted((root / "results" / folder).rglob("*"))
            if path.is_file()}


def temporaries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "results").rglob("*.part"))


def kill_when_writing(workdir: Path, folder: str, timeout: float = 240) -> list[str]:
    """Start snakemake; SIGKILL its whole process group once a job is writing into `folder`."""
    process = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", *TARGETS],
                               cwd=workdir, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    writing = []
    try:
        while not writing:
            assert process.poll() is None, "snakemake finished before it could be killed"
            assert time.monotonic() < deadline, "no job started writing"
            target = workdir / "results" / folder
            writing = sorted(p.name for p in target.glob(".*.part")) if target.exists() else []
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    while True:  # every job of the group is gone before the rerun starts
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    return writing


def test_killed_mid_write_then_rerun_equals_a_clean_run(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    write_big_trace(workdir / "data/big.csv")
    (workdir / "config/traces.tsv").write_text(
        "trace\tpath\tformat\tlabel\ttimezone\tdescription\n"
        f"{TRACE}\tdata/big.csv\twireshark_csv\tnormal\tUTC\tweb trace repeated\n")
    before = snapshot(workdir)

    writing = kill_when_writing(workdir, "packets")
    assert writing, "the kill came while normalization was writing its table"
    # The half-written table is only a temporary; its final name does not exist.
    assert not (workdir / f"results/packets/{TRACE}.parquet").exists()
    assert temporaries(workdir)

    # A killed run leaves its lock behind: unlock (as Snakemake asks), then rerun.
    run_snakemake(workdir, "--unlock")
    run_snakemake(workdir, "--cores", "2", "--rerun-incomplete", *TARGETS)
    assert temporaries(workdir) == []
    rerun = outputs(workdir)
    assert f"results/packets/{TRACE}.parquet" in rerun

    # The clean run, in the same place (so the recorded source path is the same).
    shutil.rmtree(workdir / "results")
    run_snakemake(workdir, "--cores", "2", "--forceall", *TARGETS)
    clean = outputs(workdir)
    assert sorted(rerun) == sorted(clean)
    assert [name for name in clean if rerun[name] != clean[name]] == []

    assert snapshot(workdir) == before, "something was written outside results/ and .snakemake/"
