#!/usr/bin/env python
"""Connection stage benchmark: seconds, CPU seconds, packets/s and peak RSS of
`security_connections` (tracelab.security.connections.write_connections) on packet
tables made from synthetic exports, each run in its own subprocess (peak RSS from wait4).

    python benchmarks/bench_connections.py --sizes 1000000 10000000 --work /tmp/bench
    python benchmarks/bench_connections.py --packets-table results/packets/x.parquet

A packet table is made once per size (`python -m tracelab.synth --packets N --seed 7`, then
validate and normalize with the package functions and config/config.yaml, as
bench_pipeline.py does) and kept in --work. The stage runs with the config's
`security.flows` section; --partition-packets overrides its partition size. A script, not a
test: figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def packet_table(packets: int, work: Path) -> Path:
    """The normalized packet table of a synthetic export of `packets` rows (made once)."""
    import bench_pipeline

    from tracelab.ingest.normalize import normalize_trace
    from tracelab.ingest.validate import validate_trace

    out = work / f"p{packets}"
    table = out / "packets.parquet"
    if table.exists():
        return table
    out.mkdir(parents=True, exist_ok=True)
    source = out / "trace.csv.gz"
    subprocess.run([sys.executable, "-m", "tracelab.synth", "--packets", str(packets),
                    "--seed", "7", "--out", str(source)], check=True)
    arguments = bench_pipeline.stage_arguments("synth", source, out, bench_pipeline.load_config())
    validate_trace(**arguments["validate"])
    normalize_trace(**arguments["normalize"])
    return table


def _child(spec: dict) -> None:
    import dataclasses

    from tracelab.security import connections
    from tracelab.security.connections import write_connections

    # older code (for before/after figures): only the settings its FlowSettings knows
    names = {field.name for field in dataclasses.fields(connections.FlowSettings)}
    spec["settings"] = {k: v for k, v in spec["settings"].items() if k in names}
    out = spec["out"]
    kwargs = {"trace": "synth", "packets_path": spec["packets"], "settings": spec["settings"],
              "flows_path": f"{out}/flows.parquet", "http_path": f"{out}/http.parquet"}
    if "conn_log_path" in inspect.signature(write_connections).parameters:
        kwargs["conn_log_path"] = f"{out}/conn.log"
    started, cpu = time.perf_counter(), time.process_time()
    write_connections(**kwargs)
    print(json.dumps({"seconds": time.perf_counter() - started,
                      "cpu_seconds": time.process_time() - cpu}))


def measure(packets_path: Path, settings: dict) -> dict:
    """Run the stage once in a subprocess: its own timing, and its peak RSS from wait4."""
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(packets_path).metadata.num_rows
    with tempfile.TemporaryDirectory(dir=packets_path.parent) as out:
        spec = {"packets": str(packets_path), "out": out, "settings": settings}
        process = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stdout, stderr = process.stdout.read(), process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status):
            raise RuntimeError(stderr[-3000:])
    timed = json.loads(stdout.strip().splitlines()[-1])
    return {"packets": rows, **timed, "packets_per_s": round(rows / timed["seconds"]),
            "process_cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_mib": round(usage.ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[])
    parser.add_argument("--packets-table", type=Path, nargs="*", default=[])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tracelab-bench")
    parser.add_argument("--partition-packets", type=int)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    settings = dict(config["security"]["flows"])
    if args.partition_packets:
        settings["partition_packets"] = args.partition_packets
    tables = [*args.packets_table, *(packet_table(n, args.work) for n in args.sizes)]
    for table in tables:
        print(json.dumps({"table": str(table), **measure(table, settings)}), flush=True)


if __name__ == "__main__":
    main()
