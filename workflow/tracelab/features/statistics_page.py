"""A trace's statistics page (statistics.html): its summary, its validation, and the largest
rows of its protocol hierarchy, endpoints and conversations (`tracelab.features.statistics`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tracelab.core.html import MAX_ROWS, heading, html_table, paragraph
from tracelab.features.statistics_placement import Placement

# Rows of each endpoint and conversation type the HTML page holds (largest by bytes): every
# row up to the most a sortable, searchable page can hold (core.html); the rest are in the
# Parquet tables.
SHOWN_ROWS = MAX_ROWS


@dataclass
class Largest:
    """What the page shows of a table read in order, batch by batch: the SHOWN_ROWS rows with
    the most bytes of each type (ties in the table's order) and how many rows each type has."""

    shown: dict[str, pd.DataFrame] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)

    def add(self, rows: pa.Table) -> None:
        types = rows.column("type").cast(pa.string())
        for type_, count in zip(*pc.value_counts(types).flatten()):
            type_ = type_.as_py()
            self.counts[type_] += count.as_py()
            part = _most_bytes(rows.filter(pc.equal(types, type_))).to_pandas(
                types_mapper={pa.int32(): pd.Int32Dtype()}.get)
            part["type"] = part["type"].astype(str)
            both = pd.concat([self.shown[type_], part]) if type_ in self.shown else part
            self.shown[type_] = both.sort_values("bytes", ascending=False,
                                                 kind="stable").head(SHOWN_ROWS)


def _most_bytes(rows: pa.Table) -> pa.Table:
    """The SHOWN_ROWS `rows` with the most bytes (ties in their order), in their order: only
    these can be among the most of `rows` and any rows before them, so only these become
    pandas."""
    most = np.argsort(-rows.column("bytes").to_numpy(), kind="stable")[:SHOWN_ROWS]
    return rows.take(np.sort(most))


def _summary_rows(summary: dict) -> pd.DataFrame:
    rows = []
    for key, value in summary.items():
        if key == "trace":
            continue
        if isinstance(value, dict) and key == "protocol_counts":
            rows.append((key, "; ".join(f"{p} {c:,}" for p, c in value.items())))
        elif isinstance(value, dict):
            rows += [(f"{key.removesuffix('_quantiles')} {name}", v) for name, v in value.items()]
        else:
            rows.append((key, value))
    return pd.DataFrame(rows, columns=["quantity", "value"])


def _validation_html(report: dict) -> str:
    counts = pd.DataFrame([(key, report.get(key)) for key in (
        "status", "format", "rows_read", "rows_valid", "rows_invalid", "invalid_fraction",
        "max_invalid_fraction")], columns=["quantity", "value"])
    failed = pd.DataFrame([(name, check.get("description", ""), check.get("failures", 0))
                           for name, check in report.get("checks", {}).items()
                           if check.get("failures")], columns=["check", "what", "failures"])
    parts = [html_table(counts)]
    parts += [paragraph(f"Structural error: {error}") for error in report.get(
        "structural_errors", [])]
    parts.append(html_table(failed) if not failed.empty else
                 paragraph("Every check passed on every row.", note=True))
    return "".join(parts)


def _largest(largest: Largest, kind: str, columns: list[str]) -> str:
    """The SHOWN_ROWS rows with the most bytes of each type, and how many there are."""
    if not largest.counts:
        return paragraph(f"No {kind}.", note=True)
    parts = []
    for type_ in sorted(largest.counts):
        shown, count = largest.shown[type_].copy(), largest.counts[type_]
        # Ports are names, not quantities: no thousands separator.
        for port in [column for column in columns if column.startswith("port")]:
            shown[port] = shown[port].astype("string")
        parts.append(heading(3, f"{type_} {kind}: {count:,}"))
        if count > len(shown):
            parts.append(paragraph(f"The {len(shown)} with the most bytes; all {count:,} "
                                   f"in {kind}.parquet.", note=True))
        parts.append(html_table(shown[columns].dropna(axis=1, how="all")))
    return "".join(parts)


def _placement_note(placement: Placement) -> str:
    """How many rows without ports (an export's) were placed in their connection."""
    if not placement.placed + placement.unplaced:
        return ""
    return paragraph(
        f"Rows without ports (an export's HTTP, TLS and TCP rows whose Info shows none): "
        f"{placement.placed:,} placed in their TCP or UDP connection as the connection stage "
        f"places them, and counted there; {placement.unplaced:,} not placed (the export does "
        f"not decide their connection), counted in the address rows only.", note=True)


def statistics_html(summary: dict, validation: dict,
                    tables: tuple[Largest, Largest, pa.Table], placement: Placement) -> str:
    """The page's body: summary.json and the validation report as tables, the protocol
    hierarchy, the largest endpoints and conversations of each type (`tables`: endpoints,
    conversations, hierarchy), and how many rows without ports were placed."""
    endpoints, conversations, hierarchy = tables
    layers = hierarchy.to_pandas()
    shown_hierarchy = pd.DataFrame({
        "layers": layers["path"], "frames": layers["frames"],
        "% of frames": (100 * layers["frames_share"]).round(2), "bytes": layers["bytes"],
        "% of bytes": (100 * layers["bytes_share"]).round(2)})
    return "".join([
        heading(2, "Summary"), html_table(_summary_rows(summary)),
        heading(2, "Validation"), _validation_html(validation),
        heading(2, "Protocol hierarchy"),
        paragraph("Frames and bytes (frame lengths) per layer path; a frame counts at its "
                  "path and every shorter one. Derived from the Protocol, port and TCP flag "
                  "columns: up to the transport layer as Wireshark counts, above it the "
                  "frames where a message starts.", note=True),
        html_table(shown_hierarchy),
        heading(2, "Endpoints"),
        paragraph("Frames and bytes each address sent (tx) and received (rx); TCP and UDP "
                  "endpoints are address and port.", note=True),
        _placement_note(placement),
        _largest(endpoints, "endpoints", ["address", "port", "packets", "bytes", "tx_packets",
                                          "tx_bytes", "rx_packets", "rx_bytes"]),
        heading(2, "Conversations"),
        paragraph("Frames and bytes between two addresses (or address:port pairs), each "
                  "direction; A sent the first frame; start in seconds since the trace's "
                  "first packet.", note=True),
        _largest(conversations, "conversations",
                 ["address_a", "port_a", "address_b", "port_b", "packets", "bytes",
                  "packets_a_to_b", "bytes_a_to_b", "packets_b_to_a", "bytes_b_to_a",
                  "rel_start_s", "duration_s"]),
    ])
