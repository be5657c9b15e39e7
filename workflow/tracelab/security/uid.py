"""Connection uids, Zeek-style ('C' and 17 base62 digits), and keys that sort them.

A uid is a hash of a key text (`connections` makes it of the trace name, the protocol, the
connection's endpoints and its first packet's time): unique across traces, the same on every
rerun and for any partitioning or sharding of a trace.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

UID_ALPHABET = np.frombuffer(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)
UID_DIGITS = 17  # the lowest 17 base62 digits of a 128-bit hash: about 101 bits
# SipHash keys (16 bytes each) of the two 64-bit halves of a uid's hash.
UID_KEYS = ("tracelab-uid-hi:", "tracelab-uid-lo:")


def connection_uids(keys: pa.Array) -> np.ndarray:
    """Zeek-style uids: 'C' and the lowest 17 base62 digits of a 128-bit hash (two SipHashes)
    of each key's text; Zeek's are 'C' and base62 of 96 random bits."""
    text = keys.to_numpy(zero_copy_only=False).astype(object)
    high, low = (pd.util.hash_array(text, hash_key=key, categorize=False) for key in UID_KEYS)
    mask = np.uint64(0xFFFFFFFF)
    limbs = [high >> np.uint64(32), high & mask, low >> np.uint64(32), low & mask]
    digits = np.empty((len(text), UID_DIGITS + 1), np.uint8)
    digits[:, 0] = ord("C")
    for place in range(UID_DIGITS, 0, -1):  # long division of the 128-bit number by 62
        remainder = np.zeros(len(text), np.uint64)
        for index, limb in enumerate(limbs):
            value = (remainder << np.uint64(32)) | limb
            limbs[index], remainder = value // np.uint64(62), value % np.uint64(62)
        digits[:, place] = UID_ALPHABET[remainder.astype(np.int64)]
    return digits.view(f"S{UID_DIGITS + 1}").ravel().astype(str).astype(object)


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
