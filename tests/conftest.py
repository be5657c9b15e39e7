"""Shared fixtures: the repository, a disposable copy of the workflow, running real snakemake."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns("results", ".snakemake", ".git", ".venv", "__pycache__",
                                     ".pytest_cache", ".hypothesis", "*.egg-info")
HEADER = '"No.","Time","Source","Destination","Protocol","Length","Info"\n'


def copy_workflow(destination: Path) -> Path:
    shutil.copytree(REPO, destination, ignore=COPY_IGNORE)
    return destination


@pytest.fixture
def workflow_copy(tmp_path) -> Path:
    """A fresh copy of the workflow (config, data, rules) to run snakemake in."""
    return copy_workflow(tmp_path / "workflow_copy")


def run_snakemake(workdir: Path, *args: str, check: bool = True,
                  timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Job counts per rule from a dry run ({} when there is nothing to do)."""
    result = run_snakemake(workdir, "-n", *args)
    output = result.stdout + result.stderr
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines():
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if match and match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def write_export(path: Path, rows: list[tuple], header: str = HEADER, gz: bool = False) -> Path:
    """A Wireshark-style CSV export: every field quoted, as the GUI writes it."""
    lines = [header] + [",".join(f'"{field}"' for field in row) + "\n" for row in rows]
    data = "".join(lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path
