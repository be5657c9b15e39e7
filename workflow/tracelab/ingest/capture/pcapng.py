"""Framing of pcapng files: sections (a section header block, its interfaces) of blocks,
each with its type, its total length (leading and trailing) and its body. Packets come in
enhanced (EPB), simple (SPB) and obsolete (PB) packet blocks.

A block length that is not a multiple of 4 is rounded up to one, as Wireshark reads it.
"""

from __future__ import annotations

import struct

import numpy as np

from tracelab.ingest.capture.records import (
    MAX_NS,
    CaptureDamaged,
    FramingReader,
    Interface,
    Records,
    Tail,
    u32_at,
    units_to_ns,
    words,
)

PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER = 0x1A2B3C4D
# libpcap refuses pcapng blocks above 16 MiB; so do we.
MAX_BLOCK = 16 << 20
# pcapng packet blocks: EPB and the obsolete PB carry an interface and a timestamp,
# SPB carries neither (interface 0, and the previous packet's time).
EPB, PB, SPB, IDB = 6, 2, 3, 1
BLOCK_NAMES = {IDB: "interface description", 4: "name resolution", 5: "interface statistics",
               10: "decryption secrets", 0xBAD: "custom", 0x40000BAD: "custom",
               PCAPNG_SHB: "section header"}


class PcapngReader(FramingReader):
    format = "pcapng"

    def __init__(self, stream, head: bytes, batch_bytes: int):
        super().__init__(stream, head, batch_bytes)
        self.big = False
        self.section_base = 0     # index in self.interfaces of this section's interface 0
        self.sections = 0
        self.last_ts_ns = 0
        self.other_blocks: dict[str, int] = {}
        if len(head) < 28:
            raise CaptureDamaged("file header", f"the pcapng section header block is cut "
                                 f"short: {len(head)} of at least 28 bytes", offset=0)
        length = self._section_length(head, 0)
        if length is None or length > len(head):
            raise CaptureDamaged("file header", "the pcapng section header block is cut "
                                 "short or its length is impossible", offset=0)
        self._start_section(head, 0)
        self._drop(length)

    @property
    def _order(self) -> str:
        return ">" if self.big else "<"

    def _section_length(self, buffer: bytes | memoryview, pos: int) -> int | None:
        """A section header's total length, read in its own byte order (None if unreadable)."""
        if pos + 28 > len(buffer):
            return None
        order = struct.unpack_from("<I", buffer, pos + 8)[0]
        if order == PCAPNG_BYTE_ORDER:
            big = False
        elif order == struct.unpack("<I", struct.pack(">I", PCAPNG_BYTE_ORDER))[0]:
            big = True
        else:
            raise CaptureDamaged("file header", f"pcapng section header at byte offset "
                                 f"{self._base + pos}: byte-order magic 0x{order:08x} is "
                                 f"neither 1a2b3c4d nor its byte swap", offset=self._base + pos)
        length, _, major = struct.unpack_from((">" if big else "<") + "IIH", buffer, pos + 4)
        if major != 1:
            raise CaptureDamaged("file header", f"pcapng section header at byte offset "
                                 f"{self._base + pos}: unsupported major version {major}",
                                 offset=self._base + pos)
        if length < 28 or length % 4 or length > MAX_BLOCK:
            raise CaptureDamaged("block structure", f"pcapng section header at byte offset "
                                 f"{self._base + pos}: total length {length} is impossible",
                                 offset=self._base + pos)
        return length

    def _start_section(self, buffer: bytes | memoryview, pos: int) -> None:
        self.big = struct.unpack_from("<I", buffer, pos + 8)[0] != PCAPNG_BYTE_ORDER
        self.section_base = len(self.interfaces)
        self.sections += 1

    def _interface(self, buffer: memoryview, pos: int, length: int) -> None:
        linktype, _, snaplen = struct.unpack_from(self._order + "HHI", buffer, pos + 8)
        interface = Interface(linktype, snaplen, mul=1000)
        for code, value in self._options(buffer, pos + 16, pos + length - 4):
            if code == 9 and len(value) >= 1:          # if_tsresol
                exponent = value[0] & 0x7F
                if value[0] & 0x80:
                    interface.mul, interface.div = 10**9, 2**exponent
                elif exponent <= 9:
                    interface.mul, interface.div = 10**(9 - exponent), 1
                else:
                    interface.mul, interface.div = 1, 10**(exponent - 9)
            elif code == 2:                            # if_name, UTF-8
                interface.name = bytes(value).decode("utf-8", "replace").rstrip("\x00")
            elif code == 14 and len(value) >= 8:       # if_tsoffset, seconds
                seconds = struct.unpack_from(self._order + "q", value)[0]
                # Within int64 ns: an offset beyond it puts every time out of range anyway.
                interface.offset_ns = max(-MAX_NS, min(MAX_NS, seconds * 10**9))
        self.interfaces.append(interface)

    def _options(self, buffer: memoryview, pos: int, end: int):
        while pos + 4 <= end:
            code, length = struct.unpack_from(self._order + "HH", buffer, pos)
            if code == 0:
                return
            yield code, buffer[pos + 4:pos + 4 + length]
            pos += 4 + ((length + 3) & ~3)

    def notes(self) -> dict:
        return {**super().notes(), "sections": self.sections,
                "other_blocks": self.other_blocks}

    def _damaged(self, pos: int, detail: str, packets_before: int) -> CaptureDamaged:
        return CaptureDamaged(
            "block structure", f"block at byte offset {self._base + pos} (after record "
            f"{self.records_seen + packets_before}): {detail}; the file is damaged here",
            offset=self._base + pos, record=self.records_seen + packets_before + 1)

    def _frame(self, buffer: memoryview, data: np.ndarray):
        end = len(buffer)
        parts = []              # per run of one section: packet blocks and their context
        packets = 0
        pos = 0
        while True:
            found, kinds, lengths = self._blocks(buffer, data, pos)
            bad = (lengths < 12) | (lengths > MAX_BLOCK) \
                | ((kinds == EPB) | (kinds == PB)) & (lengths < 32) \
                | (kinds == SPB) & (lengths < 16)
            cut = np.flatnonzero(bad | (kinds == PCAPNG_SHB))
            cut = int(cut[0]) if cut.size else len(found)
            complete = int(np.searchsorted(found[:cut] + lengths[:cut] > end, True))
            trailer = u32_at(data, found[:complete] + lengths[:complete] - 4, self.big)
            wrong = np.flatnonzero(trailer != lengths[:complete])
            if wrong.size:      # the blocks before it stand, as Wireshark reads them
                complete = int(wrong[0])
            packets += self._take_blocks(parts, buffer, (found[:complete], kinds[:complete],
                                                         lengths[:complete]))
            pos = int(found[complete - 1] + lengths[complete - 1]) if complete else pos
            if wrong.size:
                self.damage = self._damaged(pos, f"leading length {int(lengths[complete])} "
                                            f"and trailing length {int(trailer[complete])} "
                                            f"differ", packets)
                break
            if complete < cut or cut == len(found):
                break
            # The block at `cut` has a readable header: damaged, or a new section.
            if bad[cut]:
                self.damage = self._damaged(pos, f"block type 0x{int(kinds[cut]):08x} has an "
                                            f"impossible total length {int(lengths[cut])}",
                                            packets)
                break
            try:
                length = self._section_length(buffer, pos)
            except CaptureDamaged as damage:
                self.damage = damage
                break
            if length is None or pos + length > end:
                break
            self._start_section(buffer, pos)
            pos += length
        if not packets:
            return None, pos
        return self._records(data, parts), pos

    def _blocks(self, buffer: memoryview, data: np.ndarray, pos: int):
        """Offsets, types and total lengths (rounded up to a multiple of 4) of the blocks from
        `pos` on, up to one whose length cannot be followed."""
        lengths_at = words(buffer, pos, len(buffer), self.big)
        run = []
        append = run.append
        word, last = 0, (len(buffer) - pos) // 4 - 2
        # The hot loop: a block's total length is its second word.
        while word <= last:
            append(word)
            word += ((lengths_at[word + 1] + 3) >> 2) or 1 << 40
        found = np.array(run, dtype=np.int64) * 4 + pos
        lengths = u32_at(data, found + 4, self.big)
        return found, u32_at(data, found, self.big), (lengths + 3) & ~3

    def _take_blocks(self, parts: list, buffer: bytes, blocks: tuple) -> int:
        """Read the interfaces among whole `blocks` (offsets, types, lengths in `buffer`), count
        the others, add their packet blocks to `parts`; return how many there are."""
        at, btype, blen = blocks
        is_packet = (btype == EPB) | (btype == PB) | (btype == SPB)
        # Interfaces described so far in this section, before each packet block.
        described = len(self.interfaces) - self.section_base
        idb_rows = np.flatnonzero(btype == IDB)
        for i in idb_rows:
            self._interface(buffer, int(at[i]), int(blen[i]))
        for kind in btype[~is_packet & (btype != IDB)].tolist():
            name = BLOCK_NAMES.get(kind, f"type 0x{kind:08x}")
            self.other_blocks[name] = self.other_blocks.get(name, 0) + 1
        rows = np.flatnonzero(is_packet)
        if rows.size:
            parts.append({
                "at": at[rows], "btype": btype[rows], "blen": blen[rows],
                "base": self.section_base, "big": self.big,
                "described": described + np.searchsorted(idb_rows, rows),
            })
        return int(rows.size)

    def _records(self, data: np.ndarray, parts: list[dict]) -> Records:
        fields = {name: [] for name in ("at", "start", "room", "captured", "original",
                                        "interface", "ts_ns", "spb")}
        for part in parts:
            at, btype, blen, big = part["at"], part["btype"], part["blen"], part["big"]
            word8 = u32_at(data, at + 8, big)   # interface id, or an SPB's original length
            local = word8
            pb = btype == PB
            if pb.any():   # the obsolete packet block has a 16-bit interface id
                local = np.where(pb, word8 >> 16 if big else word8 & 0xFFFF, word8)
            spb = btype == SPB
            local = np.where(spb, 0, local)
            known = local < part["described"]
            interface = np.where(known, part["base"] + local, -1)
            units = (u32_at(data, at + 12, big).astype(np.uint64) << np.uint64(32)) | \
                u32_at(data, at + 16, big).astype(np.uint64)
            captured = u32_at(data, at + 20, big)
            original = np.where(spb, word8, u32_at(data, at + 24, big))
            start = np.where(spb, at + 12, at + 28)
            room = np.where(spb, blen - 16, blen - 32)
            if spb.any():
                # A simple packet block holds min(original, snap length) bytes, padded.
                base = part["base"]
                snap = self.interfaces[base].snaplen if base < len(self.interfaces) else 0
                limit = np.minimum(original, room)
                if snap:
                    limit = np.minimum(limit, snap)
                captured = np.where(spb, limit, captured)
                interface = np.where(spb & (len(self.interfaces) <= base), -1, interface)
            if interface.min() == interface.max() >= 0:   # one interface: no rows to pick
                ts_ns = units_to_ns(units, self.interfaces[int(interface[0])])
            else:
                ts_ns = np.zeros(len(at), dtype=np.int64)
                for number in np.unique(interface[interface >= 0]):
                    rows = interface == number
                    ts_ns[rows] = units_to_ns(units[rows], self.interfaces[int(number)])
            for name, value in (("at", at), ("start", start), ("room", room),
                                ("captured", captured), ("original", original),
                                ("interface", interface), ("ts_ns", ts_ns), ("spb", spb)):
                fields[name].append(value)
        merged = {name: np.concatenate(values) for name, values in fields.items()}
        ts_ns = merged["ts_ns"]
        spb = merged["spb"]
        if spb.any():
            # No timestamp in a simple packet block: it keeps its predecessor's.
            has_time = np.where(~spb, np.arange(len(spb)), -1)
            previous = np.maximum.accumulate(has_time)
            ts_ns = np.where(previous >= 0, ts_ns[np.maximum(previous, 0)], self.last_ts_ns)
        self.last_ts_ns = int(ts_ns[-1])
        n = len(ts_ns)
        return Records(data=data, index=self.numbered(n), offset=merged["at"] + self._base,
                       start=merged["start"], captured=merged["captured"],
                       original=merged["original"], ts_ns=ts_ns,
                       interface=merged["interface"], room=merged["room"])

    def _tail(self, buffer: memoryview) -> Tail:
        index, offset = self.records_seen + 1, self._base
        if len(buffer) < 8:
            return Tail(index, offset, len(buffer), None)
        kind, length = struct.unpack_from(self._order + "II", buffer, 0)
        if kind not in (EPB, PB, SPB):
            name = BLOCK_NAMES.get(kind, f"type 0x{kind:08x}")
            return Tail(index, offset, len(buffer), length, block=f"{name} block")
        fields = {}
        if kind == EPB and len(buffer) >= 28:
            iface, _, _, cap, orig = struct.unpack_from(self._order + "IIIII", buffer, 8)
            fields = {"interface": iface, "captured_len": cap, "orig_len": orig}
        return Tail(index, offset, len(buffer), length, fields)
