"""Small hand-made packet tables in tracelab.core.packets.PACKET_SCHEMA."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from tracelab.core.packets import PACKET_SCHEMA, TCP_FLAG_BITS

BASE = pd.Timestamp("2026-01-01 12:00:00", tz="UTC")
FLAG_LETTERS = {"F": "FIN", "S": "SYN", "R": "RST", "P": "PSH", "A": "ACK"}
HEADER_BYTES = 66  # Ethernet + IPv4 + TCP with timestamps


def flag_bits(letters: str) -> int:
    return sum(TCP_FLAG_BITS[FLAG_LETTERS[letter]] for letter in letters)


def tcp(t: float, src: str, sport: int, dst: str, dport: int, flags: str, *, seq: int = 0,
        ack: int | None = None, payload: int = 0, win: int = 64240,
        analysis: str | None = None, protocol: str = "TCP", **fields) -> dict:
    """One TCP packet; `flags` as letters (S, A, F, R, P), e.g. "SA" for SYN-ACK."""
    return {"t": t, "src": src, "dst": dst, "protocol": protocol,
            "length": HEADER_BYTES + payload, "src_port": sport, "dst_port": dport,
            "tcp_flags": flag_bits(flags), "tcp_seq": seq,
            "tcp_ack": ack if ack is not None or "A" not in flags else 1,
            "tcp_win": win, "tcp_len": payload, "tcp_analysis": analysis, **fields}


def udp(t: float, src: str, sport: int, dst: str, dport: int, *, payload: int = 20,
        protocol: str = "UDP", **fields) -> dict:
    return {"t": t, "src": src, "dst": dst, "protocol": protocol, "length": 42 + payload,
            "src_port": sport, "dst_port": dport, **fields}


def portless(t: float, src: str, dst: str, protocol: str, *, payload: int = 100,
             **fields) -> dict:
    """A row whose Info shows no ports, as HTTP and TLS rows of a CSV export."""
    return {"t": t, "src": src, "dst": dst, "protocol": protocol,
            "length": HEADER_BYTES + payload, **fields}


def packet_table(rows: list[dict]) -> pa.Table:
    """PACKET_SCHEMA rows; frames numbered in list order, `t` seconds after BASE. Requests get
    HTTP/1.1 unless a row sets `http_version` (None: a request line cut by the snap length)."""
    columns = {field.name: [] for field in PACKET_SCHEMA}
    first = min(row["t"] for row in rows) if rows else 0.0
    for frame, row in enumerate(rows, start=1):
        values = {"trace": "t", "frame": frame, "ts": BASE + pd.Timedelta(seconds=row["t"]),
                  "t_rel_s": row["t"] - first, "info": row.get("info", ""),
                  "http_version": "HTTP/1.1" if row.get("http_method") else None, **row}
        for name in columns:
            columns[name].append(values.get(name))
    arrays = {}
    for field in PACKET_SCHEMA:
        if pa.types.is_dictionary(field.type):
            arrays[field.name] = pa.array(columns[field.name], pa.string()).dictionary_encode()
        else:
            arrays[field.name] = pa.array(columns[field.name], field.type)
    return pa.table(arrays).cast(PACKET_SCHEMA)


def packet_frame(rows: list[dict]) -> pd.DataFrame:
    """The same rows as the pandas frame the connection stage reads."""
    return packet_table(rows).to_pandas()


def handshake(t: float, client: str, sport: int, server: str, dport: int) -> list[dict]:
    """SYN, SYN-ACK, ACK (relative sequence numbers, as Wireshark shows them)."""
    return [tcp(t, client, sport, server, dport, "S", seq=0, ack=None),
            tcp(t + 0.001, server, dport, client, sport, "SA", seq=0, ack=1),
            tcp(t + 0.002, client, sport, server, dport, "A", seq=1, ack=1)]
