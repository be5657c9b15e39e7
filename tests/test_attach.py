"""Rows without ports (CSV exports) join their connection only where the sequence evidence
decides it; ambiguous rows are left out and counted. Ground truth: the bundled web_browsing
capture, whose every row has ports (rows matched by frame number)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from conftest import REPO, bundled_results
from packet_factory import handshake, packet_frame, portless, tcp

from tracelab.core.packets import read_staged
from tracelab.ingest.validate import validate_trace
from tracelab.security import attach, connections
from tracelab.security.attach import attach_portless
from tracelab.security.connections import (
    assemble_connections,
    flow_settings,
    load_packets,
)

C, S = "10.0.0.1", "10.0.0.2"


def two_parallel_requests(first: int, second: int) -> list[dict]:
    """Two connections to the same server; each client sends one request without ports
    (`first` bytes on port 41000, `second` on 41001), both before either server ACK."""
    return [*handshake(0.000, C, 41000, S, 443), *handshake(0.010, C, 41001, S, 443),
            portless(0.020, C, S, "TLSv1.2", payload=first),
            portless(0.021, C, S, "TLSv1.2", payload=second),
            tcp(0.030, S, 443, C, 41000, "A", seq=1, ack=1 + first),
            tcp(0.031, S, 443, C, 41001, "A", seq=1, ack=1 + second),
            tcp(0.040, C, 41000, S, 443, "FA", seq=1 + first, ack=1),
            tcp(0.041, C, 41001, S, 443, "FA", seq=1 + second, ack=1)]


def test_records_of_different_sizes_join_the_connection_whose_gap_they_fill():
    packets = packet_frame(two_parallel_requests(93, 180))
    result = assemble_connections(packets, flow_settings(), "t")
    flows = result.flows.set_index("orig_port")
    assert result.packet_uid[6] == flows.loc[41000, "uid"]
    assert result.packet_uid[7] == flows.loc[41001, "uid"]
    assert result.left_out == {}


def test_records_of_equal_sizes_in_parallel_connections_are_left_out_and_counted():
    """Either connection's ACK accounts for either row: the export cannot tell them apart."""
    result = assemble_connections(packet_frame(two_parallel_requests(93, 93)), flow_settings(), "t")
    assert result.packet_flow[6] == result.packet_flow[7] == -1
    assert result.left_out == {"TLSv1.2": 2}


def test_stream_order_decides_between_records_of_equal_size():
    """Connection A's server acknowledges 93 bytes before B's row was sent: only the first row
    can be A's, so the second is B's although both are 93 bytes."""
    rows = [*handshake(0.000, C, 41000, S, 443), *handshake(0.010, C, 41001, S, 443),
            portless(0.020, C, S, "TLSv1.2", payload=93),
            tcp(0.025, S, 443, C, 41000, "A", seq=1, ack=94),
            portless(0.030, C, S, "TLSv1.2", payload=93),
            tcp(0.035, S, 443, C, 41001, "A", seq=1, ack=94)]
    result = assemble_connections(packet_frame(rows), flow_settings(), "t")
    flows = result.flows.set_index("orig_port")
    assert (result.packet_uid[6], result.packet_uid[8]) == \
        (flows.loc[41000, "uid"], flows.loc[41001, "uid"])


def test_attachment_reports_the_ambiguous_rows(monkeypatch):
    seen = []

    def keep(rows, ported, idle_ns):
        seen.append(attach_portless(rows, ported, idle_ns))
        return seen[-1].attached

    monkeypatch.setattr(connections, "_attach_portless", keep)
    assemble_connections(packet_frame(two_parallel_requests(93, 93)), flow_settings(), "t")
    assert seen[0].attached.empty and seen[0].ambiguous_rows.tolist() == [6, 7]


def capture_ports(trace: str, tmp_path) -> pd.DataFrame:
    """Frame -> ports, from the capture the export was made from (tracelab's capture reader,
    itself checked against tshark in test_capture.py)."""
    validate_trace(trace=trace, source=REPO / "data" / f"{trace}.pcapng", source_format="pcapng",
                   staged_path=tmp_path / "staged.arrow", report_path=tmp_path / "report.json",
                   invalid_path=tmp_path / "invalid.csv")
    staged = read_staged(tmp_path / "staged.arrow").to_pandas()
    return staged.set_index("frame")[["src_port", "dst_port"]]


def test_bundled_browsing_rows_without_ports_are_right_or_counted(tmp_path):
    """web_browsing: 708 rows of the export have no ports (TLS, HTTP, reassembled segments).
    Before, 37 joined a wrong connection. Now none does: 653 join their true connection and
    55 are left out and counted, each with a twin of the same size and direction to the same
    server among them (parallel handshakes whose records can swap)."""
    packets = load_packets(bundled_results() / "packets/web_browsing.parquet").to_pandas()
    result = assemble_connections(packets, flow_settings(), "t")
    flows = result.flows.set_index("uid")
    truth = capture_ports("web_browsing", tmp_path)
    rows = packets.assign(uid=result.packet_flow, is_orig=result.packet_is_orig)
    rows = rows[rows["src_port"].isna() & ~rows["protocol"].isin(["ICMPv6"])]
    attached = rows[rows["uid"] >= 0]
    flow = flows.iloc[attached["uid"]]
    sport = np.where(attached["is_orig"], flow["orig_port"], flow["resp_port"])
    dport = np.where(attached["is_orig"], flow["resp_port"], flow["orig_port"])
    right = (truth.loc[attached["frame"], "src_port"].to_numpy() == sport) & \
        (truth.loc[attached["frame"], "dst_port"].to_numpy() == dport)
    left_out = rows[rows["uid"] < 0]
    assert len(rows) == 708
    assert right.all(), attached[~right]["frame"].tolist()
    assert len(attached) >= 653
    assert left_out["protocol"].astype(str).value_counts().to_dict() == \
        {k: v for k, v in result.left_out.items() if k != "ICMPv6"}
    twins = left_out.groupby(["src", "dst", "length"], observed=True)["frame"].transform("size")
    assert (twins >= 2).all()


def chain_group(rng, gaps: int, extra_row: bool) -> pd.DataFrame:
    """Candidate pairs of one direction of one connection: `gaps` gaps, each filled by one to
    three rows sent in order, every row also a candidate of the neighbouring gaps (their frame
    windows overlap); with `extra_row`, one more row (frame 0) that no gap needs."""
    sizes = [rng.integers(1, 1500, rng.integers(1, 4)) for _ in range(gaps)]
    gap_bytes = [int(part.sum()) for part in sizes]
    gap_start = np.cumsum([1, *gap_bytes[:-1]])
    records = [(gap, int(size)) for gap, part in enumerate(sizes) for size in part]
    if extra_row:
        records.insert(0, (int(rng.integers(0, gaps)), int(rng.integers(1, 1500))))
    pairs = [(row, gap, row + (not extra_row), size, 7, True, gap_start[gap], gap_bytes[gap])
             for row, (true_gap, size) in enumerate(records)
             for gap in {max(true_gap - 1, 0), true_gap, min(true_gap + 1, gaps - 1)}
             if size <= gap_bytes[gap]]
    return pd.DataFrame(pairs, columns=attach._GROUP_COLUMNS).assign(group=0)


def test_chains_decided_at_once_are_what_the_search_finds():
    """The vectorised chain rule (rows of one direction adding up to its gaps fill them in
    frame order) places every row where the exhaustive search of `_Group` does, and decides
    nothing when a row is left over (several placements may then remain)."""
    rng = np.random.default_rng(3)
    decided = 0
    for trial in range(300):
        pairs = chain_group(rng, gaps=int(rng.integers(1, 4)), extra_row=trial % 3 == 0)
        in_chain = attach._chain_pairs(pairs)
        placed, unsure = attach._Group.of(list(pairs[attach._GROUP_COLUMNS].itertuples(
            index=False, name=None))).solve(attach.MAX_ROUNDS, attach.MAX_COMBINATIONS)
        if in_chain.any():
            decided += 1
            assert set(zip(pairs["row"][in_chain], pairs["gap"][in_chain])) == \
                set(placed.items()) and not unsure
            assert in_chain.sum() == pairs["row"].nunique()
        if trial % 3 == 0 and (pairs["frame"] == 0).any():
            assert not in_chain.any()
    assert decided >= 150
