"""Arrow columns from a batch of packet bytes: reading header fields at per-packet offsets
(`Bytes`), names as dictionary codes, strings and binary slices, and columns put back at the
batch's rows (`scatter`, `spread`), without loops over packets.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

# Bytes of zeros after a batch's data, so header reads past the last packet stay in bounds.
PADDING = 512


def bits(word: np.ndarray, shift: int, width: int) -> np.ndarray:
    """Bits shift..shift+width of Bytes.u64 reads, as int64: several header fields from one
    gather (each gather costs several times a whole-array operation)."""
    return ((word >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)


class Bytes:
    """Packet bytes of a batch, read big-endian at per-packet offsets.

    `data` ends in PADDING zero bytes: offsets up to a packet's captured length plus a few
    hundred bytes may be read without bounds checks (the `has` masks say what is real);
    loops that walk further (TLS records, DNS labels, TCP options) clip with `within`.
    Multi-byte fields come from strided views of the same memory: one gather per field, or one
    u64 gather for several neighbouring fields (`bits`).
    """

    def __init__(self, data: np.ndarray, start: np.ndarray, captured: np.ndarray,
                 views: tuple | None = None):
        self.data = data
        self.start = start
        self.captured = captured
        self.views = views or tuple(
            np.ndarray(shape=(len(data) - width + 1,), dtype=f">u{width}", buffer=data,
                       strides=(1,)) for width in (2, 4, 8)) + (
            np.ndarray(shape=(len(data) - 3,), dtype="<u4", buffer=data, strides=(1,)),)

    def subset(self, rows: np.ndarray) -> Bytes:
        return Bytes(self.data, self.start[rows], self.captured[rows], self.views)

    def has(self, at, width: int) -> np.ndarray:
        """Whether bytes at..at+width of each packet were captured."""
        return (at >= 0) & (at + width <= self.captured)

    def within(self, at: np.ndarray) -> np.ndarray:
        """`at`, kept inside each packet's captured bytes (for reads that walk far)."""
        return np.clip(at, 0, self.captured)

    def u8(self, at) -> np.ndarray:
        return self.data[self.start + at].astype(np.int64)

    def u16(self, at) -> np.ndarray:
        return self.views[0][self.start + at].astype(np.int64)

    def u24(self, at) -> np.ndarray:
        return self.views[1][self.start + at].astype(np.int64) >> 8

    def u32(self, at) -> np.ndarray:
        return self.views[1][self.start + at].astype(np.int64)

    def u32le(self, at) -> np.ndarray:
        return self.views[3][self.start + at].astype(np.int64)

    def u48(self, at) -> np.ndarray:
        return (self.views[2][self.start + at] >> np.uint64(16)).astype(np.int64)

    def u64(self, at) -> np.ndarray:
        return self.views[2][self.start + at]

    def slices(self, at: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The bytes at..at+length of each packet, concatenated, and their int32 offsets."""
        length = np.maximum(length, 0)
        offsets = np.zeros(len(length) + 1, dtype=np.int64)
        np.cumsum(length, out=offsets[1:])
        first = self.start + at
        positions = np.repeat(first - offsets[:-1], length) + np.arange(offsets[-1])
        return self.data[positions], offsets.astype(np.int32)


class Names:
    """A growing dictionary of names; rows carry codes into it."""

    def __init__(self):
        self.names: list[str] = []
        self.codes: dict[str, int] = {}

    def code(self, name: str) -> int:
        if name not in self.codes:
            self.codes[name] = len(self.names)
            self.names.append(name)
        return self.codes[name]

    def column(self, codes: np.ndarray) -> pa.Array:
        # (A copy of the list: the thread decoding the next batch may add names meanwhile.)
        return pa.DictionaryArray.from_arrays(
            pa.array(codes, pa.int32()), pa.array(list(self.names), pa.string())
        ).cast(pa.string())


def utf8_strings(flat: np.ndarray, offsets: np.ndarray, rows: int) -> pa.Array:
    """Binary slices as strings; invalid UTF-8 is shown with backslash escapes (rare path)."""
    strings = pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(flat))
    try:
        strings.validate(full=True)
        return strings
    except pa.ArrowInvalid:
        raw = pa.BinaryArray.from_buffers(pa.binary(), rows, [None, pa.py_buffer(offsets),
                                                              pa.py_buffer(flat)])
        return pa.array([value.decode("utf-8", errors="backslashreplace")
                         for value in raw.to_pylist()], pa.string())


def binary_array(flat: np.ndarray, offsets: np.ndarray, rows: int) -> pa.Array:
    return pa.BinaryArray.from_buffers(pa.binary(), rows, [None, pa.py_buffer(offsets),
                                                           pa.py_buffer(flat)])


def as_string(array: pa.Array) -> pa.Array:
    """A regex group (binary) as strings, escaping invalid UTF-8."""
    try:
        return array.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array([None if v is None else v.decode("utf-8", errors="backslashreplace")
                         for v in array.to_pylist()], pa.string())


def distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(values, return_counts=True) for small-ranged integers (link types, ethertypes,
    IP protocols), by counting rather than sorting."""
    if not len(values):
        return values[:0], np.zeros(0, dtype=np.int64)
    low = int(values.min())
    if int(values.max()) - low >= 1 << 17:
        return np.unique(values, return_counts=True)
    counts = np.bincount(values - low)
    present = np.flatnonzero(counts)
    return (present + low).astype(values.dtype), counts[present]


def masked_column(values: np.ndarray, valid: np.ndarray, type_: pa.DataType) -> pa.Array:
    return pa.array(values, mask=~valid, type=type_)


def scatter(n: int, rows: np.ndarray, values: pa.Array, type_: pa.DataType) -> pa.Array:
    """A length-n column holding `values` at `rows` (ascending), null elsewhere."""
    values = values.cast(type_)
    if len(rows) == n:
        return values
    if not len(rows):
        return pa.nulls(n, type_)
    if type_ == pa.string():
        return _scatter_strings(n, rows, values)
    index = np.full(n, -1, dtype=np.int64)
    index[rows] = np.arange(len(rows))
    return values.take(pa.array(index, mask=index < 0))


def _scatter_strings(n: int, rows: np.ndarray, values: pa.Array) -> pa.Array:
    """_scatter for strings, from the buffers: the values' bytes stay where they are, rows
    between them get empty slices (several times faster than a take with null indices)."""
    value_offsets = np.frombuffer(values.buffers()[1], dtype=np.int32, count=len(values) + 1,
                                  offset=4 * values.offset)
    lengths = np.zeros(n + 1, dtype=np.int32)
    lengths[rows + 1] = np.diff(value_offsets)
    offsets = np.cumsum(lengths, dtype=np.int32) + value_offsets[0]
    valid = np.zeros(n, dtype=bool)
    valid[rows] = values.is_valid().to_numpy(zero_copy_only=False)
    data = values.buffers()[2] or pa.py_buffer(b"")
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), data,
                                       pa.py_buffer(np.packbits(valid, bitorder="little")))


def spread(n: int, rows: np.ndarray, values: np.ndarray, type_: pa.DataType,
            valid: np.ndarray | None = None) -> pa.Array:
    """A length-n numeric column holding `values` (where `valid`) at `rows`, null elsewhere."""
    full = np.zeros(n, dtype=values.dtype)
    full[rows] = values
    present = np.zeros(n, dtype=bool)
    present[rows] = True if valid is None else valid
    return pa.array(full, mask=~present, type=type_)
