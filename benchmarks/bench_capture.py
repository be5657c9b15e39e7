#!/usr/bin/env python
"""Capture benchmark: seconds, CPU seconds, packets/s and peak memory of reading a pcap/pcapng
with tracelab.ingest.capture.reader, against tshark's field extraction, nfstream, scapy's
rdpcap and dpkt's per-packet decoding, in the same run.

    python benchmarks/bench_capture.py                        # 1M packets, pcap
    python benchmarks/bench_capture.py --packets 10000000 --format pcapng
    python benchmarks/bench_capture.py --json bench_capture.json

It generates a capture with tracelab.synth.capture (seeded: web, TLS 1.3, DNS, ping, ARP,
IPv6 and scan flows) and, with the same seed, shorter ones that are byte for byte its prefix.
Each measurement runs in its own process (peak memory is that process's max RSS, from wait4;
seconds and CPU seconds count the work, not interpreter start-up, except for tshark and
nfstream's CPU seconds, measured for the whole process and its children):

- tracelab.ingest.capture.reader.stage: the pipeline's validation stage for captures, writing
  the staged file (every header field, TCP analysis, app-layer fields), on the full capture;
- framing only: the reader's record framing and header gathering, without decoding;
- tshark -T fields with the fields the stage extracts (addresses, ports, protocol, TCP flags,
  numbers, window, length, analysis flags, HTTP, DNS, TLS), on --peer-packets packets;
- nfstream's flow meter (NFStreamer, statistical analysis off), if it is installed, on
  --peer-packets packets;
- scapy.utils.rdpcap and dpkt per packet (dpkt.pcap/pcapng.Reader + Ethernet of every
  packet), on --scapy-packets packets: scapy needs about 1 KiB of memory per packet.
Peers timed on a prefix are scaled linearly to the full size (the output says so).

CPU seconds above seconds mean the work ran on several threads (the stage decodes headers
and TCP conversations on two threads, and writes on a third); on a machine shared with other
work, seconds grow while CPU seconds stay. The target from the parent issue, every stage at
least 1M packets/s, is printed beside the figures, never asserted: this is a script, not a
test.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import os
import platform
import shutil
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
    from tracelab.ingest.outcome import ValidationOutcome, validation_settings

    out = Path(tempfile.mkdtemp(prefix="bench_capture_"))
    atexit.register(shutil.rmtree, out, True)  # after the timing: a 10M staged file is ~0.5 GB
    settings = validation_settings({"batch_bytes": batch_bytes})
    report = ValidationOutcome(trace="bench", source=path, source_format="pcap",
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


def _nfstream_work(path: str, batch_bytes: int):
    from nfstream import NFStreamer

    def work():
        streamer = NFStreamer(source=path, statistical_analysis=False, n_meters=1)
        return sum(1 for _ in streamer)   # flows (the parent counts the file's packets)

    return work


WORK = {"stage": _stage_work, "framing": _framing_work, "scapy": _scapy_work,
        "dpkt": _dpkt_work, "nfstream": _nfstream_work}

# What the stage extracts, as tshark fields.
TSHARK_FIELDS = ("frame.number", "frame.time_epoch", "frame.len", "ip.src", "ip.dst",
                 "ipv6.src", "ipv6.dst", "tcp.srcport", "tcp.dstport", "udp.srcport",
                 "udp.dstport", "_ws.col.Protocol", "tcp.flags", "tcp.seq", "tcp.ack",
                 "tcp.window_size", "tcp.len", "tcp.analysis.flags", "http.request.method",
                 "http.request.uri", "http.response.code", "dns.qry.name",
                 "tls.handshake.type")


def _child_main(spec: dict) -> None:
    work = WORK[spec["kind"]](spec["path"], spec["batch_bytes"])
    started, cpu = time.perf_counter(), time.process_time()
    packets = work()
    print(json.dumps({"seconds": time.perf_counter() - started,
                      "cpu_seconds": time.process_time() - cpu, "packets": packets}))


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
    # The whole process's CPU, its reaped children's included (nfstream meters packets in
    # child processes), start-up too.
    result["process_cpu_seconds"] = usage.ru_utime + usage.ru_stime
    result["packets_per_s"] = result["packets"] / result["seconds"]
    return result


def _run_tshark(path: Path, packets: int) -> dict:
    """tshark's field extraction, output discarded: the whole process, from wait4."""
    command = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=,",
               *[part for name in TSHARK_FIELDS for part in ("-e", name)]]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"tshark failed: {process.stderr.read()[-2000:]}")
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "packets": packets, "packets_per_s": packets / seconds,
            "peak_mib": usage.ru_maxrss / 1024}


def _generate(workdir: Path, packets: int, prefix_packets: int, fmt: str, seed: int):
    from tracelab.synth.capture import write_capture

    paths = {}
    for name, count in (("full", packets), ("prefix", prefix_packets[0]),
                        ("peer", prefix_packets[1])):
        path = workdir / f"synth_{count}_{seed}.{fmt}"
        if not path.exists():
            print(f"generating {path.name} ({count:,} packets)", flush=True)
            started = time.perf_counter()
            write_capture(path, count, seed=seed, fmt=fmt)
            print(f"    {time.perf_counter() - started:.1f} s, "
                  f"{path.stat().st_size / 2**20:.0f} MiB", flush=True)
        paths[name] = path
    for name in ("prefix", "peer"):
        with open(paths["full"], "rb") as full, open(paths[name], "rb") as short:
            head = short.read(1 << 20)
            if full.read(len(head)) != head:
                raise RuntimeError("a short capture is not a prefix of the long one")
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--scapy-packets", type=int, default=100_000,
                        help="scapy and dpkt read this many packets (a prefix of the capture)")
    parser.add_argument("--peer-packets", type=int, default=1_000_000,
                        help="tshark and nfstream read this many packets (a prefix)")
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
    peer_packets = min(args.peer_packets, args.packets)
    paths = _generate(workdir, args.packets, (prefix_packets, peer_packets), args.format,
                      args.seed)

    figures = {}
    for kind, path in (("stage", paths["full"]), ("framing", paths["full"]),
                       ("dpkt", paths["prefix"]), ("scapy", paths["prefix"])):
        print(f"measuring {kind} on {path.name}", flush=True)
        figures[kind] = _run(kind, path, args.batch_bytes)
    if shutil.which("tshark"):
        print(f"measuring tshark on {paths['peer'].name}", flush=True)
        figures["tshark"] = _run_tshark(paths["peer"], peer_packets)
    if importlib.util.find_spec("nfstream"):
        print(f"measuring nfstream on {paths['peer'].name}", flush=True)
        figures["nfstream"] = _run("nfstream", paths["peer"], args.batch_bytes)
        figures["nfstream"]["cpu_seconds"] = figures["nfstream"]["process_cpu_seconds"]
        figures["nfstream"]["flows"] = figures["nfstream"]["packets"]
        figures["nfstream"]["packets"] = peer_packets
        figures["nfstream"]["packets_per_s"] = peer_packets / figures["nfstream"]["seconds"]
    for row in figures.values():
        row["scale"] = args.packets / row["packets"]
        row["cpu_packets_per_s"] = row["packets"] / row["cpu_seconds"]

    stage = figures["stage"]
    print()
    print(f"== {args.packets:,} packets, {args.format}, "
          f"{paths['full'].stat().st_size / 2**20:.0f} MiB (capture_synth seed {args.seed}); "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'':46}{'seconds':>9}{'CPU s':>8}{'packets/s':>12}{'per CPU s':>12}"
          f"{'peak MiB':>10}")
    labels = {"stage": "capture reader.stage (validation stage)",
              "framing": "  of which framing only", "tshark": "tshark -T fields",
              "nfstream": "nfstream NFStreamer (flows)", "dpkt": "dpkt per packet",
              "scapy": "scapy rdpcap"}
    for kind, label in labels.items():
        if kind not in figures:
            continue
        row = figures[kind]
        scaled = row["scale"] != 1
        label += f" ({row['packets']:,}, x{row['scale']:.0f})" if scaled else ""
        print(f"{label:46}{row['seconds'] * row['scale']:9.2f}"
              f"{row['cpu_seconds'] * row['scale']:8.2f}{row['packets_per_s']:12,.0f}"
              f"{row['cpu_packets_per_s']:12,.0f}{row['peak_mib']:10.0f}")
    print("(seconds and CPU s of the peers timed on a prefix are scaled to the full size)")
    for kind in ("tshark", "nfstream", "scapy", "dpkt"):
        if kind in figures:
            peer = figures[kind]
            print(f"stage vs {kind}: {stage['packets_per_s'] / peer['packets_per_s']:.1f}x the "
                  f"packets/s, {stage['cpu_packets_per_s'] / peer['cpu_packets_per_s']:.1f}x "
                  f"the packets per CPU second")
    for basis, rate in (("seconds", stage["packets_per_s"]),
                        ("CPU seconds spread over 2 idle cores (an upper bound)",
                         2 * stage["cpu_packets_per_s"])):
        met = "met" if rate >= TARGET_PACKETS_PER_S else "NOT met"
        print(f"target {TARGET_PACKETS_PER_S:,} packets/s on {basis}: {met} "
              f"({rate / TARGET_PACKETS_PER_S:.0%} of it)")
    if args.json:
        args.json.write_text(json.dumps({"packets": args.packets, "format": args.format,
                                         "seed": args.seed, "load": os.getloadavg(),
                                         "figures": figures}, indent=2))
    if scratch:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
