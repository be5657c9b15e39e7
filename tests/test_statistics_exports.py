"""Wireshark's statistics of a CSV export (tracelab.features.statistics) against tshark's of the
capture it was exported from, and the tables as tools read them (pandas dtypes, a glob of packet
tables).

The bundled exports and captures are the same traffic, frame for frame (the same frame numbers
and lengths); the export shows addresses resolved to names that carry the address with its
octets reversed (10.1.18.198.host.example-hosting.net is 198.18.1.10), which the comparison
undoes. Rows without ports of the export are placed in their connection by the connection
stage's attachment, which writes its placements for the statistics; tshark's own per-frame ports
tell whether each placement is right.
"""

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import REPO, connection_outputs

from tracelab.features.statistics import file_statistics, trace_statistics
from tracelab.features.statistics_placement import Placement
from tracelab.ingest.normalize import normalize_trace
from tracelab.ingest.validate import validate_trace
from tracelab.security.connections import write_connections

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark not installed (apt: tshark)")
REVERSED_NAME = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+)\.host\.")


def tshark(capture: Path, *args: str) -> str:
    return subprocess.run([TSHARK, "-r", str(capture), *args], capture_output=True, text=True,
                          check=True).stdout


def address_of(name: str) -> str:
    """The address an export's resolved name carries (octets reversed), else the text."""
    match = REVERSED_NAME.match(name)
    return ".".join(reversed(match.groups())) if match else name


def normalized(source: Path, source_format: str, out: Path, trace: str) -> Path:
    validate_trace(trace=trace, source=source, source_format=source_format,
                   staged_path=out / f"{trace}.arrow", report_path=out / f"{trace}.json",
                   invalid_path=out / f"{trace}.invalid.csv")
    normalize_trace(trace=trace, staged_path=out / f"{trace}.arrow", source=source,
                    source_format=source_format, packets_path=out / f"{trace}.parquet")
    return out / f"{trace}.parquet"


@pytest.fixture(scope="module", params=["web_browsing", "log4j_scan"])
def export(request, tmp_path_factory):
    """(capture, export's packet table, tshark's TCP frames of the capture by frame number)."""
    out = tmp_path_factory.mktemp("export")
    capture = REPO / "data" / f"{request.param}.pcapng"
    packets = normalized(REPO / "data" / f"{request.param}.csv.gz", "wireshark_csv", out,
                         request.param)
    frames = pd.read_csv(io.StringIO(tshark(
        capture, "-Y", "tcp", "-T", "fields", "-E", "separator=\t", "-E", "header=y",
        "-e", "frame.number", "-e", "frame.len", "-e", "ip.src", "-e", "ip.dst",
        "-e", "tcp.srcport", "-e", "tcp.dstport")), sep="\t",
        dtype={"tcp.srcport": "Int32", "tcp.dstport": "Int32"}).set_index("frame.number")
    return capture, packets, frames


def placements_of(packets: Path, partition_packets: int = 1_000_000) -> Path:
    """The connection stage's placements of the packet table's rows without ports, made with
    partitions of `partition_packets` packets."""
    folder = packets.parent / f"{packets.stem}-connections-{partition_packets}"
    folder.mkdir(exist_ok=True)
    write_connections(trace="t", packets_path=packets,
                      settings={"partition_packets": partition_packets},
                      placements_path=folder / "placements.parquet", **connection_outputs(folder))
    return folder / "placements.parquet"


def portless_rows(packets: Path) -> pd.Series:
    """Rows without ports of a transport protocol, counted with pandas on the packet table."""
    table = pd.read_parquet(packets)
    return table["src_port"].isna() & ~table["protocol"].isin(["ICMP", "ICMPv6", "ARP"])


def placement_of(packets: Path) -> tuple[pd.DataFrame, Placement]:
    """The export's rows without ports of a transport protocol, with the ports and transport
    (`proto`) the connection stage placed them with (null where it left them out)."""
    table = pd.read_parquet(packets)
    placements = pd.read_parquet(placements_of(packets))
    rows = table[portless_rows(packets)].drop(columns=["src_port", "dst_port"]).merge(
        placements, on="frame", how="left", validate="one_to_one")
    placed = rows["proto"].notna()
    assert placed.sum() == len(placements)  # only rows without ports are placed
    return rows, Placement(placed=int(placed.sum()), unplaced=int((~placed).sum()))


def test_hierarchy_of_export_equals_tsharks_of_capture_up_to_the_transport(export):
    capture, packets, _ = export
    expected, stack = {}, []
    for line in tshark(capture, "-q", "-z", "io,phs").splitlines():
        match = re.match(r"^( *)(\S+)\s+frames:(\d+) bytes:(\d+)$", line)
        if match:
            depth = len(match.group(1)) // 2
            stack[depth:] = [match.group(2)]
            expected[":".join(["frame", *stack[1:]])] = (int(match.group(3)),
                                                        int(match.group(4)))
    hierarchy = file_statistics(packets, "t", placements_of(packets))[2].to_pandas()
    ours = {row.path: (row.frames, row.bytes) for row in hierarchy.itertuples()
            if row.depth <= 2}
    assert ours == {path: counts for path, counts in expected.items()
                    if path.count(":") <= 2 and not path.endswith("_ws.short")}
    # Rows "[TCP segment of a reassembled PDU]" (Protocol TCP, no ports) are TCP frames too.
    assert ours["frame:ip:tcp"] == expected["frame:ip:tcp"]


def test_placed_rows_are_in_their_true_connection(export):
    _, packets, frames = export
    rows, placement = placement_of(packets)
    placed = rows[rows["proto"].notna()]
    truth = frames.loc[placed["frame"]]
    assert (placed["length"].to_numpy() == truth["frame.len"].to_numpy()).all()  # same frames
    right = (placed["src_port"].to_numpy() == truth["tcp.srcport"].to_numpy()) & \
        (placed["dst_port"].to_numpy() == truth["tcp.dstport"].to_numpy())
    assert right.all()  # none in a wrong connection
    assert placement.placed == len(placed) and placement.placed + placement.unplaced == len(rows)
    assert placement.placed >= 0.9 * len(rows) > 0


def tshark_tcp_tables(frames: pd.DataFrame) -> tuple[dict, dict]:
    """TCP conversations (unordered pair: frames and bytes each way, lower endpoint first) and
    endpoints (tx and rx frames and bytes) of tshark's frames."""
    src = frames["ip.src"] + ":" + frames["tcp.srcport"].astype(str)
    dst = frames["ip.dst"] + ":" + frames["tcp.dstport"].astype(str)
    directed = frames.groupby([src, dst])["frame.len"].agg(["size", "sum"])
    conversations = {}
    for (a, b), (count, size) in directed.iterrows():
        low, high = sorted((a, b))
        counts = conversations.setdefault((low, high), [0, 0, 0, 0])
        side = 0 if a == low else 2
        counts[side:side + 2] = [int(count), int(size)]
    sent = frames.groupby(src)["frame.len"].agg(["size", "sum"])
    received = frames.groupby(dst)["frame.len"].agg(["size", "sum"])
    endpoints = pd.concat([sent, received], axis=1).fillna(0)
    return ({key: tuple(value) for key, value in conversations.items()},
            {key: tuple(int(v) for v in row) for key, row in endpoints.iterrows()})


def our_tcp_tables(packets: Path) -> tuple[dict, dict]:
    endpoints, conversations, _ = (t.to_pandas() for t in file_statistics(
        packets, "t", placements_of(packets)))
    mine_conversations = {}
    for r in conversations[conversations["type"] == "TCP"].itertuples():
        a = f"{address_of(r.address_a)}:{r.port_a}"
        b = f"{address_of(r.address_b)}:{r.port_b}"
        forward = (r.packets_a_to_b, r.bytes_a_to_b, r.packets_b_to_a, r.bytes_b_to_a)
        mine_conversations[tuple(sorted((a, b)))] = forward if a < b else (*forward[2:],
                                                                           *forward[:2])
    mine_endpoints = {f"{address_of(r.address)}:{r.port}": (
        r.tx_packets, r.tx_bytes, r.rx_packets, r.rx_bytes)
        for r in endpoints[endpoints["type"] == "TCP"].itertuples()}
    return mine_conversations, mine_endpoints


def test_tcp_conversations_and_endpoints_differ_from_tsharks_only_by_unplaced_rows(export):
    """Each TCP conversation and endpoint equals tshark's, less the frames the placement left
    unplaced (tshark's own ports say where they belong); with none unplaced, equal outright."""
    _, packets, frames = export
    rows, placement = placement_of(packets)
    unplaced = rows.loc[rows["proto"].isna(), "frame"]
    conversations, endpoints = our_tcp_tables(packets)
    assert (conversations, endpoints) == tshark_tcp_tables(frames.drop(index=unplaced))
    whole = tshark_tcp_tables(frames)
    equal = sum(conversations[key] == value for key, value in whole[0].items()) + \
        sum(endpoints[key] == value for key, value in whole[1].items())
    assert (equal == len(whole[0]) + len(whole[1])) == (placement.unplaced == 0)


def run_stage(packets: Path, out: Path, placements: Path) -> dict:
    (out / "summary.json").write_text(json.dumps({"trace": "t", "packets": 1}))
    (out / "validation.json").write_text(json.dumps({"status": "passed", "checks": {}}))
    return trace_statistics(trace="t", packets_path=packets, placements_path=placements,
                            summary_path=out / "summary.json",
                            validation_path=out / "validation.json",
                            endpoints_path=out / "e.parquet",
                            conversations_path=out / "c.parquet",
                            hierarchy_path=out / "h.parquet", html_path=out / "s.html")


def test_stage_counts_rows_left_unplaced_and_types_ports_as_integers(export, tmp_path):
    _, packets, _ = export
    rows, placement = placement_of(packets)
    counts = run_stage(packets, tmp_path, placements_of(packets))
    portless = portless_rows(packets)
    assert counts["rows_without_ports_placed"] + counts["rows_without_ports_unplaced"] == \
        portless.sum() == len(rows)
    assert counts["rows_without_ports_unplaced"] == placement.unplaced
    for name in ("e", "c"):
        metadata = pq.read_schema(tmp_path / f"{name}.parquet").metadata
        assert int(metadata[b"tracelab.rows_without_ports_unplaced"]) == placement.unplaced
        assert int(metadata[b"tracelab.rows_without_ports_placed"]) == placement.placed
    page = (tmp_path / "s.html").read_text()
    assert f"{placement.placed:,} placed in their TCP or UDP connection" in page
    assert f"{placement.unplaced:,} not placed" in page
    # pandas reads ports as nullable integers: address rows hold <NA>, port rows integers.
    endpoints = pd.read_parquet(tmp_path / "e.parquet")
    conversations = pd.read_parquet(tmp_path / "c.parquet")
    assert endpoints["port"].dtype == "Int32"
    assert (conversations[["port_a", "port_b"]].dtypes == "Int32").all()
    ported = endpoints["type"].isin(["TCP", "UDP"])
    assert endpoints.loc[ported, "port"].notna().all()
    assert endpoints.loc[~ported, "port"].isna().all()
    assert ported.any() and (~ported).any()


def test_packet_tables_globbed_tell_their_traces_apart(tmp_path):
    """A glob of packet tables (as DuckDB's read_parquet('results/packets/*.parquet') or
    pyarrow.dataset reads it) names each row's trace without the file name."""
    folder = tmp_path / "packets"
    folder.mkdir()
    for trace in ("log4j_scan", "web_browsing"):
        normalized(REPO / "data" / f"{trace}.csv.gz", "wireshark_csv", folder, trace)
    for staged in folder.glob("*.arrow"):
        staged.unlink()
    paths = sorted(folder.glob("*.parquet"))
    rows = ds.dataset([str(p) for p in paths], format="parquet").to_table(columns=["trace"])
    counted = pc.value_counts(rows.column("trace").cast("string")).to_pylist()
    assert {c["values"]: c["counts"] for c in counted} == {
        path.stem: pq.ParquetFile(path).metadata.num_rows for path in paths}


def test_duckdb_reads_the_trace_column_of_a_glob(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    folder = tmp_path / "packets"
    folder.mkdir()
    normalized(REPO / "data" / "log4j_scan.csv.gz", "wireshark_csv", folder, "log4j_scan")
    counted = duckdb.sql(f"select trace, count(*) from read_parquet('{folder}/*.parquet') "
                         "group by trace").fetchall()
    assert counted == [("log4j_scan", pq.ParquetFile(folder / "log4j_scan.parquet")
                        .metadata.num_rows)]


def test_placement_partition_by_partition_equals_the_whole_table(export, tmp_path):
    """Address pairs are never split: the connection stage placing a partition of them at a
    time (here many small partitions) writes the placements, and so the statistics, that
    placing the whole table at once gives."""
    _, packets, _ = export
    (tmp_path / "whole").mkdir()
    (tmp_path / "parted").mkdir()
    placements = {name: placements_of(packets, size)
                  for name, size in (("whole", 1_000_000), ("parted", 500))}
    assert pq.read_table(placements["parted"]).equals(pq.read_table(placements["whole"]))
    whole = run_stage(packets, tmp_path / "whole", placements["whole"])
    parted = run_stage(packets, tmp_path / "parted", placements["parted"])
    assert parted == whole and whole["rows_without_ports_placed"] > 0
    for name in ("e", "c", "h"):
        assert pq.read_table(tmp_path / "parted" / f"{name}.parquet").to_pylist() == \
            pq.read_table(tmp_path / "whole" / f"{name}.parquet").to_pylist(), name


def test_placements_of_another_packet_table_are_refused_in_one_line(tmp_path):
    """A placements file that does not belong to the packet table (here another export's) stops
    the stage, naming the file and the check."""
    folder = tmp_path / "packets"
    folder.mkdir()
    scan, browsing = (normalized(REPO / "data" / f"{trace}.csv.gz", "wireshark_csv", folder,
                                 trace) for trace in ("log4j_scan", "web_browsing"))
    with pytest.raises(ValueError, match=r"^\S*placements\.parquet: .*\(check: placements of "
                       r"this packet table\)$"):
        run_stage(scan, tmp_path, placements_of(browsing))
