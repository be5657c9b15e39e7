"""Connections of the bundled captures against tshark, an independent decoder: frames and frame
bytes per TCP conversation and direction (`-z conv,tcp` counts frames; `-T fields` gives each
frame's length), and Zeek's payload bytes against the segment lengths tshark decodes."""

from __future__ import annotations

import io
import re
import shutil
import subprocess

import pandas as pd
import pytest
from conftest import REPO

from tracelab.ingest.normalize import normalize_trace
from tracelab.ingest.validate import validate_trace
from tracelab.security.connections import FLOWS, write_connections

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
CAPTURES = ["web_browsing", "log4j_scan"]


def tshark(*args: str) -> str:
    return subprocess.run(["tshark", *args], capture_output=True, text=True, check=True,
                          timeout=300).stdout


def tshark_conversation_frames(capture) -> pd.DataFrame:
    """`tshark -q -z conv,tcp`: frames A->B and B->A for each TCP conversation."""
    rows = []
    line = re.compile(r"^(\S+):(\d+)\s+<->\s+(\S+):(\d+)\s+(\d+)\s+\S+ \S+\s+(\d+)\s")
    for text in tshark("-r", str(capture), "-q", "-z", "conv,tcp").splitlines():
        if found := line.match(text):
            a, a_port, b, b_port, b_to_a, a_to_b = found.groups()
            rows.append((a, int(a_port), b, int(b_port), int(a_to_b), int(b_to_a)))
    return pd.DataFrame(rows, columns=["a", "a_port", "b", "b_port", "a_to_b", "b_to_a"])


def tshark_frames(capture) -> pd.DataFrame:
    fields = ["ip.src", "tcp.srcport", "ip.dst", "tcp.dstport", "frame.len", "tcp.len",
              "tcp.analysis.retransmission"]
    text = tshark("-r", str(capture), "-Y", "tcp", "-T", "fields", "-E", "separator=,",
                  *[arg for field in fields for arg in ("-e", field)])
    frames = pd.read_csv(io.StringIO(text), names=fields, header=None)
    frames["retransmission"] = frames.pop("tcp.analysis.retransmission").notna()
    return frames


@pytest.fixture(scope="module", params=CAPTURES)
def capture_flows(request, tmp_path_factory):
    """The stage's flows of a bundled pcapng, through the package's own validate/normalize."""
    trace, out = request.param, tmp_path_factory.mktemp(request.param)
    capture = REPO / "data" / f"{trace}.pcapng"
    validate_trace(trace=trace, source=capture, source_format="pcapng",
                   staged_path=out / "staged.arrow", report_path=out / "report.json",
                   invalid_path=out / "invalid.csv")
    normalize_trace(trace=trace, staged_path=out / "staged.arrow", source=capture,
                    source_format="pcapng", packets_path=out / "packets.parquet")
    write_connections(trace=trace, packets_path=out / "packets.parquet",
                      flows_path=out / "flows.parquet", http_path=out / "http.parquet",
                      conn_log_path=out / "conn.log", settings={})
    return capture, FLOWS.read_pandas(out / "flows.parquet")


def by_direction(flows: pd.DataFrame, values: dict[str, str]) -> pd.DataFrame:
    """Per (sender, sport, receiver, dport) sums of the flows' orig and resp columns."""
    tcp = flows[flows["proto"] == "tcp"]
    parts = []
    for side, other in (("orig", "resp"), ("resp", "orig")):
        part = tcp[[side, f"{side}_port", other, f"{other}_port"]].set_axis(
            ["src", "sport", "dst", "dport"], axis=1)
        for name, column in values.items():
            part[name] = tcp[f"{side}_{column}"].to_numpy()
        parts.append(part)
    return pd.concat(parts).astype({"src": str, "dst": str}).groupby(
        ["src", "sport", "dst", "dport"]).sum()


def test_frames_per_conversation_and_direction_match_tshark(capture_flows):
    capture, flows = capture_flows
    ours = by_direction(flows, {"frames": "pkts"})["frames"]
    conversations = tshark_conversation_frames(capture)
    assert len(conversations) > 0
    for a_to_b, (src, sport, dst, dport) in ((True, ("a", "a_port", "b", "b_port")),
                                             (False, ("b", "b_port", "a", "a_port"))):
        key = pd.MultiIndex.from_frame(conversations[[src, sport, dst, dport]].astype(
            {src: str, dst: str}), names=["src", "sport", "dst", "dport"])
        expected = conversations["a_to_b" if a_to_b else "b_to_a"].to_numpy()
        assert ours.reindex(key, fill_value=0).to_numpy().tolist() == expected.tolist()
    assert ours.sum() == conversations[["a_to_b", "b_to_a"]].to_numpy().sum()


def test_frame_bytes_and_payload_bytes_match_tshark(capture_flows):
    capture, flows = capture_flows
    frames = tshark_frames(capture)
    key = ["ip.src", "tcp.srcport", "ip.dst", "tcp.dstport"]
    frame_bytes = frames.groupby(key)["frame.len"].sum()
    payload = frames[~frames["retransmission"]].groupby(key)["tcp.len"].sum()
    ours = by_direction(flows, {"frame_bytes": "frame_bytes", "frames": "pkts"})
    ours = ours[ours["frames"] > 0]["frame_bytes"].sort_index()
    frame_bytes.index.names = payload.index.names = ours.index.names
    assert ours.tolist() == frame_bytes.reindex(ours.index).tolist()
    assert ours.sum() == frames["frame.len"].sum()
    # Zeek's payload bytes are the sequence space covered: with nothing missed, the payload
    # of every segment sent once.
    complete = flows[(flows["proto"] == "tcp") & (flows["missed_bytes"] == 0)]
    complete_ours = by_direction(complete, {"bytes": "bytes"})["bytes"]
    expected = payload.reindex(complete_ours.index, fill_value=0)
    assert (complete_ours == expected).mean() == 1.0, complete_ours[complete_ours != expected]
