"""Rows without ports joined to their TCP connection through the sequence gaps they fill.

In a Wireshark CSV export the Info of HTTP and TLS rows (and of some reassembled segments)
shows no ports, sequence or acknowledgement numbers: such a row says only who sent how many
bytes when. Its connection follows from the numbers of the rows that do show them:

1. Gaps (`sequence_gaps`): in each direction of each connection, where the sender's next own
   Seq, or the peer's Ack, reaches beyond everything seen before, the missing bytes were
   carried by rows without ports sent after the sender's last own row and before that
   evidence. Each gap is a stretch of the byte stream with a frame window.
2. Candidates (`gap_candidates`): a row may fill a gap of its directed address pair whose
   window encloses its frame and whose bytes its payload (frame length minus the connection's
   header overhead) does not exceed.
3. Solutions (`assign_to_gaps`): every gap must be filled exactly, each row fills at most one
   gap, and within one direction of a connection rows fill the byte stream in frame order (TCP
   sends in order). Rows and gaps fall into independent groups (connected components of the
   candidate graph); a group whose gaps all lie in one direction of one connection and whose
   rows add up to them exactly has one solution, the rows in frame order filling the gaps in
   byte order (almost all groups, decided vectorised); the others are searched exhaustively,
   with a step budget. A row goes where every solution puts it; a row that solutions put in
   different places is ambiguous (typically parallel TLS handshakes exchanging records of
   equal sizes: swapping them satisfies every number the export shows) and is left out and
   counted, never guessed.
4. Rows no gap explains in any solution (UDP rows such as QUIC, retransmissions) join the
   connection of their address pair that holds the nearest row within the idle timeout, when
   the nearest rows before and after them (where present) belong to the same connection;
   otherwise they too are ambiguous.

On the bundled web_browsing export, checked against the ports in its pcapng (rows matched by
frame number), 708 rows have no ports. The earlier rule (take a gap the row fits, preferring an
exact fit, then the narrowest) put 671 in their true connection and 37 in a wrong one. Now 653
join their true connection, none a wrong one, and 55 are ambiguous: each group of them has at
least two complete placements satisfying every number of the export (parallel TLS handshakes
and HTTP requests with records of equal sizes), so no rule could place them without guessing.
Every solution gives each connection the same bytes, so this is a question of which frame,
not of how much.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tracelab.core.packets import TCP_FLAG_BITS
from tracelab.security.flow_arrays import connected_labels, member_of, ranges, stable_order

FIN, SYN, RST, ACK = (TCP_FLAG_BITS[n] for n in ("FIN", "SYN", "RST", "ACK"))
# Rounds of constraint propagation in one group (each places a row or removes an option).
MAX_ROUNDS = 10_000
# Placements of the rows propagation leaves undecided in a group, tried one by one at most.
MAX_COMBINATIONS = 20_000
# Rows of the largest group solved; a larger one (never seen: groups are bursts of parallel
# connections between two hosts) is left out and counted as ambiguous.
MAX_GROUP_ROWS = 2_000


@dataclass
class Attachment:
    """Each attached row's flow and direction, and the rows left out as ambiguous."""

    attached: pd.DataFrame
    ambiguous_rows: np.ndarray


def _shifted(values: np.ndarray, fill) -> np.ndarray:
    """`values` moved one place later, `fill` first."""
    return np.concatenate([np.full(min(len(values), 1), fill, values.dtype), values[:-1]])


@dataclass
class _Events:
    """Evidence of how far each direction's sender got: its own packets (start: seq, end: the
    next seq) and the peer's ACKs (start = end: the ACK number); one entry an event."""

    direction: np.ndarray  # flow * 2 + is_orig of the sender
    frame: np.ndarray
    own: np.ndarray
    start: np.ndarray
    end: np.ndarray

    def sorted(self) -> _Events:
        order = stable_order(self.direction, self.frame)
        return _Events(*(values[order] for values in (self.direction, self.frame, self.own,
                                                      self.start, self.end)))

    def _first_of_direction(self) -> np.ndarray:
        """Each event's direction's first event (events sorted by direction)."""
        starts = _shifted(self.direction, -1) != self.direction
        return np.maximum.accumulate(np.where(starts, np.arange(len(starts)), 0))

    def reached_before(self) -> np.ndarray:
        """The furthest end of the earlier events of the same direction (NaN: none); ends
        are below 2^34 (seq + length), so one running maximum serves every direction."""
        shifted = self.direction.astype(np.int64) << 34
        reached = np.maximum.accumulate(self.end + shifted) - shifted
        before = _shifted(reached, 0).astype(np.float64)
        return np.where(self._first_of_direction() == np.arange(len(before)), np.nan, before)

    def last_own_frame_before(self) -> np.ndarray:
        """The frame of the sender's last own packet before each event (0: none)."""
        index = np.arange(len(self.own))
        last_own = _shifted(np.maximum.accumulate(np.where(self.own, index, -1)), -1)
        inside = last_own >= self._first_of_direction()
        return np.where(inside, self.frame[np.maximum(last_own, 0)], 0)


def sequence_gaps(ported: pd.DataFrame) -> pd.DataFrame:
    """Stretches of a TCP direction's sequence space that no ported packet accounts for.

    Evidence of how far a sender got: its own packets (exactly: seq + len + SYN + FIN after
    each) and its peer's ACK numbers. Where evidence goes beyond everything seen before, the
    missing bytes were carried by rows without ports sent after the sender's last own packet
    and before that evidence. RSTs carry no trustworthy numbers (Zeek ignores them too). Rows:
    gap, flow, is_orig (of the sender), src_code/dst_code (sender, receiver), start (first
    missing byte), frame_start, frame_end (exclusive bounds), bytes.
    """
    flags = ported["flags"].to_numpy()
    usable = ported["is_tcp"].to_numpy() & ((flags & RST) == 0)
    own = usable & ported["seq"].notna().to_numpy()
    acks = usable & ((flags & ACK) != 0) & ported["ack"].notna().to_numpy()
    step = ported["len"].fillna(0).to_numpy() + ((flags & SYN) != 0) + ((flags & FIN) != 0)
    seq, ack = ported["seq"].to_numpy(), ported["ack"].to_numpy()
    flow, is_orig, frame = (ported[name].to_numpy() for name in ("flow", "is_orig", "frame"))
    events = _Events(
        direction=np.concatenate([flow[own] * 2 + is_orig[own], flow[acks] * 2 + ~is_orig[acks]]),
        frame=np.concatenate([frame[own], frame[acks]]),
        own=np.repeat([True, False], [own.sum(), acks.sum()]),
        start=np.concatenate([seq[own], ack[acks]]).astype(np.int64),
        end=np.concatenate([seq[own] + step[own], ack[acks]]).astype(np.int64)).sorted()
    reached_before, frame_start = events.reached_before(), events.last_own_frame_before()
    at = np.flatnonzero(events.start > reached_before)
    gaps = pd.DataFrame({
        "gap": np.arange(len(at)), "flow": events.direction[at] // 2,
        "is_orig": (events.direction[at] % 2).astype(bool), "start": reached_before[at],
        "frame_start": frame_start[at], "frame_end": events.frame[at],
        "bytes": events.start[at] - reached_before[at]})
    # The sender's and receiver's addresses, from the flow's originator and responder.
    first = ported.drop_duplicates("flow").set_index("flow")
    orig_code = np.where(first["is_orig"], first["src_code"], first["dst_code"])
    resp_code = np.where(first["is_orig"], first["dst_code"], first["src_code"])
    orig_code = pd.Series(orig_code, index=first.index).reindex(gaps["flow"]).to_numpy()
    resp_code = pd.Series(resp_code, index=first.index).reindex(gaps["flow"]).to_numpy()
    gaps["src_code"] = np.where(gaps["is_orig"], orig_code, resp_code)
    gaps["dst_code"] = np.where(gaps["is_orig"], resp_code, orig_code)
    return gaps.astype({"src_code": np.int64, "dst_code": np.int64})


def gap_candidates(rows: pd.DataFrame, gaps: pd.DataFrame, bucket_frames: int = 256):
    """(row, gap) pairs where the gap, of the row's directed address pair, encloses its frame:
    the rows' columns, then the gaps' (the pair's codes once), in the rows' order and each
    row's gaps in theirs.

    Joined through frame buckets (each gap listed once per bucket it spans), so the join never
    grows with the square of a busy address pair's rows: a sorted merge of one number a
    (directed pair, bucket), frames being below 2^40.
    """
    first = gaps["frame_start"].to_numpy() // bucket_frames
    spans = gaps["frame_end"].to_numpy() // bucket_frames - first + 1
    span_gap = np.repeat(np.arange(len(gaps)), spans)
    bucket = ranges(first, spans)
    pair = pd.factorize(np.concatenate([_directed_pair(rows), _directed_pair(gaps)]))[0]
    row_key = (pair[:len(rows)] << 32) | (rows["frame"].to_numpy() // bucket_frames)
    span_key = (pair[len(rows):][span_gap] << 32) | bucket
    by_key = np.argsort(span_key, kind="stable")
    low = np.searchsorted(span_key[by_key], row_key)
    count = np.searchsorted(span_key[by_key], row_key, side="right") - low
    row_at = np.repeat(np.arange(len(rows)), count)
    gap_at = span_gap[by_key[ranges(low, count)]]
    frame = rows["frame"].to_numpy()[row_at]
    inside = np.flatnonzero((frame > gaps["frame_start"].to_numpy()[gap_at])
                            & (frame < gaps["frame_end"].to_numpy()[gap_at]))
    row_at, gap_at = row_at[inside], gap_at[inside]
    return pd.DataFrame({
        **{name: rows[name].to_numpy()[row_at] for name in rows.columns},
        **{name: gaps[name].to_numpy()[gap_at] for name in gaps.columns
           if name not in ("src_code", "dst_code")}}, index=inside)


def _groups(candidates: pd.DataFrame) -> np.ndarray:
    """Each candidate pair's group: connected components of the row-gap graph."""
    # Nodes numbered in sorted order (np.unique's), by hashing.
    row_index, rows = pd.factorize(candidates["row"].to_numpy(), sort=True)
    gap_index, gaps = pd.factorize(candidates["gap"].to_numpy(), sort=True)
    label = connected_labels(row_index, len(rows) + gap_index, len(rows) + len(gaps))
    return label[row_index]


def _subset_sums(sizes: list[int], target: int) -> int:
    """Bit s set where some subset of `sizes` adds up to s (s <= target)."""
    reachable, mask = 1, (1 << (target + 1)) - 1
    for size in sizes:
        reachable |= (reachable << size) & mask
    return reachable


@dataclass
class _Group:
    """One group's constraint problem: which candidate rows fill which gaps.

    State: each row's remaining gaps (`options`), the rows placed, each gap's bytes still
    missing. Rules, applied until nothing changes: a row whose payload no subset of its gap's
    other candidates completes to the missing bytes leaves that gap; a row every such subset
    needs is placed there; a row left with one gap is placed there (every row of a group
    carries bytes of one of its gaps); within one direction of a connection, rows fill the
    stream in frame order.
    """

    where: dict  # gap -> ((flow, is_orig), start): its direction and first byte
    payload: dict  # (row, gap) -> bytes
    frame: dict  # row -> frame
    options: dict  # row -> set of gaps
    placed: dict  # row -> gap
    missing: dict  # gap -> bytes

    @classmethod
    def of(cls, pairs: list[tuple]) -> _Group:
        """The group of candidate pairs given as (row, gap, frame, payload, flow, is_orig,
        start, bytes) tuples."""
        group = cls(where={}, payload={}, frame={}, options={}, placed={}, missing={})
        for row, gap, frame, payload, flow, is_orig, start, missing in pairs:
            group.where[gap] = ((flow, is_orig), start)
            group.missing[gap] = missing
            group.payload[row, gap] = payload
            group.frame[row] = frame
            group.options.setdefault(row, set()).add(gap)
        return group

    def _place(self, row, gap) -> None:
        self.placed[row] = gap
        self.missing[gap] -= self.payload[row, gap]
        del self.options[row]

    def _by_gap(self) -> dict:
        candidates: dict = {gap: [] for gap in self.missing}
        for row, gaps in self.options.items():
            for gap in gaps:
                candidates[gap].append(row)
        return candidates

    def _subset_rule(self) -> bool:
        """Drop rows no exact subset of their gap uses; place rows every such subset uses
        (one a gap and pass: placing changes what the gap still misses)."""
        changed = False
        for gap, listed in self._by_gap().items():
            rows = [row for row in listed if row in self.options]  # not placed in this pass
            target = self.missing[gap]
            sizes = [self.payload[row, gap] for row in rows]
            for i, row in enumerate(rows):
                others = _subset_sums(sizes[:i] + sizes[i + 1:], target)
                if not 0 <= sizes[i] <= target or not (others >> (target - sizes[i])) & 1:
                    self.options[row].discard(gap)
                    changed = True
                elif not (others >> target) & 1:
                    self._place(row, gap)
                    changed = True
                    break
        return changed

    def _single_rule(self) -> bool:
        """Place the rows left with one gap that still has room for them."""
        single = [(row, next(iter(gaps))) for row, gaps in self.options.items()
                  if len(gaps) == 1]
        placed = 0
        for row, gap in single:
            if self.payload[row, gap] <= self.missing[gap]:
                self._place(row, gap)
                placed += 1
        return placed > 0

    def _order_rule(self) -> bool:
        """A row cannot go to a gap before (after) one of its direction holding a later
        (earlier) placed row."""
        bounds = self._frame_bounds()
        changed = False
        for row, gaps in self.options.items():
            for gap in list(gaps):
                direction, start = self.where[gap]
                if direction not in bounds:
                    continue
                starts, latest_before, earliest_after = bounds[direction]
                before = np.searchsorted(starts, start, side="left")
                after = np.searchsorted(starts, start, side="right")
                frame = self.frame[row]
                if (before > 0 and latest_before[before - 1] > frame) or \
                        (after < len(starts) and earliest_after[after] < frame):
                    gaps.discard(gap)
                    changed = True
        return changed

    def _frame_bounds(self) -> dict:
        """Per direction, the placed rows' gap starts (sorted), the latest frame among rows at
        or before each, and the earliest frame among rows at or after each."""
        placed: dict = {}
        for row, gap in self.placed.items():
            direction, start = self.where[gap]
            placed.setdefault(direction, []).append((start, self.frame[row]))
        bounds = {}
        for direction, rows in placed.items():
            starts, frames = (np.array(column) for column in zip(*sorted(rows)))
            bounds[direction] = (starts, np.maximum.accumulate(frames),
                                 np.minimum.accumulate(frames[::-1])[::-1])
        return bounds

    def _in_order(self, placement: dict) -> bool:
        """Within each direction, rows of later bytes have later frames."""
        order: dict = {}
        for row, gap in placement.items():
            direction, start = self.where[gap]
            order.setdefault(direction, []).append((start, self.frame[row]))
        return all([frame for _, frame in sorted(rows)] == sorted(frame for _, frame in rows)
                   for rows in order.values())

    def _solutions(self, rows: list, limit: int) -> list[tuple] | None:
        """Every complete placement of `rows` (each in one of its gaps, every gap filled
        exactly, frame order kept), or None when there are more than `limit` to try."""
        choices = [sorted(self.options[row]) for row in rows]
        if math.prod(map(len, choices)) > limit:
            return None
        found = []
        for combination in itertools.product(*choices):
            missing = dict(self.missing)
            for row, gap in zip(rows, combination):
                missing[gap] -= self.payload[row, gap]
            if not any(missing.values()) and \
                    self._in_order({**self.placed, **dict(zip(rows, combination))}):
                found.append(combination)
        return found

    def solve(self, max_rounds: int, max_combinations: int) -> tuple[dict, set]:
        """Rows placed, and rows that complete placements put in different gaps (ambiguous);
        rows left with no gap belong to none. Propagation first; the few rows it leaves are
        tried in every combination, within a bound (beyond it they count as ambiguous)."""
        for _ in range(max_rounds):
            if not (self._subset_rule() or self._single_rule() or self._order_rule()):
                break
        rows = [row for row, gaps in self.options.items() if gaps]
        solutions = self._solutions(rows, max_combinations) if rows else []
        if not solutions:
            return self.placed, set(rows)
        ambiguous = set()
        for row, placements in zip(rows, zip(*solutions)):
            if len(set(placements)) == 1:
                self._place(row, placements[0])
            else:
                ambiguous.add(row)
        return self.placed, ambiguous


def _chain_pairs(candidates: pd.DataFrame) -> np.ndarray:
    """Which candidate pairs (with their `group`) make the one solution of a chain group.

    A chain: all gaps of a group in one direction of one connection, and its rows' payloads
    (all above zero when there are several gaps) adding up to its gaps' bytes. Every row is then
    used, and as TCP sends in order, the rows in frame order fill the gaps in byte order: the
    placement is forced. It is the solution when each row falls wholly inside a gap it is a
    candidate of; otherwise the group has none this way and is left to the search.
    """
    group, row, gap = (candidates[name].to_numpy() for name in ("group", "row", "gap"))
    n_groups = int(group.max()) + 1
    # Each gap once, by (group, start); each row once (its first pair), by (group, frame).
    gap_at = np.unique(gap, return_index=True)[1]
    gap_at = gap_at[np.lexsort((candidates["start"].to_numpy()[gap_at], group[gap_at]))]
    _, row_first, row_of_pair = np.unique(row, return_index=True, return_inverse=True)
    by_frame = np.lexsort((candidates["frame"].to_numpy()[row_first], group[row_first]))
    row_at = row_first[by_frame]
    gaps = _Stream.of(group[gap_at], candidates["bytes"].to_numpy()[gap_at], n_groups)
    payload = _Stream.of(group[row_at], candidates["payload"].to_numpy()[row_at], n_groups)
    # The forced gap of each row: the last of its group starting at or before the row does.
    at = np.minimum(np.searchsorted(gaps.start, gaps.base[payload.group] + payload.offset,
                                    side="right") - 1, gaps.last[payload.group])
    forced = np.empty(len(row_first), gap.dtype)
    forced[by_frame] = gap[gap_at][at]
    chosen = gap == forced[row_of_pair]
    fits = (payload.offset + payload.size <= gaps.end[at] - gaps.base[payload.group]) & \
        (np.bincount(row_of_pair, chosen, len(row_first))[by_frame] > 0)
    direction = candidates["flow"].to_numpy() * 2 + candidates["is_orig"].to_numpy()
    others = direction != direction[row_at[payload.first]][group]  # than a pair of its group
    chains = (np.bincount(group, others, n_groups) == 0) & (payload.total == gaps.total) & \
        np.logical_and.reduceat(fits, payload.first) & \
        ((gaps.count == 1) | ~np.logical_or.reduceat(payload.size <= 0, payload.first))
    return chains[group] & chosen


@dataclass
class _Stream:
    """Sizes (gap bytes, row payloads) laid end to end, sorted by group: each one's offset in
    its group's stream and, per group, the first, last, count, total and where its stream
    starts in the one of all groups (sizes are whole numbers: int64 sums are exact)."""

    group: np.ndarray
    size: np.ndarray
    start: np.ndarray
    end: np.ndarray
    offset: np.ndarray
    first: np.ndarray
    last: np.ndarray
    count: np.ndarray
    base: np.ndarray
    total: np.ndarray

    @classmethod
    def of(cls, group: np.ndarray, size: np.ndarray, n_groups: int) -> _Stream:
        """`group` sorted, every group 0..n_groups-1 present."""
        size = size.astype(np.int64)
        end = np.cumsum(size)
        start = end - size
        first = np.searchsorted(group, np.arange(n_groups))
        last = np.append(first[1:], len(group)) - 1
        base = start[first]
        return cls(group=group, size=size, start=start, end=end, offset=start - base[group],
                   first=first, last=last, count=last - first + 1, base=base,
                   total=end[last] - base)


# The candidate columns a `_Group` is made of, in the order `_Group.of` takes them.
_GROUP_COLUMNS = ["row", "gap", "frame", "payload", "flow", "is_orig", "start", "bytes"]


def _searched_groups(candidates: pd.DataFrame) -> tuple[set, set]:
    """The pairs chosen by searching each group on its own (`_Group`), and ambiguous rows."""
    candidates = candidates.sort_values("group", kind="stable")
    columns = [candidates[name].to_numpy() for name in _GROUP_COLUMNS]
    columns[3] = columns[3].astype(np.int64)  # payload
    columns[7] = columns[7].astype(np.int64)  # bytes
    pairs = list(zip(*(column.tolist() for column in columns)))
    bounds = np.unique(candidates["group"].to_numpy(), return_index=True)[1].tolist() + [len(pairs)]
    chosen: set = set()
    ambiguous: set = set()
    for first, last in zip(bounds[:-1], bounds[1:]):
        group = _Group.of(pairs[first:last])
        if len(group.options) > MAX_GROUP_ROWS:
            ambiguous |= set(group.options)
            continue
        decided, unsure = group.solve(MAX_ROUNDS, MAX_COMBINATIONS)
        chosen |= set(decided.items())
        ambiguous |= unsure
    return chosen, ambiguous


def assign_to_gaps(candidates: pd.DataFrame) -> tuple[pd.DataFrame, set]:
    """Candidate pairs chosen (one a row, where all solutions agree), and ambiguous rows.

    Chain groups (`_chain_pairs`: one direction of one connection whose rows add up to its
    gaps; almost all groups) have one solution, decided at once, vectorised. The other groups
    are searched one by one (rare: parallel connections between the same two hosts).
    """
    candidates = candidates[candidates["payload"] <= candidates["bytes"]]
    if candidates.empty:
        return candidates, set()
    candidates = candidates.assign(group=_groups(candidates))
    in_chain = _chain_pairs(candidates)
    group = candidates["group"].to_numpy()
    solved = np.bincount(group, in_chain)[group] > 0
    searched, ambiguous = _searched_groups(candidates[~solved])
    row, gap = candidates["row"].to_numpy(), candidates["gap"].to_numpy()
    placed = np.array(list(searched), np.int64).reshape(-1, 2)
    span = int(gap.max()) + 1
    chosen = in_chain | member_of(row * span + gap, placed[:, 0] * span + placed[:, 1])
    return candidates[chosen], ambiguous


def _nearest_flow(pending: pd.DataFrame, ported: pd.DataFrame, idle_ns: int) -> pd.DataFrame:
    """Rows joined to the connection of their directed pair's nearest packets, when the nearest
    before and the nearest after (within the idle timeout, where present) agree."""
    by = ["src_code", "dst_code"]
    # Only packets of the pending rows' directed pairs can be nearest (and are few to sort).
    ported = ported[member_of(_directed_pair(ported), _directed_pair(pending))]
    packets = ported[[*by, "t", "flow", "is_orig"]].sort_values("t", kind="stable")
    pending = pending.sort_values("t", kind="stable")
    sides = [pd.merge_asof(pending, packets, on="t", by=by, direction=direction,
                           tolerance=idle_ns).set_index("row")[["flow", "is_orig"]]
             for direction in ("backward", "forward")]
    before, after = sides[0], sides[1].reindex(sides[0].index)
    flow = before["flow"].fillna(after["flow"])
    agree = flow.notna() & (before["flow"].isna() | after["flow"].isna()
                            | (before["flow"] == after["flow"]))
    is_orig = before["is_orig"].where(before["flow"].notna(), after["is_orig"])
    return pd.DataFrame({"row": flow.index, "flow": flow, "is_orig": is_orig,
                         "agree": agree.to_numpy()}).reset_index(drop=True)


def _directed_pair(rows: pd.DataFrame) -> np.ndarray:
    """One number a (sender, receiver) pair of address codes (each below 2^31)."""
    return (rows["src_code"].to_numpy(np.int64) << 32) | rows["dst_code"].to_numpy(np.int64)


def attach_portless(rows: pd.DataFrame, ported: pd.DataFrame, idle_ns: int) -> Attachment:
    """Each portless row's flow and direction (see the module docstring).

    `rows` (row, src_code, dst_code, t, frame, length) are the portless rows; `ported` the
    rows already in flows (also flow, is_orig, is_tcp, flags, seq, ack, len).
    """
    overhead = (ported["length"] - ported["len"]).groupby(ported["flow"]).min()
    gaps = sequence_gaps(ported)
    candidates = gap_candidates(rows, gaps)
    candidates = candidates.assign(payload=(candidates["length"] - candidates["flow"].map(
        overhead)).fillna(0).clip(lower=0))
    in_gaps, ambiguous = assign_to_gaps(candidates)
    pending = rows[~rows["row"].isin(in_gaps["row"]) & ~rows["row"].isin(ambiguous)]
    nearest = _nearest_flow(pending, ported, idle_ns)
    ambiguous |= set(nearest.loc[nearest["flow"].notna() & ~nearest["agree"], "row"])
    columns = {"row": np.int64, "flow": np.int64, "is_orig": bool}
    attached = pd.concat([in_gaps[list(columns)], nearest.loc[nearest["agree"], list(columns)]],
                         ignore_index=True).astype(columns)
    return Attachment(attached=attached,
                      ambiguous_rows=np.array(sorted(ambiguous), dtype=np.int64))
