"""Where one connection of a 5-tuple ends and the next begins, as Zeek's timers decide.

Zeek forgets a connection when one of its timers fires (src/packet_analysis/protocol/tcp/
TCPSessionAdapter.cc, src/session/Session.cc; the delays are scripts/base/init-bare.zeek's
defaults); a later packet of the same 5-tuple then starts a new connection. Timers due at or
before a packet's time fire before it is processed (src/RunState.cc `dispatch_packet` calls
`expire_timers` first), so a packet at or after a connection's removal time starts a new one.
Each round of `connection_numbers` cuts every connection at most once and the next looks only
at the pieces cut off, so the rounds are as many as the most connections one 5-tuple has:

- inactivity (`Session::InactivityTimer`): no packet for `tcp_inactivity_timeout` (5 min) or
  `udp_inactivity_timeout` (1 min): settings `tcp_idle_timeout_s`, `udp_idle_timeout_s`; from
  the responder's SYN-ACK on (`connection_established`), 1 h for a responder port in
  base/protocols/conn/inactivity.zeek's `port_inactivity_timeouts` (21, 22, 23, 513/tcp);
- attempt (`AttemptTimer`, `tcp_attempt_delay` 5 s, scheduled in `UpdateInactiveState` when the
  originator's first packet is a SYN): the responder sent nothing within 5 s of it;
- close (`ConnectionClosed` then `ConnDeleteTimer`, `tcp_close_delay` 5 s): 5 s after the
  packet that completes the close: a RST from a side that had not sent a FIN (its endpoint
  goes to RESET), a FIN once the peer has closed (FIN or RST), or a FIN while the peer has
  sent nothing. `tcp_reset_delay` (`ResetTimer`) is scheduled only when a script handles
  `connection_reset`, which the base scripts do not;
- linger (`ExpireTimer`, every `tcp_session_timer` 6 s from `tcp_SYN_timeout` 5 s after the
  start and from 6 s after the first FIN): a connection one side closed and then reset (a RST
  after its own FIN, the peer still open) goes at the first firing more than
  `tcp_connection_linger` (5 s) after its last packet;
- reuse: a pure SYN after a FIN or RST since the previous SYN (Zeek's `IsReuse`);
- an active timeout (nfstream's; Zeek has none), only when `active_timeout_s` is above 0.

Zeek's other removals are not modelled: `PartialCloseTimer` (only with a
`connection_partial_close` handler, which the base scripts do not define) and the 1 h that
inactivity.zeek's `analyzer_inactivity_timeouts` gives SSH and FTP on other ports.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from tracelab.core.packets import TCP_FLAG_BITS
from tracelab.security.flow_arrays import PerFlow, run_starts

FIN, SYN, RST, ACK = (TCP_FLAG_BITS[n] for n in ("FIN", "SYN", "RST", "ACK"))

# init-bare.zeek: tcp_attempt_delay, tcp_close_delay, tcp_SYN_timeout, tcp_connection_linger
# (5 secs each) and tcp_session_timer (6 secs).
ATTEMPT_DELAY_NS = CLOSE_DELAY_NS = SYN_TIMEOUT_NS = LINGER_NS = 5_000_000_000
SESSION_TIMER_NS = 6_000_000_000
# inactivity.zeek: Conn::port_inactivity_timeouts.
LONG_IDLE_PORTS = (21, 22, 23, 513)
LONG_IDLE_NS = 3600 * 1_000_000_000
NEVER = np.iinfo(np.int64).max


@dataclass
class KeyedRows:
    """Ported packets sorted by (5-tuple key, time, frame): what cuts them into connections.
    `forward`: sent from the key's lower endpoint; `flips`: whether Zeek would flip the roles
    were the packet a connection's first (`conn_state.flipped_roles`); `long_idle`: a SYN-ACK
    from one of LONG_IDLE_PORTS."""

    key: np.ndarray
    ts: np.ndarray
    flags: np.ndarray
    is_tcp: np.ndarray
    forward: np.ndarray
    flips: np.ndarray
    long_idle: np.ndarray

    def take(self, index: np.ndarray) -> KeyedRows:
        return KeyedRows(*(getattr(self, f.name)[index] for f in fields(self)))


def connection_numbers(rows: KeyedRows, idle_ns: tuple[int, int], active_ns: int) -> np.ndarray:
    """Each row's connection number (0.. in row order). `idle_ns`: (TCP, UDP) idle timeouts;
    `active_ns` 0 for none."""
    # Cut at once where no timeout can be longer; the rounds cut where a 1 h one did not apply.
    starts = run_starts(rows.key)
    long_key = np.logical_or.reduceat(rows.long_idle, np.flatnonzero(starts))[
        np.cumsum(starts) - 1] if len(starts) else starts
    gap = np.diff(rows.ts, prepend=rows.ts[:1])
    idle = np.where(rows.is_tcp, np.where(long_key, LONG_IDLE_NS, idle_ns[0]), idle_ns[1])
    boundary = starts | (gap >= idle)
    boundary |= _reuse(rows, boundary)
    # Each round looks only at the connections the previous one cut off (whole connections).
    todo = np.arange(len(rows.ts))
    while len(todo):
        part = rows.take(todo)
        flow = np.cumsum(boundary[todo]) - 1
        removal = np.minimum(_removal_ns(part, flow), _idle_ns(part, flow, idle_ns[0]))
        late = part.ts >= removal[flow]
        cut = PerFlow(flow).first_position(late)[flow]
        boundary[todo[np.arange(len(todo)) == cut]] = True
        todo = todo[np.arange(len(todo)) >= cut]
    return np.cumsum(boundary | _active_chunks(rows.ts, boundary, active_ns)) - 1


def _reuse(rows: KeyedRows, boundary: np.ndarray) -> np.ndarray:
    """A pure SYN after a FIN or RST since the previous SYN (or the connection's start)."""
    pure_syn = rows.is_tcp & ((rows.flags & (SYN | ACK | RST | FIN)) == SYN)
    closing = rows.is_tcp & ((rows.flags & (FIN | RST)) != 0)
    block = np.cumsum(pure_syn | boundary) - 1
    block_closed = np.bincount(block, weights=closing, minlength=block.max(initial=-1) + 1) > 0
    return pure_syn & ~boundary & block_closed[np.maximum(block - 1, 0)]


def _seen_before(per: PerFlow, mask: np.ndarray) -> np.ndarray:
    """Whether a row of the row's connection before it satisfies `mask`."""
    return np.arange(len(mask)) > per.first_position(mask)[per.flow]


def _first_ts(per: PerFlow, ts: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per connection: the time of its first row where `mask` holds (NEVER if none)."""
    at = per.first_position(mask)
    found = np.isfinite(at)
    return np.where(found, ts[np.where(found, at, 0).astype(np.int64)], NEVER)


def _removal_ns(rows: KeyedRows, flow: np.ndarray) -> np.ndarray:
    """Per connection: when one of Zeek's TCP timers removes it (NEVER: none does)."""
    per = PerFlow(flow)
    first = per.starts
    first_side = rows.forward[first][flow] == rows.forward
    syn, fin, rst = (rows.is_tcp & ((rows.flags & bit) != 0) for bit in (SYN, FIN, RST))
    # Attempt: the originator's first packet is a SYN and the responder stays silent.
    attempt_at = np.where(syn[first] & ~rows.flips[first], rows.ts[first] + ATTEMPT_DELAY_NS,
                          NEVER)
    answered = per.any(~first_side & (rows.ts < attempt_at[flow]))
    attempt_at = np.where(answered, NEVER, attempt_at)
    # Close: the first packet that completes it (module docstring).
    own_fin = np.where(first_side, _seen_before(per, fin & first_side),
                       _seen_before(per, fin & ~first_side))
    closes = fin | rst
    peer_closed = np.where(first_side, _seen_before(per, closes & ~first_side),
                           _seen_before(per, closes & first_side))
    peer_silent = first_side & ~_seen_before(per, ~first_side)
    close_ts = _first_ts(per, rows.ts, (rst & ~own_fin) | (fin & (peer_closed | peer_silent)))
    close_at = np.where(close_ts < NEVER, close_ts + CLOSE_DELAY_NS, NEVER)
    # A close before the attempt timer fires cancels it (`CancelTimers`).
    removal = np.where(close_ts < attempt_at, close_at, np.minimum(attempt_at, close_at))
    first_fin = _first_ts(per, rows.ts, fin)
    chains = (rows.ts[first] + SYN_TIMEOUT_NS,
              np.where(first_fin < NEVER, first_fin + SESSION_TIMER_NS, NEVER))
    return np.minimum(removal, _linger_ns(rows.ts, per, rst & own_fin & ~peer_closed, chains))


def _idle_ns(rows: KeyedRows, flow: np.ndarray, tcp_idle_ns: int) -> np.ndarray:
    """Per connection: when its inactivity timer removes it, for the TCP connections that
    may have the 1 h timeout (the others were cut before the rounds): the first pause of
    `tcp_idle_ns` before the responder's SYN-ACK from a LONG_IDLE_PORTS port, or of 1 h after."""
    per = PerFlow(flow)
    first = per.starts
    first_side = rows.forward[first][flow] == rows.forward
    responder = first_side == rows.flips[first][flow]
    established = per.first_position(rows.long_idle & responder)[flow]
    position = np.arange(len(flow))
    has_next = np.append(flow[1:] == flow[:-1], False)
    pauses = np.flatnonzero(has_next & rows.is_tcp)
    timeout = np.where(position[pauses] >= established[pauses], LONG_IDLE_NS, tcp_idle_ns)
    fires = rows.ts[pauses + 1] - rows.ts[pauses] >= timeout
    removal = np.full(len(first), NEVER)
    np.minimum.at(removal, flow[pauses[fires]], rows.ts[pauses[fires]] + timeout[fires])
    return removal


def _linger_ns(ts: np.ndarray, per: PerFlow, reset_after_fin: np.ndarray,
               chains: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per connection: when ExpireTimer removes it after `reset_after_fin` (module docstring):
    the first firing of either chain of its timer (per connection: first firing time, every
    tcp_session_timer after) inside a pause after that packet."""
    flow = per.flow
    position = np.arange(len(flow))
    has_next = np.append(flow[1:] == flow[:-1], False)
    pauses = np.flatnonzero((position >= per.first_position(reset_after_fin)[flow]) & has_next)
    quiet_from = ts[pauses] + LINGER_NS  # a firing must come strictly after this
    firing = np.full(len(pauses), NEVER)
    for chain in chains:
        start = chain[flow[pauses]]
        steps = np.maximum((quiet_from - start) // SESSION_TIMER_NS + 1, 0)
        firing = np.minimum(firing, np.where(start < NEVER - SESSION_TIMER_NS,
                                             start + steps * SESSION_TIMER_NS, NEVER))
    fires = firing <= ts[pauses + 1]
    removal = np.full(len(per.starts), NEVER)
    np.minimum.at(removal, flow[pauses[fires]], firing[fires])
    return removal


def _active_chunks(ts: np.ndarray, boundary: np.ndarray, active_ns: int) -> np.ndarray:
    """Starts of the pieces an active timeout cuts connections into (none when 0). Each step
    moves every over-long connection's start to its first late packet: the loop runs once per
    piece of the longest connection, not once per packet."""
    n = len(ts)
    chunk = np.zeros(n, np.int64)
    if active_ns <= 0:
        return np.zeros(n, bool)
    start_ts = ts[np.maximum.accumulate(np.where(boundary, np.arange(n), 0))]
    while True:
        late = (ts - start_ts) >= active_ns
        if not late.any():
            break
        first_late = late & run_starts(late)
        chunk[late] += 1
        restart = np.maximum.accumulate(np.where(first_late, np.arange(n), 0))
        start_ts = np.where(late, ts[restart], start_ts)
    return run_starts(chunk)
