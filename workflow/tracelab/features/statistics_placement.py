"""An export's rows without ports counted in their connection, for Wireshark's statistics.

In a Wireshark CSV export the Info of HTTP and TLS rows, and of the TCP rows "[TCP segment of a
reassembled PDU]" that start a message, shows no ports, while Wireshark's Conversations and
Endpoints count such frames in their TCP conversation. The connection stage places these rows
in their connection from the sequence numbers around them (`tracelab.security.attach`: on the
bundled browsing export, every row it places is in its true connection, and it leaves out what
the export cannot decide) and writes each placement, by frame (`PLACEMENTS`: the connection's
ports as the row sent them, the originator's as source when the originator sent it, and its
transport). The statistics join that table to the packet table's batches by frame: a placed
row gets those ports and its transport (PLACED_TCP). Rows left out stay without ports and count
only in the address endpoints and conversations; `Placement` counts both.

Memory: the placements, held whole (a sorted frame array to search), about 17 bytes a placed row
(232,692 rows, 4 MB, for a 1M-packet synthetic export); the packet table a batch at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracelab.security.connections import NOT_TRANSPORT, PLACEMENTS

# Column added to each batch with placed rows: the transport of a placed row's connection
# (True: TCP, False: UDP), null for the other rows.
PLACED_TCP = "placed_tcp"
PORTS = ("src_port", "dst_port")


@dataclass
class Placement:
    """Rows without ports of a transport protocol: placed in a connection, or not."""

    placed: int = 0
    unplaced: int = 0

    def metadata(self) -> dict:
        return {"rows_without_ports_placed": self.placed,
                "rows_without_ports_unplaced": self.unplaced}


def waiting_rows(batch: pa.RecordBatch) -> np.ndarray:
    """Rows without both ports whose protocol is not below the transport layer (the rows the
    connection stage tries to place)."""
    protocol = batch.column("protocol")
    if not pa.types.is_dictionary(protocol.type):
        protocol = pc.dictionary_encode(protocol)
    below = pc.match_substring_regex(protocol.dictionary, NOT_TRANSPORT.pattern)
    transport = ~pc.take(below, protocol.indices).to_numpy(zero_copy_only=False)
    ported = pc.and_(batch.column("src_port").is_valid(), batch.column("dst_port").is_valid())
    return transport & ~np.asarray(ported.to_numpy(zero_copy_only=False), bool)


@dataclass
class PlacedRows:
    """The connection stage's placements (a PLACEMENTS file), joined to the packet table's
    batches by frame; `placement` counts the rows without ports seen, placed or not."""

    path: Path
    frame: np.ndarray
    ports: dict[str, np.ndarray]
    tcp: np.ndarray
    placement: Placement = field(default_factory=Placement)

    @classmethod
    def read(cls, path) -> PlacedRows:
        table = pq.read_table(path, columns=PLACEMENTS.names)
        frame = table.column("frame").to_numpy()
        if (np.diff(frame) <= 0).any():
            raise ValueError(f"{path}: frames are not in increasing order (check: frame "
                             "ascending and unique)")
        return cls(Path(path), frame,
                   {name: table.column(name).to_numpy().astype(np.int32) for name in PORTS},
                   pc.equal(table.column("proto").cast(pa.string()), "tcp").to_numpy(
                       zero_copy_only=False))

    def joined(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """`batch` (with frame, protocol and ports) with its placed rows given their
        connection's ports, and PLACED_TCP."""
        waiting = waiting_rows(batch)
        frame = batch.column("frame").to_numpy()
        at = np.minimum(np.searchsorted(self.frame, frame), max(len(self.frame) - 1, 0))
        placed = self.frame[at] == frame if len(self.frame) else np.zeros(len(frame), bool)
        stray = placed & ~waiting
        if stray.any():
            raise ValueError(f"{self.path}: frame {frame[stray][0]} is placed but the packet "
                             "table's row has ports or a protocol below the transport (check: "
                             "placements of this packet table)")
        self.placement.placed += int(placed.sum())
        self.placement.unplaced += int(waiting.sum() - placed.sum())
        rows, at = np.flatnonzero(placed), at[placed]
        columns = dict(zip(batch.schema.names, batch.columns))
        for name in PORTS:
            values = columns[name].fill_null(-1).to_numpy().astype(np.int32)
            values[rows] = self.ports[name][at]
            columns[name] = pa.array(values, pa.int32(), mask=values < 0)
        tcp = np.zeros(len(frame), bool)
        tcp[rows] = self.tcp[at]
        columns[PLACED_TCP] = pa.array(tcp, mask=~placed)
        return pa.RecordBatch.from_pydict(columns)

    def check_all_joined(self) -> None:
        """Raise unless every placement met its row (call after the last batch)."""
        if self.placement.placed != len(self.frame):
            raise ValueError(f"{self.path}: {len(self.frame) - self.placement.placed} of "
                             f"{len(self.frame)} placed frames are not rows of the packet table "
                             "(check: placements of this packet table)")
