"""Wireshark's retransmission checks on crafted captures: spurious retransmissions (data the
receiver has already acknowledged), fast retransmissions, out-of-order segments and plain
retransmissions, in the order of tcp_analyze_sequence_number() (epan/dissectors/packet-tcp.c).

The expected notes are what tshark 4.0.17 shows in its Info column for the same frames; with
tshark installed, a damaged synthetic capture is also compared with tshark's tcp.analysis.*
fields frame by frame.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess

import dpkt
import numpy as np
import pandas as pd
import pytest
from trace_files import T0, A, F, P, S, ether, ipv4, stage, tcp, udp

from tracelab.ingest.normalize import normalize_trace
from tracelab.security.connections import (
    assemble_connections,
    flow_settings,
    load_packets,
)
from tracelab.synth.capture import write_capture

CLIENT, SERVER = ("198.18.0.1", "198.18.0.2"), ("198.18.0.2", "198.18.0.1")
SPURIOUS, RETRANSMISSION = "TCP Spurious Retransmission", "TCP Retransmission"
OUT_OF_ORDER, FAST = "TCP Out-Of-Order", "TCP Fast Retransmission"

# (ms, from the client?, flags, seq, ack, payload bytes, client port, Wireshark's note; a dup
# ACK names the frame of the last ACK that was not one, {ack_frame}: the 12th)
# The first handshake takes 20 ms from SYN to ACK: Wireshark's out-of-order threshold.
SCENARIO = [
    (0, True, S, 100, 0, 0, 40000, None),
    (10, False, S | A, 500, 101, 0, 40000, None),
    (20, True, A, 101, 501, 0, 40000, None),
    (21, True, A | P, 101, 501, 100, 40000, None),
    (22, True, A | P, 201, 501, 100, 40000, None),
    (30, False, A, 501, 201, 0, 40000, None),
    # Acknowledged data sent again within the RTT: spurious, not out of order.
    (31, True, A | P, 101, 501, 100, 40000, SPURIOUS),
    (300, True, A | P, 201, 501, 100, 40000, RETRANSMISSION),     # not acknowledged, late
    (301, True, A | P, 301, 501, 100, 40000, None),
    (302, True, A | P, 401, 501, 100, 40000, None),
    # Not acknowledged, 5 ms after nextseq rose: within the 20 ms RTT, out of order.
    (307, True, A | P, 301, 501, 100, 40000, OUT_OF_ORDER),
    (400, False, A, 501, 501, 0, 40000, None),
    (900, True, A | P, 401, 501, 100, 40000, SPURIOUS),           # acknowledged, late
    (901, True, A | P, 501, 501, 100, 40000, None),
    (902, True, A | P, 601, 501, 100, 40000, None),
    (910, False, A, 501, 501, 0, 40000, "TCP Dup ACK {ack_frame}#1"),
    (911, False, A, 501, 501, 0, 40000, "TCP Dup ACK {ack_frame}#2"),
    (912, False, A, 501, 501, 0, 40000, "TCP Dup ACK {ack_frame}#3"),
    (915, True, A | P, 501, 501, 100, 40000, FAST),
    (920, False, A, 501, 701, 0, 40000, None),
    (921, True, A | P, 601, 501, 100, 40000, SPURIOUS),
    (922, True, A | P, 651, 501, 100, 40000, RETRANSMISSION),     # half acknowledged
    (1000, True, F | A, 751, 501, 0, 40000, None),
    # The FIN again: its sequence number counts, so it ends at nextseq: a retransmission.
    (1001, True, F | A, 751, 501, 0, 40000, RETRANSMISSION),
    (2000, True, S, 7000, 0, 0, 40001, None),
    (2001, False, S | A, 9000, 7001, 0, 40001, None),
    (2002, True, S, 7000, 0, 0, 40001, RETRANSMISSION),          # the SYN again
    (2003, True, A, 7001, 9001, 0, 40001, None),
    (2004, False, A | P, 9001, 7001, 10, 40001, None),
    (2005, True, A, 7001, 9011, 0, 40001, None),
    (2006, False, A | P, 9001, 7001, 10, 40001, SPURIOUS),
]


def write_timed(path, frames):
    """(ns, Ethernet frame) pairs as a ns pcap."""
    with open(path, "wb") as handle:
        handle.write(bytes(dpkt.pcap.LEFileHdr(magic=dpkt.pcap.TCPDUMP_MAGIC_NANO,
                                                snaplen=262144, linktype=1)))
        for ns, frame in frames:
            frame = bytes(frame)
            handle.write(struct.pack("<IIII", T0 + ns // 10**9, ns % 10**9, len(frame),
                                     len(frame)))
            handle.write(frame)
    return path


def scenario_frames(filler: int = 0):
    """The scenario's frames; `filler` UDP frames of 1000 bytes after the sixth, so that a
    batch of 64 KiB ends between the handshake and the retransmissions."""
    frames = []
    for k, (ms, client, flags, seq, ack, size, port, _) in enumerate(SCENARIO):
        ends = (port, 80) if client else (80, port)
        packet = tcp(*ends, flags, seq=seq, ack=ack, data=b"x" * size)
        frames.append((ms * 10**6, ether(ipv4(packet, 6, *(CLIENT if client else SERVER)))))
        if k == 5:
            frames += [((30 * 10**6) + i, ether(ipv4(udp(9, 9, bytes(1000)), 17)))
                       for i in range(filler)]
    return frames


@pytest.mark.parametrize("filler", [0, 80])
def test_retransmission_kinds_as_wireshark_names_them(tmp_path, filler):
    path = write_timed(tmp_path / "retransmissions.pcap", scenario_frames(filler))
    table, _, error = stage(path, tmp_path, batch_bytes=1 << 16)
    assert error is None
    notes = table.loc[table["tcp_seq"].notna(), "tcp_analysis"]
    expected = [note and note.format(ack_frame=12 + filler) for *_, note in SCENARIO]
    assert notes.astype(object).where(notes.notna(), None).tolist() == expected


def test_a_spurious_retransmission_gives_the_flow_history_its_t(tmp_path):
    """Zeek's history letter for a responder's retransmission, whatever its timing."""
    frames = [(0, True, S, 100, 0, 0), (10, False, S | A, 500, 101, 0),
              (20, True, A, 101, 501, 0), (21, False, A | P, 501, 101, 100),
              (22, False, A | P, 601, 101, 100), (23, True, A, 101, 701, 0),
              # 2 ms after the server's nextseq rose, already acknowledged.
              (24, False, A | P, 501, 101, 100)]
    path = write_timed(tmp_path / "spurious.pcap", [
        (ms * 10**6, ether(ipv4(tcp(*((40000, 80) if client else (80, 40000)), flags,
                                    seq=seq, ack=ack, data=b"y" * size), 6,
                               *(CLIENT if client else SERVER))))
        for ms, client, flags, seq, ack, size in frames])
    table, _, _ = stage(path, tmp_path)
    assert table["tcp_analysis"].iloc[-1] == SPURIOUS
    out = tmp_path / "out_trace"
    normalize_trace(trace="trace", staged_path=out / "staged.arrow", source=path,
                    source_format="pcap", packets_path=out / "packets.parquet")
    flows = assemble_connections(load_packets(out / "packets.parquet"), flow_settings(), "t").flows
    assert "t" in flows["history"].iloc[0]


def damaged_copy(source, target, seed: int):
    """`source` (a little-endian pcap) with records dropped, duplicated up to 50 ms later and
    swapped with their neighbours: retransmissions of every kind."""
    rng = random.Random(seed)
    raw = source.read_bytes()
    records, pos = [], 24
    while pos + 16 <= len(raw):
        seconds, fraction, captured, _ = struct.unpack_from("<IIII", raw, pos)
        records.append((seconds * 10**9 + fraction, raw[pos + 8:pos + 16 + captured]))
        pos += 16 + captured
    kept = []
    for ns, rest in records:
        draw = rng.random()
        if draw < 0.03:
            continue
        kept.append((ns, rest))
        if draw < 0.08:
            kept.append((ns + rng.randrange(50_000_000), rest))
    for i in range(len(kept) - 1):
        if rng.random() < 0.03:
            kept[i], kept[i + 1] = kept[i + 1], kept[i]
    with open(target, "wb") as handle:
        handle.write(raw[:24])
        for ns, rest in kept:
            handle.write(struct.pack("<II", ns // 10**9, ns % 10**9) + rest)
    return target


# tcp.analysis field -> the note our Info text carries. Not compared: fast retransmission
# and "ACKed unseen segment" (Wireshark tracks a highest acknowledgeable sequence number and,
# after an unseen-segment ACK, sets the other side's dup-ACK count to -1, which its 4.0
# release then takes as "at least 2"; the capture reader keeps the simpler rule).
TSHARK_NOTES = {"retransmission": "Retransmission", "spurious_retransmission": SPURIOUS,
                "out_of_order": OUT_OF_ORDER, "duplicate_ack": "TCP Dup ACK",
                "lost_segment": "TCP Previous segment not captured",
                "window_update": "TCP Window Update", "window_full": "TCP Window Full",
                "keep_alive": "TCP Keep-Alive", "zero_window": "TCP ZeroWindow"}


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")
@pytest.mark.parametrize("seed", [1, 2])
def test_analysis_flags_agree_with_tshark_on_a_damaged_capture(tmp_path, seed):
    clean = tmp_path / "clean.pcap"
    write_capture(clean, packets=20_000, seed=seed, fmt="pcap")
    path = damaged_copy(clean, tmp_path / "damaged.pcap", seed)
    table, _, error = stage(path, tmp_path, batch_bytes=1 << 18)
    assert error is None
    fields = [part for name in TSHARK_NOTES for part in ("-e", f"tcp.analysis.{name}")]
    output = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number",
                             *fields], capture_output=True, text=True, check=True).stdout
    tshark = pd.DataFrame([line.split("\t") for line in output.splitlines()],
                          columns=["frame", *TSHARK_NOTES]).astype({"frame": int})
    ours = table.set_index("frame")["tcp_analysis"].reindex(tshark["frame"]).fillna("")
    assert (tshark["spurious_retransmission"] != "").sum() > 10
    for name, note in TSHARK_NOTES.items():
        theirs = (tshark[name] != "").to_numpy()
        mine = ours.str.contains(note, regex=False).to_numpy()
        differ = tshark["frame"].to_numpy()[theirs != mine]
        assert not len(differ), f"{name}: frames {differ[:10]} (tshark {theirs.sum()}, " \
                                f"ours {mine.sum()})"
    assert np.array_equal(tshark["frame"], table["frame"])
