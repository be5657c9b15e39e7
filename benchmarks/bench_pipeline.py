#!/usr/bin/env python
"""Pipeline benchmark: speed and peak memory of each stage on generated traces, with two ratios
measured in the same run — against the notebook's way and against the floor.

    python benchmarks/bench_pipeline.py                       # 1M, 5M, 10M packets
    python benchmarks/bench_pipeline.py --sizes 1000000,5000000,10000000,50000000
    python benchmarks/bench_pipeline.py --quick               # 200k packets, a minute or so
    python benchmarks/bench_pipeline.py --sizes 1000000 --json bench.json

For each size it generates a trace with `python -m tracelab.synth` (gzip-compressed Wireshark
GUI export: browsing clients mixed with SYN sweeps, UDP probes and Log4Shell requests)
and measures, each in its own subprocess (peak memory is the subprocess's max RSS, from wait4):

- the floor: pyarrow's streaming CSV reader alone reading the same file, all columns as strings;
- each per-trace stage called through the package, with the parameters of config/config.yaml,
  as the rules pass them (STAGE_FUNCTIONS below; packets/s counts the function call, not
  interpreter start);
- the whole `snakemake --cores 2` run of every stage but the robustness experiment (the
  perturbed copies of the trace; --robustness adds it; --core-only: validate, normalize,
  features, compare only) on a temporary copy of the workflow whose trace sheet lists only the
  generated trace (peak memory: the largest process of the run; per-job figures come from the
  rules' own `benchmark:` files);
- the notebook's way: `pd.read_csv`, then `arrow.get(t).timestamp()` row by row and `diff()`.
  `arrow` is not a project dependency: `pip install arrow` to include it; without it that ratio
  is skipped. Above --notebook-rows it is timed on the file's first rows and scaled linearly.

Targets, printed beside the figures: every stage at least 1M packets/s at 10M packets; the
whole snakemake run at 10M packets within 8x of the floor; every stage's peak memory under
2 GiB and within 1.5x of its figure at 5M packets (or the smallest size measured) at the largest
size. This is a script, not a test: the targets are reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import csv
import importlib.util
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
PACKAGE_ROOT = REPO / "workflow"
COLUMNS = ["No.", "Time", "Source", "Destination", "Protocol", "Length", "Info"]
# stage -> (module, function) that its rule's script calls
STAGE_FUNCTIONS = {
    "validate": ("tracelab.ingest.validate", "validate_trace"),
    "normalize": ("tracelab.ingest.normalize", "normalize_trace"),
    "features": ("tracelab.features.summary", "trace_features"),
    "connections": ("tracelab.security.connections", "write_connections"),
    # after the connections: it reads their placements of rows without ports
    "statistics": ("tracelab.features.statistics", "trace_statistics"),
    # the rule's whole stage: hosts, then notice.log, http.log and dns.log
    "hosts": ("tracelab.security.hosts", "hosts_stage"),
    "windows": ("tracelab.security.windows", "write_windows"),
}
STAGES = tuple(STAGE_FUNCTIONS)
CORES = 2  # `snakemake --cores 2`; a stage that takes `threads` gets as many as its rule allows
# The outputs of the core pipeline (validate, normalize, features, compare); --snakemake-all
# runs the workflow's default target instead, with every later stage.
CORE_TARGETS = ("results/features/{trace}/summary.json", "results/compare/summary.csv")
# Every per-trace stage and comparison: the default target less the robustness experiment, which
# makes perturbed copies of every trace (meant for course-sized traces; --robustness adds it
# back).
ALL_BUT_ROBUSTNESS_TARGETS = (
    *CORE_TARGETS, "results/features/{trace}/statistics.html", "results/compare/summary.html",
    "results/compare/features.csv", "results/compare/scan_report.md",
    "results/compare/scan_report.html")
TARGET_PACKETS_PER_S = 1_000_000
TARGET_SNAKEMAKE_VS_FLOOR = 8.0
TARGET_PEAK_MIB = 2048
TARGET_FLAT_GROWTH = 1.5


# --- What runs in the measured subprocesses ----------------------------------------------------

def _floor_work(path: str, block_bytes: int):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def read() -> int:
        reader = pacsv.open_csv(
            path, read_options=pacsv.ReadOptions(block_size=block_bytes),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in COLUMNS}))
        return sum(batch.num_rows for batch in reader)
    return read


def _stage_work(stage: str, kwargs: dict):
    import inspect

    module_name, function_name = STAGE_FUNCTIONS[stage]
    function = getattr(importlib.import_module(module_name), function_name)
    if stage == "validate":
        from tracelab.ingest.validate import READERS

        importlib.import_module(READERS[kwargs["source_format"]])  # imported on first call
    _import_pandera_backends()
    # optional parameters (threads, ...) go only to a stage that takes them
    accepted = inspect.signature(function).parameters
    kwargs = {name: value for name, value in kwargs.items() if name in accepted}
    return lambda: function(**kwargs)


def _import_pandera_backends() -> None:
    """pandera imports its pandas backend (and hypothesis, when installed) on the first
    validation: imports, like the stage's own, so done before the clock."""
    import pandas as pd
    import pandera.pandas as pa

    pa.DataFrameSchema({"x": pa.Column(int, pa.Check.ge(0))}).validate(pd.DataFrame({"x": [1]}))


def _notebook_work(path: str, rows: int):
    import arrow
    import pandas as pd

    def notebook() -> int:
        frame = pd.read_csv(path, nrows=rows)
        seconds = pd.Series([arrow.get(t).timestamp() for t in frame["Time"]])
        inter_arrival = seconds.diff()
        return int(inter_arrival.count()) + 1
    return notebook


def _child_main(spec: dict) -> None:
    """Run one measured piece of work; print its own timing as one JSON line.

    Imports happen before the clock starts: the figure is the work, not interpreter start-up.
    """
    prepare = {"floor": _floor_work, "stage": _stage_work, "notebook": _notebook_work}
    work = prepare[spec["kind"]](**spec["args"])
    profiler = cProfile.Profile() if spec.get("profile_path") else None
    started, started_cpu = time.perf_counter(), time.process_time()
    if profiler:
        profiler.runcall(work)
        profiler.dump_stats(spec["profile_path"])
    else:
        work()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds}))


# --- Measuring ---------------------------------------------------------------------------------

def _environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    return env


def _read_both(process: subprocess.Popen) -> tuple[str, str]:
    """Everything the process writes to stdout and stderr, read until it closes both (not
    `communicate`, which waits for the process and so would reap it before `wait4`)."""
    with ThreadPoolExecutor(1) as pool:
        err = pool.submit(process.stderr.read)
        return process.stdout.read(), err.result()


def _run_measured(command: list[str], *, cwd=None,
                  env=None) -> tuple[str, float, float, float]:
    """Run `command`; return its stdout, wall seconds, peak RSS in MiB (largest process) and CPU
    seconds (user + system, of the process and every child it waited for)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env or _environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Both pipes at once: a run that fills one while the other is read would never end.
    out, err = _read_both(process)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed ({process.returncode}):\n"
                           f"{(err or out)[-3000:]}")
    return out, wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # maxrss: KiB


def measure(kind: str, args: dict, profile_path: Path | None = None) -> dict:
    spec = {"kind": kind, "args": args,
            "profile_path": str(profile_path) if profile_path else None}
    load = os.getloadavg()[0]
    out, wall, peak, _ = _run_measured([sys.executable, __file__, "--child", json.dumps(spec)])
    timed = json.loads(out.strip().splitlines()[-1])
    # other work on the machine slows the figures down: the 1-minute load says how much
    return {"seconds": timed["seconds"], "cpu_seconds": timed["cpu_seconds"],
            "process_seconds": wall, "peak_mib": peak,
            "load_before": load, "load_after": os.getloadavg()[0]}


def load_config() -> dict:
    import yaml

    with open(REPO / "config" / "config.yaml", encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def stage_arguments(trace: str, source: Path, out: Path, config: dict) -> dict[str, dict]:
    """The keyword arguments each stage's script passes, with the rules' params from config."""
    from tracelab.core.fingerprint import file_sha256

    return {
        "validate": dict(trace=trace, source=str(source), source_format="wireshark_csv",
                         staged_path=str(out / "staged.arrow"),
                         report_path=str(out / "validation.json"),
                         invalid_path=str(out / "invalid.csv"), timezone="UTC",
                         settings=config["validation"]),
        # The job is given the source's digest (the workflow's fingerprint cache holds it).
        "normalize": dict(trace=trace, staged_path=str(out / "staged.arrow"),
                          source=str(source), source_format="wireshark_csv",
                          source_sha256=file_sha256(source),
                          packets_path=str(out / "packets.parquet"),
                          row_group_rows=config["normalize"]["row_group_rows"],
                          threads=CORES),
        "features": dict(trace=trace, packets_path=str(out / "packets.parquet"),
                         summary_path=str(out / "summary.json"),
                         distributions_path=str(out / "distributions.parquet"),
                         settings=config["features"]),
        "connections": dict(trace=trace, packets_path=str(out / "packets.parquet"),
                            flows_path=str(out / "flows.parquet"),
                            http_path=str(out / "http.parquet"),
                            conn_log_path=str(out / "conn.log"),
                            placements_path=str(out / "placements.parquet"),
                            settings=config["security"]["flows"], threads=CORES),
        "statistics": dict(trace=trace, packets_path=str(out / "packets.parquet"),
                           placements_path=str(out / "placements.parquet"),
                           summary_path=str(out / "summary.json"),
                           validation_path=str(out / "validation.json"),
                           endpoints_path=str(out / "endpoints.parquet"),
                           conversations_path=str(out / "conversations.parquet"),
                           hierarchy_path=str(out / "protocol_hierarchy.parquet"),
                           html_path=str(out / "statistics.html"), threads=CORES),
        "hosts": dict(trace=trace, packets_path=str(out / "packets.parquet"),
                      flows_path=str(out / "flows.parquet"), http_path=str(out / "http.parquet"),
                      hosts_path=str(out / "hosts.parquet"),
                      notice_log_path=str(out / "notice.log"),
                      http_log_path=str(out / "http.log"), dns_log_path=str(out / "dns.log"),
                      settings=config["security"]["scan"]),
        "windows": dict(trace=trace, packets_path=str(out / "packets.parquet"),
                        flows_path=str(out / "flows.parquet"), http_path=str(out / "http.parquet"),
                        windows_path=str(out / "windows.parquet"),
                        settings=config["security"]["windows"]),
    }


def generate(packets: int, seed: int, path: Path) -> dict:
    if path.exists():
        print(f"  reusing {path}", flush=True)
        return {"reused": True, "file_bytes": path.stat().st_size}
    command = [sys.executable, "-m", "tracelab.synth", "--packets", str(packets), "--seed",
               str(seed), "--out", str(path)]
    out, wall, peak, _ = _run_measured(command)
    summary = json.loads(out)
    return {"seconds": wall, "peak_mib": peak, "file_bytes": summary["file_bytes"],
            "duration_s": summary["duration_s"], "protocol_counts": summary["protocol_counts"]}


def snakemake_targets(trace: str, args) -> list[str]:
    """The run's targets: the core pipeline's, every stage but the robustness experiment's, or
    the workflow's default (every stage) as `--core-only` / neither / `--robustness` say."""
    if args.robustness:
        return []
    return [t.format(trace=trace)
            for t in (CORE_TARGETS if args.core_only else ALL_BUT_ROBUSTNESS_TARGETS)]


def workflow_copy(copy: Path) -> Path:
    """A fresh copy of the repository at `copy` (an earlier one replaced), without outputs,
    Snakemake's state or the environment."""
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(
        "results", ".snakemake", ".git", ".venv", "__pycache__", ".pytest_cache"))
    return copy


def copy_environment(copy: Path) -> dict:
    """The environment of a run in `copy`: its own package first."""
    env = _environment()
    env["PYTHONPATH"] = os.pathsep.join([str(copy / "workflow"), env["PYTHONPATH"]])
    return env


def run_snakemake(trace: str, source: Path, workdir: Path, targets: list[str]) -> dict:
    """The workflow on a copy of the repository whose trace sheet lists only `source`."""
    copy = workflow_copy(workdir / f"workflow-{trace}")
    with open(copy / "config" / "traces.tsv", "w", encoding="utf-8", newline="") as handle:
        sheet = csv.writer(handle, delimiter="\t", lineterminator="\n")
        sheet.writerow(["trace", "path", "format", "label", "timezone", "description"])
        sheet.writerow([trace, str(source), "wireshark_csv", "synthetic", "UTC",
                        "generated by tracelab.synth.wireshark_export for the benchmark"])
    load = os.getloadavg()[0]
    try:
        _, wall, peak, cpu = _run_measured([str(SNAKEMAKE), "--cores", str(CORES), *targets],
                                           cwd=copy, env=copy_environment(copy))
    except RuntimeError as error:
        return {"failed": str(error)[-1500:], "targets": targets or ["all"],
                "workdir": str(copy)}
    from tracelab.core.runner import job_cpu_seconds

    jobs = {}
    benchmarks = copy / "results" / "benchmarks"
    for tsv in sorted(benchmarks.rglob("*.tsv")):
        with open(tsv, encoding="utf-8") as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        relative = tsv.relative_to(benchmarks).with_suffix("")
        job = str(relative).replace(trace, "T")
        # CPU from the job's log: the benchmark file's is sampled and misses much of a long job.
        log = copy / "results" / "logs" / relative.with_suffix(".log")
        logged = job_cpu_seconds(log.read_text(encoding="utf-8")) if log.is_file() else None
        jobs[job] = {"seconds": float(row["s"]),
                     "cpu_seconds": float(row["cpu_time"]) if logged is None else logged,
                     "peak_mib": float(row["max_rss"])}
    return {"seconds": wall, "cpu_seconds": cpu, "peak_mib": peak, "jobs": jobs,
            "targets": targets or ["all"],
            "load_before": load, "load_after": os.getloadavg()[0], "workdir": str(copy)}


def experiment_line(jobs: dict) -> None:
    """The robustness experiment's CPU (its jobs: robustness/*) beside the trace's other stages'
    (every job but the experiment's and the comparison across traces), from the benchmark files;
    issue target: at most 1x."""
    experiment = sum(job["cpu_seconds"] for name, job in jobs.items()
                     if name.startswith("robustness/"))
    other = sum(job["cpu_seconds"] for name, job in jobs.items()
                if not name.startswith(("robustness/", "compare/")))
    if experiment and other:
        print(f"{'':4}robustness experiment: {experiment:.1f} CPU s against {other:.1f} for the "
              f"trace's other stages ({experiment / other:.2f}x; target <= 1x)")


def top_functions(profile_path: Path, limit: int = 12) -> list[dict]:
    stats = pstats.Stats(str(profile_path))
    total = max(stats.total_tt, 1e-9)
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:limit]
    return [{"function": f"{Path(file).name}:{line}({name})", "self_s": round(tt, 3),
             "self_share": round(tt / total, 3), "cumulative_s": round(ct, 3)}
            for (file, line, name), (_, _, tt, ct, _) in rows]


def benchmark_size(packets: int, args, config: dict, workdir: Path) -> dict:
    trace = f"synth_{packets}"
    source = workdir / f"{trace}.csv.gz"
    out = workdir / trace
    out.mkdir(parents=True, exist_ok=True)
    print(f"[{packets:,} packets] generating {source.name}", flush=True)
    result = {"packets": packets, "seed": args.seed, "source": str(source),
              "generate": generate(packets, args.seed, source)}

    # Every figure reads the file from the page cache: measured first and cold, the floor paid
    # the disk read (285 MB at 10M packets) and came out anywhere between 3 and 9 s.
    _read_through(source)
    print(f"[{packets:,} packets] floor: pyarrow CSV reader", flush=True)
    result["floor"] = measure("floor", {"path": str(source),
                                        "block_bytes": config["validation"]["batch_bytes"]})
    _progress(packets, "floor", result["floor"])
    for stage, kwargs in stage_arguments(trace, source, out, config).items():
        print(f"[{packets:,} packets] {stage}", flush=True)
        result[stage] = measure("stage", {"stage": stage, "kwargs": kwargs})
        _progress(packets, stage, result[stage])
        if args.profile:
            profile = workdir / f"{trace}.{stage}.pstats"
            measure("stage", {"stage": stage, "kwargs": kwargs}, profile_path=profile)
            result[stage]["profile_top"] = top_functions(profile)

    result["notebook"] = notebook(source, packets, args.notebook_rows)
    if not args.skip_snakemake:
        print(f"[{packets:,} packets] snakemake --cores {CORES}", flush=True)
        result["snakemake"] = run_snakemake(trace, source, workdir,
                                            snakemake_targets(trace, args))
        _progress(packets, "snakemake", result["snakemake"])
    add_rates_and_ratios(result)
    return result


def _read_through(path: Path, chunk_bytes: int = 1 << 24) -> None:
    with open(path, "rb") as handle:
        while handle.read(chunk_bytes):
            pass


def _progress(packets: int, name: str, figures: dict) -> None:
    if "failed" in figures:
        print(f"    {name} FAILED: {figures['failed'].strip().splitlines()[-1]}", flush=True)
    else:
        load = (f", load {figures['load_before']:.1f} -> {figures['load_after']:.1f}"
                if "load_before" in figures else "")
        print(f"    {name}: {figures['seconds']:.2f} s, {packets / figures['seconds'] / 1e6:.2f}M "
              f"packets/s, peak {figures['peak_mib']:.0f} MiB{load}", flush=True)


def notebook(source: Path, packets: int, max_rows: int) -> dict:
    if importlib.util.find_spec("arrow") is None:
        return {"skipped": "`arrow` is not installed (pip install arrow) — ratio skipped"}
    rows = min(packets, max_rows)
    print(f"[{packets:,} packets] the notebook's way on {rows:,} rows", flush=True)
    timed = measure("notebook", {"path": str(source), "rows": rows})
    _progress(rows, "notebook's way", timed)
    timed["rows_timed"] = rows
    timed["scaled_seconds"] = timed["seconds"] * packets / rows
    return timed


def add_rates_and_ratios(result: dict) -> None:
    packets = result["packets"]
    floor = result["floor"]["seconds"]
    for name in ("floor", *STAGES):
        result[name]["packets_per_s"] = packets / result[name]["seconds"]
        result[name]["vs_floor"] = result[name]["seconds"] / floor
    stages_s = sum(result[s]["seconds"] for s in STAGES)
    result["stages_total"] = {"seconds": stages_s, "packets_per_s": packets / stages_s,
                              "cpu_seconds": sum(result[s]["cpu_seconds"] for s in STAGES),
                              "vs_floor": stages_s / floor,
                              "peak_mib": max(result[s]["peak_mib"] for s in STAGES)}
    if "seconds" in result.get("snakemake", {}):
        run = result["snakemake"]
        run["packets_per_s"] = packets / run["seconds"]
        run["vs_floor"] = run["seconds"] / floor
    if "scaled_seconds" in result["notebook"]:
        result["notebook"]["speedup_of_stages"] = result["notebook"]["scaled_seconds"] / stages_s
        if "seconds" in result.get("snakemake", {}):
            result["notebook"]["speedup_of_snakemake"] = (
                result["notebook"]["scaled_seconds"] / result["snakemake"]["seconds"])


# --- Reporting ---------------------------------------------------------------------------------

def _rate(value: float) -> str:
    return f"{value / 1e6:.2f}M/s"


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def print_size(result: dict) -> None:
    packets = result["packets"]
    gen = result["generate"]
    print()
    print(f"== {packets:,} packets (tracelab.synth.wireshark_export seed {result['seed']}, "
          f"{gen['file_bytes'] / 1e6:.1f} MB gzip"
          + (f", generated in {gen['seconds']:.1f} s" if "seconds" in gen else "") + ")")
    header = (f"{'':34}{'seconds':>9}{'CPU s':>8}{'packets/s':>12}{'peak RSS':>11}"
              f"{'vs floor':>10}  target")
    print(header)
    print("-" * len(header) + "-" * 18)

    def line(label, figures, target=""):
        print(f"{label:34}{figures['seconds']:9.2f}{figures['cpu_seconds']:8.1f}"
              f"{_rate(figures['packets_per_s']):>12}"
              f"{figures['peak_mib']:8.0f} MiB{figures['vs_floor']:9.2f}x  {target}")

    line("floor: pyarrow CSV reader", result["floor"])
    for stage in STAGES:
        rate = result[stage]["packets_per_s"]
        line(f"{stage} (package call)", result[stage],
             f">= 1M/s {_verdict(rate >= TARGET_PACKETS_PER_S)}")
    line("every stage, one after another", result["stages_total"])
    run = result.get("snakemake", {})
    if "failed" in run:
        print(f"snakemake --cores {CORES} {' '.join(run['targets'])}: FAILED\n{run['failed']}")
    elif run:
        target = f"<= {TARGET_SNAKEMAKE_VS_FLOOR:.0f}x floor " + (
            _verdict(run["vs_floor"] <= TARGET_SNAKEMAKE_VS_FLOOR) if packets >= 10_000_000
            else "(judged at 10M)")
        scope = "all" if run["targets"] == ["all"] else (
            "core" if len(run["targets"]) == len(CORE_TARGETS) else "all but robustness")
        line(f"snakemake --cores {CORES} ({scope})",
             run, target)
        jobs = ", ".join(f"{name} {job['seconds']:.1f} s/{job['peak_mib']:.0f} MiB"
                         for name, job in run["jobs"].items())
        print(f"{'':4}rule benchmark files: {jobs}")
        experiment_line(run["jobs"])
    nb = result["notebook"]
    if "skipped" in nb:
        print(f"notebook's way: {nb['skipped']}")
    else:
        scaled = "" if nb["rows_timed"] == packets else (
            f" (timed on the first {nb['rows_timed']:,} rows: {nb['seconds']:.1f} s, "
            f"scaled linearly x{packets / nb['rows_timed']:g})")
        print(f"notebook's way (pd.read_csv + arrow.get row by row + diff): "
              f"{nb['scaled_seconds']:.1f} s{scaled}, peak {nb['peak_mib']:.0f} MiB")
        print(f"{'':4}the stages are {nb['speedup_of_stages']:.1f}x faster"
              + (f"; the whole snakemake run {nb['speedup_of_snakemake']:.1f}x faster"
                 if "speedup_of_snakemake" in nb else ""))
    peak = max(result[s]["peak_mib"] for s in STAGES)
    if packets >= 10_000_000:
        print(f"largest peak memory of a stage: {peak:.0f} MiB "
              f"(< {TARGET_PEAK_MIB} MiB {_verdict(peak < TARGET_PEAK_MIB)})")
    for stage in STAGES:
        for row in result[stage].get("profile_top", [])[:8]:
            print(f"{'':4}profile {stage}: {row['self_share']:6.1%} self  "
                  f"{row['cumulative_s']:7.2f} s cum  {row['function']}")


def print_flatness(results: list[dict]) -> dict:
    """Peak memory of the largest trace against the 5M-packet one (else the smallest), stage by
    stage."""
    small = next((r for r in results if r["packets"] == 5_000_000), results[0])
    large = results[-1]
    growth = large["packets"] / small["packets"]
    print()
    print(f"== peak memory as the trace grows ({small['packets']:,} -> {large['packets']:,} "
          f"packets, x{growth:g}); flat means at most x{TARGET_FLAT_GROWTH} and under "
          f"{TARGET_PEAK_MIB} MiB")
    flatness = {}
    names = ["floor", *STAGES] + (["snakemake"] if all("seconds" in r.get("snakemake", {})
                                                       for r in (small, large)) else [])
    for name in names:
        a, b = small[name]["peak_mib"], large[name]["peak_mib"]
        flatness[name] = b / a
        ok = b / a <= TARGET_FLAT_GROWTH and b < TARGET_PEAK_MIB
        print(f"{name:34}{a:8.0f} MiB -> {b:6.0f} MiB  x{b / a:4.2f}  "
              f"{_verdict(ok) if name in STAGES else ''}")
    return flatness


@contextlib.contextmanager
def work_directory(kept: str | None) -> Iterator[Path]:
    """The scripts' --workdir, kept; or a temporary directory, removed at the end."""
    workdir = Path(kept) if kept else Path(tempfile.mkdtemp(prefix="tracelab-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        yield workdir
    finally:
        if not kept:
            shutil.rmtree(workdir, ignore_errors=True)


def write_figures(report: dict, path: str | None) -> None:
    """The figures as JSON at `path` (the scripts' --json), if given."""
    if path:
        Path(path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nfigures written to {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,5000000,10000000",
                        help="comma-separated trace sizes in packets")
    parser.add_argument("--quick", action="store_true", help="one 200k-packet trace")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--workdir", help="keep traces and outputs here (reused when present)")
    parser.add_argument("--notebook-rows", type=int, default=1_000_000,
                        help="time the notebook's way on at most this many rows, then scale")
    parser.add_argument("--skip-snakemake", action="store_true")
    parser.add_argument("--core-only", action="store_true",
                        help="run only the core pipeline's outputs (validate, normalize, "
                             "features, compare) instead of every stage")
    parser.add_argument("--robustness", action="store_true",
                        help="run the workflow's default target, the robustness experiment's "
                             "perturbed copies of the trace included")
    parser.add_argument("--profile", action="store_true",
                        help="also run each stage under cProfile and print its hot spots")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child_main(json.loads(args.child))
        return 0

    sizes = [200_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    config = load_config()
    import numpy
    import pandas
    import pyarrow

    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "pyarrow": pyarrow.__version__, "pandas": pandas.__version__,
                    "numpy": numpy.__version__, "platform": platform.platform()},
        "targets": {"packets_per_s": TARGET_PACKETS_PER_S,
                    "snakemake_vs_floor_at_10M": TARGET_SNAKEMAKE_VS_FLOOR,
                    "peak_mib_at_10M": TARGET_PEAK_MIB, "flat_growth": TARGET_FLAT_GROWTH},
        "sizes": [],
    }
    with work_directory(args.workdir) as workdir:
        for packets in sorted(sizes):
            result = benchmark_size(packets, args, config, workdir)
            report["sizes"].append(result)
            print_size(result)
        if len(report["sizes"]) > 1:
            report["memory_growth"] = print_flatness(report["sizes"])
    write_figures(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
