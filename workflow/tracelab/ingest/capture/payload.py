"""What TCP and UDP carry, as far as the packet table names it: TLS records (versions,
handshake and alert messages) and the id and first question (name, type) of DNS messages.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracelab.ingest.capture.columns import Bytes, bits, scatter, utf8_strings

TLS_VERSION_NAMES = {0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2",
                     0x0304: "TLSv1.3"}
TLS_RECORD_MAX = (1 << 14) + 2048
TLS_HANDSHAKE_NAMES = {0: "Hello Request", 1: "Client Hello", 2: "Server Hello",
                       3: "Hello Verify Request", 4: "New Session Ticket", 5: "End of Early Data",
                       6: "Hello Retry Request", 8: "Encrypted Extensions", 11: "Certificate",
                       12: "Server Key Exchange", 13: "Certificate Request",
                       14: "Server Hello Done", 15: "Certificate Verify",
                       16: "Client Key Exchange", 20: "Finished", 21: "Certificate URL",
                       22: "Certificate Status", 24: "Key Update", 254: "Message Hash"}
TLS_ALERT_LEVELS = {1: "Warning", 2: "Fatal"}
TLS_ALERTS = {0: "Close Notify", 10: "Unexpected Message", 20: "Bad Record MAC",
              21: "Decryption Failed", 22: "Record Overflow", 30: "Decompression Failure",
              40: "Handshake Failure", 41: "No Certificate", 42: "Bad Certificate",
              43: "Unsupported Certificate", 44: "Certificate Revoked",
              45: "Certificate Expired", 46: "Certificate Unknown", 47: "Illegal Parameter",
              48: "Unknown CA", 49: "Access Denied", 50: "Decode Error", 51: "Decrypt Error",
              70: "Protocol Version", 71: "Insufficient Security", 80: "Internal Error",
              86: "Inappropriate Fallback", 90: "User Canceled", 100: "No Renegotiation",
              109: "Missing Extension", 110: "Unsupported Extension", 112: "Unrecognized Name",
              113: "Bad Certificate Status Response", 115: "Unknown PSK Identity",
              116: "Certificate Required", 120: "No Application Protocol"}
# tls_message item codes: handshake types as they are, then these.
TLS_CCS, TLS_APPDATA, TLS_HEARTBEAT, TLS_ENCRYPTED_HS, TLS_ENCRYPTED_ALERT = 300, 301, 302, 303, 304
TLS_ALERT_BASE = 1000
# The random of a ServerHello that is a HelloRetryRequest (RFC 8446), first 8 bytes.
HRR_RANDOM_PREFIX = bytes.fromhex("cf21ad74e59a6111")


def tls_records(packet: Bytes, candidates, payload, visible) -> dict:
    """TLS records starting a TCP payload: record version, ServerHello version, message list."""
    rows = np.flatnonzero(candidates & (visible >= 5))
    # The record header (content type, version, length) of those rows alone, in one read.
    head = packet.subset(rows).u64(payload[rows])
    content = bits(head, 56, 8)
    rows = rows[(content >= 20) & (content <= 24) & (bits(head, 48, 8) == 3)
                & (bits(head, 40, 8) <= 4) & (bits(head, 24, 16) <= TLS_RECORD_MAX)]
    m = len(rows)
    result = {"rows": rows, "record_version": np.zeros(m, dtype=np.int64),
              "server_version": np.zeros(m, dtype=np.int64), "message": pa.nulls(m, pa.string())}
    if not m:
        return result
    p = packet.subset(rows)
    start = payload[rows]
    end = start + visible[rows]
    result["record_version"] = p.u16(start + 1)

    # ServerHello: the version it chose (supported_versions, if visible, says TLS 1.3).
    hello = (p.u8(start) == 22) & (p.u8(start + 5) == 2) & p.has(start, 11)
    server_version = np.where(hello, p.u16(start + 9), 0)
    hellos = np.flatnonzero(hello)
    chosen = _supported_version(p.subset(hellos), start[hellos], end[hellos])
    server_version[hellos] = np.where(chosen > 0, chosen, server_version[hellos])
    result["server_version"] = server_version

    # Walk the visible records (and the handshake messages inside them), a step per item;
    # each step reads only the rows still walking (most stop after their first record).
    items_row, items_code = [], []
    pos = start.copy()
    record_end = np.full(m, -1, dtype=np.int64)
    cipher_changed = np.zeros(m, dtype=bool)
    active = np.ones(m, dtype=bool)
    for _ in range(16):
        live = np.flatnonzero(active)
        q, at, stop, in_record, changed = (p.subset(live), pos[live], end[live],
                                            record_end[live], cipher_changed[live])
        inside = at < in_record
        message = inside & (at + 4 <= stop)
        here = q.within(at)
        hs_type = q.u8(here)
        hs_len = q.u24(here + 1)
        known = np.isin(hs_type, list(TLS_HANDSHAKE_NAMES))
        encrypted = message & (changed | ~known | (at + 4 + hs_len > in_record))
        retry = message & (hs_type == 2) & q.has(at, 14) & \
            (q.u64(here + 6) == np.uint64(int.from_bytes(HRR_RANDOM_PREFIX, "big")))
        code = np.where(encrypted, TLS_ENCRYPTED_HS, np.where(retry, 6, hs_type))
        items_row.append(live[message])
        items_code.append(code[message])
        after_message = np.where(encrypted, in_record, at + 4 + hs_len)

        header = ~inside & (at + 5 <= stop)
        content = q.u8(here)
        length = q.u16(here + 3)
        record = header & (content >= 20) & (content <= 24) & (q.u8(here + 1) == 3) & \
            (q.u8(here + 2) <= 4)
        plain_alert = record & (content == 21) & (length == 2) & ~changed & q.has(at, 7)
        alert_code = TLS_ALERT_BASE + q.u8(here + 5) * 256 + q.u8(here + 6)
        code = np.select(
            [content == 20, plain_alert, content == 21, content == 23, content == 24],
            [TLS_CCS, alert_code, TLS_ENCRYPTED_ALERT, TLS_APPDATA, TLS_HEARTBEAT], -1)
        shown = record & (content != 22)
        encrypted_hs = record & (content == 22) & changed
        code = np.where(encrypted_hs, TLS_ENCRYPTED_HS, code)
        shown |= encrypted_hs
        items_row.append(live[shown])
        items_code.append(code[shown])
        cipher_changed[live] = changed | (record & (content == 20))
        enter = record & (content == 22) & ~encrypted_hs
        record_end[live] = np.where(enter, at + 5 + length, in_record)
        after_record = np.where(enter, at + 5, at + 5 + length)

        at = np.where(message, after_message, np.where(record, after_record, at))
        pos[live] = at
        active[live] = (message | record) & (at < stop)
        if not active.any():
            break
    order = np.concatenate(items_row)
    codes = np.concatenate(items_code)
    # Items of a row in the order they were found (steps alternate message/record lists).
    step = np.concatenate([np.full(len(r), k) for k, r in enumerate(items_row)])
    sort = np.lexsort((step, order))
    order, codes = order[sort], codes[sort]
    unique_codes, code_index = np.unique(codes, return_inverse=True)
    names = pa.array([_tls_item_name(int(c)) for c in unique_codes], pa.string())
    offsets = np.zeros(m + 1, dtype=np.int32)
    np.cumsum(np.bincount(order, minlength=m), out=offsets[1:])
    lists = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                     names.take(pa.array(code_index.ravel())))
    joined = pc.binary_join(lists, ", ")
    result["message"] = pc.if_else(pc.equal(pc.list_value_length(lists), 0), None, joined)
    return result


def _tls_item_name(code: int) -> str:
    if code >= TLS_ALERT_BASE:
        level, description = divmod(code - TLS_ALERT_BASE, 256)
        return (f"Alert (Level: {TLS_ALERT_LEVELS.get(level, f'Unknown ({level})')}, "
                f"Description: {TLS_ALERTS.get(description, f'Unknown ({description})')})")
    return {TLS_CCS: "Change Cipher Spec", TLS_APPDATA: "Application Data",
            TLS_HEARTBEAT: "Heartbeat", TLS_ENCRYPTED_HS: "Encrypted Handshake Message",
            TLS_ENCRYPTED_ALERT: "Encrypted Alert"}.get(
                code, TLS_HANDSHAKE_NAMES.get(code, f"Unknown Handshake Message ({code})"))


def _supported_version(p: Bytes, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The supported_versions extension of ServerHello records at start..end of each packet,
    if it was captured (0 if not); a step per extension."""
    length = end - start
    pos = np.full(len(start), 5 + 4 + 2 + 32)  # record and handshake headers, version, random
    whole = length >= pos + 1
    pos = pos + 1 + p.u8(p.within(start + pos)) + 2 + 1   # session id, cipher suite, compression
    whole &= length >= pos + 2
    ext_end = np.minimum(length, pos + 2 + p.u16(p.within(start + pos)))
    pos += 2
    chosen = np.zeros(len(start), dtype=np.int64)
    active = whole & (pos + 4 <= ext_end)
    while active.any():
        here = p.within(start + pos)
        size = p.u16(here + 2)
        found = active & (p.u16(here) == 43) & (size == 2) & (pos + 6 <= ext_end)
        chosen = np.where(found, p.u16(here + 4), chosen)
        pos += 4 + size
        active &= ~found & (pos + 4 <= ext_end)
    return chosen


def dns_question(packet: Bytes, rows_mask, message, end) -> dict[str, pa.Array]:
    """The packet columns of DNS messages: `dns_id` (the header's id), `dns_query` (the first
    question's name, from length-prefixed labels; "<Root>" for the root) and `dns_qtype` (its
    type, where the name ends inside the message)."""
    n = len(rows_mask)
    rows = np.flatnonzero(rows_mask & packet.has(message, 12))
    if not len(rows):
        return {"dns_id": pa.nulls(n, pa.int32()), "dns_query": pa.nulls(n, pa.string()),
                "dns_qtype": pa.nulls(n, pa.int32())}
    p = packet.subset(rows)
    message, end = message[rows], np.minimum(end[rows], p.captured)
    asks = p.u16(message + 4) >= 1
    name = message + 12
    pos = name.copy()
    active = asks & (pos < end)
    dots_row, dots_at = [], []
    complete = np.zeros(len(rows), dtype=bool)
    for _ in range(128):
        if not active.any():
            break
        label = p.u8(pos)
        done = active & ((label == 0) | (label >= 0xC0))
        complete |= done
        step = active & (label >= 1) & (label <= 63) & (pos + 1 + label <= end)
        inner = step & (pos > name)
        dots_row.append(np.flatnonzero(inner))
        dots_at.append(pos[inner])
        pos = np.where(step, pos + 1 + label, pos)
        active = step & (pos < end)
    shown = asks
    length = np.where(shown, np.maximum(pos - name - 1, 0), 0)
    flat, offsets = p.slices(name + 1, length)
    flat = flat.copy()
    if dots_row:
        which = np.concatenate(dots_row)
        at = np.concatenate(dots_at)
        flat[offsets[which] + (at - name[which] - 1)] = ord(".")
    names = utf8_strings(flat, offsets, len(rows))
    names = pc.if_else(pc.equal(pc.utf8_length(names), 0), "<Root>", names)
    names = pc.if_else(pa.array(shown), names, None)
    # The type follows the name's end: its zero label, or a 2-byte compression pointer.
    after = pos + np.where(p.u8(p.within(pos)) >= 0xC0, 2, 1)
    typed = asks & complete & (after + 2 <= end)
    qtype = pa.array(np.where(typed, p.u16(np.where(typed, after, message)), 0), mask=~typed)
    return {"dns_id": scatter(n, rows, pa.array(p.u16(message)), pa.int32()),
            "dns_query": scatter(n, rows, names, pa.string()),
            "dns_qtype": scatter(n, rows, qtype, pa.int32())}
