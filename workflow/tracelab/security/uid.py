"""Connection uids, Zeek-style ('C' and 17 base62 digits), and keys that sort them.

A uid is a hash of a key text (`connections` makes it of the trace name, the protocol, the
connection's endpoints and its first packet's time): unique across traces, the same on every
rerun and for any partitioning or sharding of a trace.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

UID_ALPHABET = np.frombuffer(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)
UID_DIGITS = 17  # the lowest 17 base62 digits of a 128-bit hash: about 101 bits
# SipHash keys (16 bytes each) of the two 64-bit halves of a uid's hash.
UID_KEYS = ("tracelab-uid-hi:", "tracelab-uid-lo:")
_FIVE_DIGITS = np.uint64(62 ** 5)


def connection_uids(keys: pa.Array) -> pa.Array:
    """Zeek-style uids (Arrow strings): 'C' and the lowest 17 base62 digits of a 128-bit hash
    (two SipHashes) of each key's text; Zeek's are 'C' and base62 of 96 random bits."""
    text = keys.to_numpy(zero_copy_only=False).astype(object)
    high, low = (pd.util.hash_array(text, hash_key=key, categorize=False) for key in UID_KEYS)
    mask = np.uint64(0xFFFFFFFF)
    limbs = [high >> np.uint64(32), high & mask, low >> np.uint64(32), low & mask]
    digits = np.empty((len(text), UID_DIGITS + 1), np.uint8)
    digits[:, 0] = ord("C")
    place = UID_DIGITS
    while place > 0:
        # Long division of the 128-bit number by 62^5 (below 2^30: a remainder shifted by a
        # limb's 32 bits fits 64), then the remainder's five digits, lowest first.
        remainder = np.zeros(len(text), np.uint64)
        for index, limb in enumerate(limbs):
            value = (remainder << np.uint64(32)) | limb
            limbs[index], remainder = value // _FIVE_DIGITS, value % _FIVE_DIGITS
        for _ in range(min(5, place)):
            remainder, digit = np.divmod(remainder, np.uint64(62))
            digits[:, place] = UID_ALPHABET[digit.astype(np.int64)]
            place -= 1
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(UID_DIGITS + 1), len(text), [None, pa.py_buffer(digits)]).cast(pa.string())


def uid_sort_keys(uids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Two int64 arrays whose (first, second) order is the uids' text order: the 17 characters
    after 'C', each as its byte less ord('0') (0 to 74), ten in base 75 and then seven."""
    if isinstance(uids, pa.ChunkedArray):
        uids = uids.combine_chunks()
    width = UID_DIGITS + 1
    fixed = uids.cast(pa.binary(width))
    text = np.frombuffer(fixed.buffers()[1], np.uint8, count=len(fixed) * width,
                         offset=fixed.offset * width).reshape(-1, width)
    digits = text[:, 1:].astype(np.int64) - ord("0")
    high, low = digits[:, :10], digits[:, 10:]  # 75**10 < 2**63
    return high @ 75 ** np.arange(9, -1, -1), low @ 75 ** np.arange(6, -1, -1)


class UidIndex:
    """Distinct uids, sorted by their `uid_sort_keys`, and where each of other uids is among
    them: two integer searches a uid, no hash table of the text (1.6M uids at 50M packets)."""

    def __init__(self, uids: pa.Array | pa.ChunkedArray):
        high, low = uid_sort_keys(pc.drop_null(uids))
        order = np.lexsort((low, high))
        high, low = high[order], low[order]
        distinct = np.ones(len(high), bool)
        distinct[1:] = (high[1:] != high[:-1]) | (low[1:] != low[:-1])
        self.high, self.low = high[distinct], low[distinct]

    def __len__(self) -> int:
        return len(self.high)

    def find(self, uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Each uid's place (-1: null or not among them)."""
        if isinstance(uids, pa.ChunkedArray):
            uids = uids.combine_chunks()
        if not len(self.high):
            return np.full(len(uids), -1, np.int64)
        high, low = uid_sort_keys(pc.fill_null(uids, "C" + "0" * UID_DIGITS))
        first = np.searchsorted(self.high, high, "left")
        end = np.searchsorted(self.high, high, "right")
        place = first.copy()
        # uids sharing their first ten digits (62^10 values: among 1.6M uids a chance of
        # ~1e-6 that any two do): the rest told apart in their block
        for row in np.flatnonzero(end - first > 1):
            place[row] += np.searchsorted(self.low[first[row]:end[row]], low[row])
        place = np.minimum(place, len(self.high) - 1)
        found = uids.is_valid().to_numpy(zero_copy_only=False) & (self.high[place] == high) \
            & (self.low[place] == low)
        return np.where(found, place, -1)
