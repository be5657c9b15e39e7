"""Integer codes of the texts a trace's statistics group by (addresses, protocols), met batch
by batch, and the address types of `tracelab.features.statistics` (see there)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

IPV4 = r"^\d{1,3}(?:\.\d{1,3}){3}$"
MAC = r"^[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}$"
ADDRESS_TYPES = ["IPv4", "IPv6", "Ethernet", "name"]


def _address_types(addresses: pa.Array) -> np.ndarray:
    """The code in ADDRESS_TYPES of each address text."""
    is_ipv4 = pc.match_substring_regex(addresses, IPV4)
    is_mac = pc.match_substring_regex(addresses, MAC)
    is_ipv6 = pc.and_(pc.match_substring(addresses, ":"), pc.invert(is_mac))
    return np.select([is_ipv4.to_numpy(zero_copy_only=False),
                      is_mac.to_numpy(zero_copy_only=False),
                      is_ipv6.to_numpy(zero_copy_only=False)],
                     [ADDRESS_TYPES.index(name) for name in ("IPv4", "Ethernet", "IPv6")],
                     ADDRESS_TYPES.index("name")).astype(np.int8)


@dataclass
class Codebook:
    """One integer code per distinct text (addresses, protocols), so that batches are grouped
    by integers; each batch's dictionary is looked up once, its rows by index (the batches of a
    row group share one dictionary a column: the codes of the last RECENT dictionaries are
    kept, one each of the columns that share the codebook, src and dst). `kinds` holds each
    address's type code."""

    RECENT = 2

    codes: dict[str, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    kinds: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))
    recent: list[tuple[pa.Array, np.ndarray]] = field(default_factory=list)  # dictionary, codes
    known: pa.Array | None = None  # `names` as an Arrow array, when last decoded
    ranks: np.ndarray | None = None  # `sort_ranks`, when last asked

    def encode(self, column: pa.Array) -> np.ndarray:
        if not pa.types.is_dictionary(column.type):
            column = pc.dictionary_encode(column)
        return self._dictionary_codes(column.dictionary)[
            column.indices.to_numpy(zero_copy_only=False)]

    def _dictionary_codes(self, dictionary: pa.Array) -> np.ndarray:
        for known, codes in self.recent:
            if known.equals(dictionary):
                return codes
        codes = self._mapping(dictionary.to_pylist())
        self.recent = [(dictionary, codes), *self.recent[:self.RECENT - 1]]
        return codes

    def _mapping(self, names: list[str]) -> np.ndarray:
        """The code of each of `names`, new names given the next codes."""
        new = [name for name in dict.fromkeys(names) if name not in self.codes]
        if new:
            self.codes.update(zip(new, range(len(self.names), len(self.names) + len(new))))
            self.names += new
            self.kinds = np.append(self.kinds, _address_types(pa.array(new, pa.string())))
        return np.fromiter(map(self.codes.__getitem__, names), np.int64, count=len(names))

    def decode(self, codes: np.ndarray) -> pa.Array:
        return self._names().take(codes)

    def _names(self) -> pa.Array:
        # Names are only ever added: the array of as many names as now is still right.
        if self.known is None or len(self.known) != len(self.names):
            self.known = pa.array(self.names, pa.string())
        return self.known

    def sort_ranks(self) -> np.ndarray:
        """Each code's rank among the texts in code point order (as pandas and Arrow sort
        strings)."""
        if self.ranks is None or len(self.ranks) != len(self.names):
            self.ranks = text_ranks(self.names)
        return self.ranks


def text_ranks(texts: list[str]) -> np.ndarray:
    """Each of distinct `texts`'s position among them in code point order."""
    ranks = np.empty(len(texts), np.int64)
    ranks[pc.sort_indices(pa.array(texts, pa.string())).to_numpy()] = np.arange(len(texts))
    return ranks
