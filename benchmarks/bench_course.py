#!/usr/bin/env python
"""Course-sized benchmark: what README command 1's run costs on the bundled traces, and what
adding one capture and rerunning costs, with the notebook's way on the same exports as the peer.

    python benchmarks/bench_course.py                 # three clean runs, then the reruns
    python benchmarks/bench_course.py --runs 5 --json course.json

On a copy of the repository (the bundled trace sheet, a clean `results/`), each measured in
the same run:

- the whole `snakemake --cores 4` run from a clean `results/` (`--runs` times: the machine is
  shared, so each run and their median are printed): wall and CPU seconds (user + system of
  Snakemake and every job), the jobs, and the CPU of each rule's jobs from their logs (each
  job's log ends with its process's CPU: start-up and imports included). "snakemake itself" is
  the rest: the workflow's parse, the DAG, the scheduling;
- a rerun with nothing to do;
- adding a 27k-packet Wireshark export (`tracelab.synth`, seed 11, browsing only) with
  `tracelab add` and rerunning: only its chain and what compares every trace run;
- the notebook's way on the bundled Wireshark exports (`pd.read_csv`, `arrow.get` row by row,
  `diff()`: the `bench` extra installs `arrow`; skipped without it).

Targets (issue 20), printed beside the figures and never asserted: the clean run <= 45 CPU s
and <= 30 s wall; adding the capture <= 20 CPU s; nothing to do <= 3 s wall.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import (  # noqa: E402
    SNAKEMAKE,
    _run_measured,
    copy_environment,
    measure,
    work_directory,
    workflow_copy,
    write_figures,
)

CORES = 4  # README command 1
TARGET_CLEAN_CPU_S = 45.0
TARGET_CLEAN_WALL_S = 30.0
TARGET_ADDED_CPU_S = 20.0
TARGET_NOTHING_WALL_S = 3.0
ADDED_PACKETS = 27_000
ADDED_SYNTH = ["--seed", "11", "--scan-share", "0", "--rate", "100"]
# A job's log: its first line names the rule and wildcards, its last the process's CPU.
JOB_LINE = re.compile(r"INFO tracelab: (\w+)(?: \S+)*: started")


def job_logs(copy: Path) -> list[Path]:
    return sorted((copy / "results" / "logs").rglob("*.log"))


def rule_cpu(logs: list[Path]) -> dict[str, dict]:
    """CPU seconds and job count of each rule, from the job logs given."""
    from tracelab.core.runner import job_cpu_seconds

    cpu, jobs = Counter(), Counter()
    for log in logs:
        text = log.read_text(encoding="utf-8")
        named, seconds = JOB_LINE.search(text), job_cpu_seconds(text)
        if named and seconds is not None:
            cpu[named.group(1)] += seconds
            jobs[named.group(1)] += 1
    return {rule: {"jobs": jobs[rule], "cpu_seconds": round(cpu[rule], 2)}
            for rule in sorted(cpu, key=cpu.get, reverse=True)}


def snakemake_run(copy: Path) -> dict:
    """One `snakemake --cores 4` in `copy`; the jobs that ran are those whose logs it wrote."""
    before = {log: log.stat().st_mtime_ns for log in job_logs(copy)}
    load = os.getloadavg()[0]
    _, wall, _, cpu = _run_measured([str(SNAKEMAKE), "--cores", str(CORES)], cwd=copy,
                                      env=copy_environment(copy))
    ran = [log for log in job_logs(copy) if before.get(log) != log.stat().st_mtime_ns]
    rules = rule_cpu(ran)
    jobs_cpu = sum(rule["cpu_seconds"] for rule in rules.values())
    return {"seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            "jobs": sum(rule["jobs"] for rule in rules.values()), "rules": rules,
            "snakemake_itself_cpu_seconds": round(cpu - jobs_cpu, 2),
            "load_before": load, "load_after": os.getloadavg()[0]}


def add_capture(copy: Path, workdir: Path) -> None:
    export = workdir / "course_27k.csv.gz"
    if not export.exists():
        _run_measured([sys.executable, "-m", "tracelab.synth", "--packets", str(ADDED_PACKETS),
                       *ADDED_SYNTH, "--out", str(export)])
    tracelab = Path(sys.executable).with_name("tracelab")
    subprocess.run([str(tracelab), "add", str(export), "--label", "normal"], cwd=copy,
                   env=copy_environment(copy), check=True, capture_output=True)


def notebook_peer(copy: Path) -> dict:
    """The notebook's way on every Wireshark export of the bundled sheet, one after another."""
    import csv

    with open(copy / "config" / "traces.tsv", encoding="utf-8") as handle:
        exports = [copy / row["path"] for row in csv.DictReader(handle, delimiter="\t")
                   if row["format"] == "wireshark_csv"]
    timed = [measure("notebook", {"path": str(path), "rows": 10**9}) for path in exports]
    return {"exports": len(exports), "seconds": round(sum(t["seconds"] for t in timed), 2),
            "cpu_seconds": round(sum(t["cpu_seconds"] for t in timed), 2)}


def verdict(value: float, target: float) -> str:
    return f"target <= {target:g}: {'ok' if value <= target else 'MISS'}"


def print_run(name: str, run: dict, cpu_target: float | None = None,
              wall_target: float | None = None) -> None:
    cpu = f" ({verdict(run['cpu_seconds'], cpu_target)})" if cpu_target else ""
    wall = f" ({verdict(run['seconds'], wall_target)})" if wall_target else ""
    print(f"{name}: {run['jobs']} jobs, {run['seconds']:.1f} s wall{wall}, "
          f"{run['cpu_seconds']:.1f} CPU s{cpu}; load {run['load_before']:.1f} -> "
          f"{run['load_after']:.1f}", flush=True)


def print_rules(run: dict) -> None:
    for rule, figures in run["rules"].items():
        print(f"    {rule:22s} {figures['jobs']:2d} jobs {figures['cpu_seconds']:6.2f} CPU s "
              f"({figures['cpu_seconds'] / figures['jobs']:.2f} a job)")
    print(f"    {'snakemake itself':22s}          {run['snakemake_itself_cpu_seconds']:6.2f} CPU s")


def clean_runs(copy: Path, runs: int) -> dict:
    """`runs` runs from a clean `results/`, each printed; their median, and the median run's
    rules."""
    clean = []
    for number in range(1, runs + 1):
        shutil.rmtree(copy / "results", ignore_errors=True)
        shutil.rmtree(copy / ".snakemake", ignore_errors=True)
        clean.append(snakemake_run(copy))
        print_run(f"clean run {number}", clean[-1], TARGET_CLEAN_CPU_S, TARGET_CLEAN_WALL_S)
    median = {key: statistics.median(run[key] for run in clean)
              for key in ("seconds", "cpu_seconds")}
    print(f"clean runs, median: {median['seconds']:.1f} s wall, "
          f"{median['cpu_seconds']:.1f} CPU s; the median run's rules:")
    print_rules(sorted(clean, key=lambda run: run["cpu_seconds"])[len(clean) // 2])
    return {"clean_runs": clean, "clean_median": median}


def notebook_figures(copy: Path) -> dict:
    if importlib.util.find_spec("arrow") is None:
        return {"skipped": "`arrow` is not installed (the bench extra)"}
    peer = notebook_peer(copy)
    print(f"the notebook's way on the {peer['exports']} bundled exports: {peer['seconds']:.1f} "
          f"s, {peer['cpu_seconds']:.1f} CPU s (a read and a time column, no table, feature "
          "or comparison)")
    return peer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="clean runs (their median is kept)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--workdir", help="keep the copy and the added export here")
    args = parser.parse_args(argv)
    report = {"cores": os.cpu_count(), "targets": {
        "clean_cpu_seconds": TARGET_CLEAN_CPU_S, "clean_seconds": TARGET_CLEAN_WALL_S,
        "added_cpu_seconds": TARGET_ADDED_CPU_S, "nothing_seconds": TARGET_NOTHING_WALL_S}}
    with work_directory(args.workdir) as workdir:
        copy = workflow_copy(workdir / "workflow")
        report.update(clean_runs(copy, args.runs))
        report["nothing"] = snakemake_run(copy)
        print_run("rerun with nothing to do", report["nothing"], None, TARGET_NOTHING_WALL_S)
        report["notebook"] = notebook_figures(copy)
        add_capture(copy, workdir)
        report["added"] = snakemake_run(copy)
        print_run(f"adding a {ADDED_PACKETS // 1000}k-packet export", report["added"],
                  TARGET_ADDED_CPU_S)
        print_rules(report["added"])
    write_figures(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
