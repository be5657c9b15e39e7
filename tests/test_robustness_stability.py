"""Stable under more data: adding a capture drawn from the same generator as one already in the
sheet flips no feature between behavioural and artefact. Traces from `python -m tracelab.synth`
(a scan sweep and normal browsing), the experiment run by `snakemake` before and after the
second normal capture is added. Slow lane (two pipeline runs); the default lane checks the same
with the invariance stage in-process (tests/test_robustness.py)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from conftest import copy_workflow, run_snakemake

pytestmark = pytest.mark.slow

CLASSES = "results/robustness/classes.csv"
# name: (label, seed, share of scan flows, start); 20,000 packets at 200/s: ten 10 s windows.
TRACES = {
    "synth_scan": ("scan", 1, 1.0, "2026-03-01T03:00:00"),
    "synth_normal": ("normal", 2, 0.0, "2026-03-01T15:00:00"),
    "synth_normal_2": ("normal", 3, 0.0, "2026-03-02T16:00:00"),
}


def add_trace(workdir, name: str) -> None:
    label, seed, scan_share, start = TRACES[name]
    path = workdir / "data" / f"{name}.csv.gz"
    subprocess.run([sys.executable, "-m", "tracelab.synth", "--packets", "20000", "--rate", "200",
                    "--seed", str(seed), "--scan-share", str(scan_share), "--start", start,
                    "--out", str(path)], check=True, capture_output=True)
    sheet = workdir / "config/traces.tsv"
    sheet.write_text(sheet.read_text() + f"{name}\tdata/{name}.csv.gz\twireshark_csv\t{label}\t"
                     f"UTC\tsynthetic ({label}, seed {seed})\n")


def test_a_capture_of_a_kind_already_present_flips_no_class(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    sheet = workdir / "config/traces.tsv"
    sheet.write_text(sheet.read_text().splitlines(keepends=True)[0])
    for name in ("synth_scan", "synth_normal"):
        add_trace(workdir, name)
    run_snakemake(workdir, "--cores", "2", CLASSES, timeout=1500)
    before = pd.read_csv(workdir / CLASSES).set_index("feature")
    add_trace(workdir, "synth_normal_2")
    run_snakemake(workdir, "--cores", "2", CLASSES, timeout=1500)
    after = pd.read_csv(workdir / CLASSES).set_index("feature")
    assert after["captures"].max() == 3
    # The planted artefacts stay artefacts and something is measured behavioural.
    for feature in ("hour_of_day_utc", "capture_packets"):
        assert before.at[feature, "measured"] == after.at[feature, "measured"] == "artefact"
    assert (after["measured"] == "behavioural").any()
    flips = [feature for feature in before.index
             if {before.at[feature, "measured"], after.at[feature, "measured"]}
             == {"behavioural", "artefact"}]
    assert not flips, pd.concat({"before": before.loc[flips], "after": after.loc[flips]}, axis=1)
