#!/usr/bin/env python
"""Capture benchmark: packets/s and peak memory of reading a pcap/pcapng with tracelab.ingest.capture.reader,
against scapy's rdpcap and dpkt's per-packet decoding of the same file.

    python benchmarks/bench_capture.py                        # 1M packets, pcap
    python benchmarks/bench_capture.py --packets 2000000 --format pcapng
    python benchmarks/bench_capture.py --json bench_capture.json

It generates a capture with tracelab.synth.capture (seeded: web, TLS 1.3, DNS, ping, ARP,
IPv6 and scan flows) and, with the same seed, a shorter one that is byte for byte its prefix.
Each measurement runs in its own subprocess (peak memory is that process's max RSS, from
wait4; packets/s counts the work, not interpreter start-up):

- tracelab.ingest.capture.reader.stage: the pipeline's validation stage for captures, writing the staged
  file (every header field, TCP analysis, app-layer fields);
- framing only: tracelab.ingest.capture.reader's record framing and header gathering, without decoding;
- scapy.utils.rdpcap (the whole capture as a list of scapy packets), on the prefix: scapy
  needs about 1 KiB of memory per packet, so it is timed on --scapy-packets and the time
  scaled linearly to the full size (the output says so);
- dpkt per packet: dpkt.pcap/pcapng.Reader + dpkt.ethernet.Ethernet of every packet, also on
  the prefix (dpkt's decoding alone, no columns), to show what per-packet parsing costs.

The target from the parent issue, every stage at least 1M packets/s, is printed beside the
figures, never asserted: this is a script, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = REPO / "workflow"
TARGET_PACKETS_PER_S = 1_000_000


# --- Work done in a child process -----------------------------------------------------------

def _stage_work(path: str, batch_bytes: int):
    from tracelab.ingest.capture import reader as capture
    from tracelab.ingest.report import ValidationReport, ValidationSettings

    out = Path(tempfile.mkdtemp(prefix="bench_capture_"))
    settings = ValidationSettings(batch_bytes=batch_bytes)
    report = ValidationReport(trace="bench", source=path, source_format="pcap",
                              settings=settings)

    def work():
        capture.stage(Path(path), staged_path=out / "staged.arrow",
                      invalid_path=out / "invalid.csv", report=report, timezone="UTC",
                      settings=settings)
        if report.structural_errors or report.rows_invalid:
            raise RuntimeError(f"unexpected failures: {report.to_dict('bench')}")
        return report.rows_valid

    return work


def _framing_work(path: str, batch_bytes: int):
    from tracelab.ingest.capture import reader as capture

    def work():
        reader = capture.open_capture(Path(path), batch_bytes, capture.MAX_PACKET)
        return sum(len(records) for records in reader.batches())

    return work


def _scapy_work(path: str, batch_bytes: int):
    from scapy.utils import rdpcap

    def work():
        return len(rdpcap(path))

    return work


def _dpkt_work(path: str, batch_bytes: int):
    import dpkt

    def work():
        count = 0
        with open(path, "rb") as handle:
            reader = (dpkt.pcapng.Reader if path.endswith(".pcapng") else dpkt.pcap.Reader)(
                handle)
            for _, frame in reader:
                dpkt.ethernet.Ethernet(frame)
                count += 1
        return count

    return work


WORK = {"stage": _stage_work, "framing": _framing_work, "scapy": _scapy_work,
        "dpkt": _dpkt_work}


def _child_main(spec: dict) -> None:
    work = WORK[spec["kind"]](spec["path"], spec["batch_bytes"])
    started = time.perf_counter()
    packets = work()
    print(json.dumps({"seconds": time.perf_counter() - started, "packets": packets}))


# --- Measuring --------------------------------------------------------------------------------

def _run(kind: str, path: Path, batch_bytes: int) -> dict:
    """One measurement in a child process: its own timing, and its peak RSS from wait4."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    spec = json.dumps({"kind": kind, "path": str(path), "batch_bytes": batch_bytes})
    process = subprocess.Popen([sys.executable, __file__, "--child", spec], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.stdout.read(), process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{kind} failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_mib"] = usage.ru_maxrss / 1024
    result["packets_per_s"] = result["packets"] / result["seconds"]
    return result


def _generate(workdir: Path, packets: int, prefix_packets: int, fmt: str, seed: int):
    from tracelab.synth.capture import write_capture

    paths = {}
    for name, count in (("full", packets), ("prefix", prefix_packets)):
        path = workdir / f"synth_{count}_{seed}.{fmt}"
        if not path.exists():
            print(f"generating {path.name} ({count:,} packets)", flush=True)
            started = time.perf_counter()
            write_capture(path, count, seed=seed, fmt=fmt)
            print(f"    {time.perf_counter() - started:.1f} s, "
                  f"{path.stat().st_size / 2**20:.0f} MiB", flush=True)
        paths[name] = path
    with open(paths["full"], "rb") as full:
        prefix = paths["prefix"].read_bytes()
        if full.read(len(prefix)) != prefix:
            raise RuntimeError("the short capture is not a prefix of the long one")
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--scapy-packets", type=int, default=100_000,
                        help="scapy and dpkt read this many packets (a prefix of the capture)")
    parser.add_argument("--format", choices=("pcap", "pcapng"), default="pcap")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch-bytes", type=int, default=8 << 20,
                        help="validation.batch_bytes (config/config.yaml's default)")
    parser.add_argument("--workdir", type=Path,
                        help="keep the generated captures here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child_main(json.loads(args.child))
        return 0

    sys.path.insert(0, str(PACKAGE_ROOT))
    scratch = tempfile.TemporaryDirectory(prefix="bench_capture_") if not args.workdir else None
    workdir = args.workdir or Path(scratch.name)
    workdir.mkdir(parents=True, exist_ok=True)
    prefix_packets = min(args.scapy_packets, args.packets)
    paths = _generate(workdir, args.packets, prefix_packets, args.format, args.seed)

    figures = {}
    for kind, path in (("stage", paths["full"]), ("framing", paths["full"]),
                       ("dpkt", paths["prefix"]), ("scapy", paths["prefix"])):
        print(f"measuring {kind} on {path.name}", flush=True)
        figures[kind] = _run(kind, path, args.batch_bytes)
    scale = args.packets / prefix_packets
    for kind in ("dpkt", "scapy"):
        figures[kind]["scaled_seconds"] = figures[kind]["seconds"] * scale

    stage = figures["stage"]
    print()
    print(f"== {args.packets:,} packets, {args.format}, "
          f"{paths['full'].stat().st_size / 2**20:.0f} MiB (capture_synth seed {args.seed}); "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'':44}{'seconds':>9}{'packets/s':>12}{'peak MiB':>10}")
    rows = [("tracelab.ingest.capture.reader.stage (validation stage)", stage),
            ("  of which framing only", figures["framing"]),
            (f"dpkt per packet ({prefix_packets:,} packets)", figures["dpkt"]),
            (f"scapy rdpcap ({prefix_packets:,} packets)", figures["scapy"])]
    for label, row in rows:
        print(f"{label:44}{row['seconds']:9.2f}{row['packets_per_s']:12,.0f}"
              f"{row['peak_mib']:10.0f}")
    ratio = stage["packets_per_s"] / figures["scapy"]["packets_per_s"]
    print(f"tracelab.ingest.capture.reader.stage is {ratio:.1f}x faster than scapy's rdpcap "
          f"(scapy timed on the first {prefix_packets:,} packets and scaled linearly: "
          f"{figures['scapy']['scaled_seconds']:.0f} s for {args.packets:,})")
    print(f"    and {stage['packets_per_s'] / figures['dpkt']['packets_per_s']:.1f}x faster "
          f"than decoding each packet with dpkt (no columns, no analysis)")
    met = "met" if stage["packets_per_s"] >= TARGET_PACKETS_PER_S else "NOT met"
    print(f"target {TARGET_PACKETS_PER_S:,} packets/s: {met} "
          f"({stage['packets_per_s'] / TARGET_PACKETS_PER_S:.0%} of it)")
    if args.json:
        args.json.write_text(json.dumps({"packets": args.packets, "format": args.format,
                                         "seed": args.seed, "figures": figures}, indent=2))
    if scratch:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
