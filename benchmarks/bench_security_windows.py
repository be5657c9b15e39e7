"""Benchmark of the per-source and per-window security stages and the per-trace features.

    PYTHONPATH=workflow python benchmarks/bench_security_windows.py --packets 1000000 10000000 \
        --workdir /tmp/bench-windows

For each size it generates a synthetic export (`python -m tracelab.synth`), validates and
normalizes it and builds its connections with the package functions the rules call (inputs are
reused when present in --workdir), then runs `security_windows`, `security_hosts` and
`trace_features` each in a fresh process and prints, per stage: seconds, CPU seconds, packets/s
and peak RSS. The stages' own imports happen before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = REPO / "workflow"
STAGES = ("security_windows", "security_hosts", "trace_features")


def _config() -> dict:
    sys.path.insert(0, str(PACKAGE_ROOT))
    from tracelab.core.config import with_defaults

    return with_defaults("", {})


def prepare(packets: int, seed: int, folder: Path) -> dict[str, Path]:
    """The export, packet table, flows and HTTP tables of one size (made once)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in (
        "export.csv.gz", "staged.arrow", "validation.json", "invalid.csv", "packets.parquet",
        "flows.parquet", "http.parquet")}
    if paths["flows.parquet"].exists():
        return paths
    subprocess.run([sys.executable, "-m", "tracelab.synth", "--packets", str(packets), "--seed",
                    str(seed), "--out", str(paths["export.csv.gz"])], check=True,
                   env=_environment(), stdout=subprocess.DEVNULL)
    from tracelab.ingest.normalize import normalize_trace
    from tracelab.ingest.validate import validate_trace
    from tracelab.security.connections import write_connections

    config = _config()
    trace = f"synth_{packets}"
    validate_trace(trace=trace, source=paths["export.csv.gz"], source_format="wireshark_csv",
                   staged_path=paths["staged.arrow"], report_path=paths["validation.json"],
                   invalid_path=paths["invalid.csv"], timezone="UTC",
                   settings=config["validation"])
    normalize_trace(trace=trace, staged_path=paths["staged.arrow"],
                    source=paths["export.csv.gz"], source_format="wireshark_csv",
                    packets_path=paths["packets.parquet"],
                    row_group_rows=config["normalize"]["row_group_rows"])
    paths["staged.arrow"].unlink()
    write_connections(trace=trace, packets_path=paths["packets.parquet"],
                      flows_path=paths["flows.parquet"], http_path=paths["http.parquet"],
                      settings=config["security"]["flows"])
    return paths


def replicate(source: Path, copies: int, folder: Path) -> None:
    """Inputs `copies` times the size of those in `source`: its packets, connections and
    requests repeated one after the other, each copy shifted by the trace's span (plus a
    second) and the connections' uids renumbered. For sizes whose connection stage would not
    fit this machine (main's security_connections holds the whole trace in pandas)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "flows.parquet").exists():
        return
    packets = pq.ParquetFile(source / "packets.parquet")
    flows = pq.read_metadata(source / "flows.parquet").num_rows
    span = pq.read_table(source / "packets.parquet", columns=["ts"]).column("ts").cast(
        pa.int64())
    shift_ns = pc.max(span).as_py() - pc.min(span).as_py() + 10**9
    del span
    shifted = {"packets.parquet": ["ts"], "flows.parquet": ["first_ts", "last_ts"],
               "http.parquet": ["ts"]}
    for name, time_columns in shifted.items():
        reader = pq.ParquetFile(source / name)
        with pq.ParquetWriter(folder / name, reader.schema_arrow, compression="zstd") as writer:
            for copy in range(copies):
                for group in range(reader.num_row_groups):
                    rows = reader.read_row_group(group)
                    for column in time_columns:
                        moved = pc.add(rows.column(column).cast(pa.int64()), copy * shift_ns)
                        rows = rows.set_column(rows.schema.get_field_index(column), column,
                                               moved.cast(rows.schema.field(column).type))
                    if "uid" in rows.schema.names and pa.types.is_integer(rows.schema.field(
                            "uid").type):
                        uid = pc.add(rows.column("uid"), copy * flows)
                        rows = rows.set_column(rows.schema.get_field_index("uid"), "uid", uid)
                    if name == "packets.parquet":
                        frame = pc.add(rows.column("frame"), copy * packets.metadata.num_rows)
                        rows = rows.set_column(0, "frame", frame)
                    writer.write_table(rows.cast(reader.schema_arrow))


def regrouped(path: Path, rows: int) -> Path:
    """A copy of the Parquet file `path` written in row groups of `rows` rows (made once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    copy = path.with_name(f"{path.stem}_rg{rows}.parquet")
    if not copy.exists():
        source = pq.ParquetFile(path)
        with pq.ParquetWriter(copy, source.schema_arrow, compression="zstd") as writer:
            for batch in source.iter_batches(batch_size=rows):
                writer.write_table(pa.Table.from_batches([batch]))
    return copy


def _stage_call(stage: str, paths: dict, out: Path) -> str:
    """The Python text a child process runs for one stage (imports, then the timed call)."""
    config = _config()
    calls = {
        "security_windows": (
            "from tracelab.security.windows import write_windows as f",
            {"trace": "t", "packets_path": str(paths["packets.parquet"]),
                 "flows_path": str(paths["flows.parquet"]), "http_path": str(paths["http.parquet"]),
                 "windows_path": str(out / "windows.parquet"),
                 "settings": config["security"]["windows"]}),
        "security_hosts": (
            "from tracelab.security.hosts import write_hosts as f",
            {"trace": "t", "flows_path": str(paths["flows.parquet"]),
                 "hosts_path": str(out / "hosts.parquet"), "settings": config["security"]["scan"]}),
        "trace_features": (
            "from tracelab.features.summary import trace_features as f",
            {"trace": "t", "packets_path": str(paths["packets.parquet"]),
                 "summary_path": str(out / "summary.json"),
                 "distributions_path": str(out / "distributions.parquet"),
                 "settings": config["features"]}),
    }
    imports, kwargs = calls[stage]
    return (f"import json, time\n{imports}\n"
            "import pandera.pandas as pa, pandas as pd\n"
            "pa.DataFrameSchema({'x': pa.Column(int)}).validate(pd.DataFrame({'x': [1]}))\n"
            "t, c = time.perf_counter(), time.process_time()\n"
            f"f(**{kwargs!r})\n"
            "print(json.dumps({'seconds': time.perf_counter() - t, "
            "'cpu_seconds': time.process_time() - c}))\n")


def _environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    return env


def measure(stage: str, paths: dict, out: Path) -> dict:
    """Seconds and CPU seconds as the child measures them; peak RSS from wait4."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", _stage_call(stage, paths, out)],
                               env=_environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.stdout.read(), process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{stage} failed:\n{stderr[-3000:]}")
    figures = json.loads(stdout.strip().splitlines()[-1])
    figures["wall_with_start_s"] = time.perf_counter() - started
    figures["peak_mib"] = usage.ru_maxrss / 1024
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-security-windows"))
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--prepare-only", action="store_true",
                        help="make the inputs of each size and stop")
    parser.add_argument("--replicate", type=int, default=1,
                        help="measure on the inputs of each size repeated this many times")
    parser.add_argument("--flows-row-group-rows", type=int, default=0,
                        help="measure with the connections rewritten in row groups of this "
                             "many rows (main's connection stage writes one of up to 1Mi rows)")
    parser.add_argument("--make-replica", nargs=3, metavar=("SOURCE", "COPIES", "INTO"),
                        help="write SOURCE's inputs repeated COPIES times into INTO and stop")
    args = parser.parse_args(argv)
    if args.make_replica:
        source, copies, into = args.make_replica
        replicate(Path(source), int(copies), Path(into))
        return 0
    if args.prepare_only:
        for packets in args.packets:
            prepare(packets, args.seed, args.workdir / f"p{packets}")
        return 0
    results = []
    for packets in args.packets:
        # In a child: a measured process started from this one would inherit its peak RSS.
        subprocess.run([sys.executable, __file__, "--prepare-only", "--packets", str(packets),
                        "--seed", str(args.seed), "--workdir", str(args.workdir)],
                       check=True, env=_environment())
        folder = args.workdir / f"p{packets}"
        if args.replicate > 1:
            replica = Path(f"{folder}x{args.replicate}")
            subprocess.run([sys.executable, __file__, "--make-replica", str(folder),
                            str(args.replicate), str(replica)], check=True, env=_environment())
            folder = replica
            packets *= args.replicate
        paths = {name: folder / name for name in (
            "packets.parquet", "flows.parquet", "http.parquet")}
        if args.flows_row_group_rows:
            paths["flows.parquet"] = regrouped(paths["flows.parquet"], args.flows_row_group_rows)
        out = folder / "out"
        out.mkdir(exist_ok=True)
        for stage in args.stages:
            figures = measure(stage, paths, out)
            figures.update(stage=stage, packets=packets,
                           packets_per_s=packets / figures["seconds"])
            results.append(figures)
            print(f"{packets:>11,} {stage:<17} {figures['seconds']:7.2f} s  "
                  f"cpu {figures['cpu_seconds']:7.2f} s  "
                  f"{figures['packets_per_s'] / 1e6:6.2f} M packets/s  "
                  f"peak {figures['peak_mib']:7.0f} MiB", flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
