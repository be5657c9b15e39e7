"""http.log and dns.log beside conn.log (and notice.log, `tracelab.security.notice`): Zeek's
logs of the same trace, from the tables tracelab has, in Zeek's ASCII format
(`tracelab.security.zeek_log`).

Each log has the fields of Zeek's `Info` record (HTTP::Info of base/protocols/http/main.zeek
with the file fields of http/entities.zeek; DNS::Info of base/protocols/dns/main.zeek;
notice.log: `tracelab.security.notice`) in Zeek's order with Zeek's types; a field tracelab
cannot fill is declared and left unset (`-`), never guessed. Like conn.log, each adds
`orig_name`/`resp_name` at the end, and `id.orig_h`/`id.resp_h` hold the trace's addresses
(`tracelab.security.names`).

- http.log: one record a request of http.parquet: `trans_depth` (its rank in the connection,
  from 1), `method`, `uri`, `status_code` (its response's status). Unset: `host`, `referrer`,
  `version`, `user_agent`, `origin`, the body lengths, `status_msg`, `info_*`, `tags`,
  credentials, `proxied` and the file fields (a Wireshark export shows request and status
  lines only; tracelab keeps no headers of captures either).
- dns.log: one record a DNS transaction (a query and its response; a message without its
  pair alone), from the packets with a DNS question (`dns_query`: DNS, mDNS, LLMNR), each in
  its connection of flows.parquet. A query is what the connection's originator sent; the n-th
  response of a connection (of a transaction id, where known) answers the n-th query. `rtt`
  is response time less query time. `trans_id`, `qtype` and `qtype_name` (Zeek's
  `DNS::query_types` name of the number) from a capture's packet columns (`dns_id`,
  `dns_qtype`), else from Wireshark's Info of an export, which alone gives `rcode`,
  `rcode_name` and `answers` (the records Info lists, where the answer is NOERROR). Unset:
  `qclass`, the header bits `AA`, `TC`, `RD`, `RA`, `Z`, `TTLs` and `rejected` (neither an
  export nor tracelab's capture decoder keeps them), and from a capture `rcode`, `rcode_name`
  and `answers`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracelab.core.streaming import (
    MERGE_BATCH_ROWS,
    derived_row_groups,
    merge_row_groups,
    merge_sorted,
    non_empty_groups,
)
from tracelab.security.flow_arrays import occurrence
from tracelab.security.partitions import partition_count, split_by_pair
from tracelab.security.uid import UidIndex
from tracelab.security.zeek_log import (
    LogField,
    ZeekLogWriter,
    count_text,
    endpoint_fields,
    interval_text,
    string_text,
    time_text,
    unset,
)

log = logging.getLogger(__name__)

ID_FIELDS = [LogField("id.orig_h", "addr"), LogField("id.orig_p", "port"),
             LogField("id.resp_h", "addr"), LogField("id.resp_p", "port")]
NAME_FIELDS = [LogField("orig_name", "string"), LogField("resp_name", "string")]


def _fields(*pairs: tuple[str, str]) -> list[LogField]:
    return [LogField(name, type_) for name, type_ in pairs]


HTTP_LOG_FIELDS = [
    *_fields(("ts", "time"), ("uid", "string")), *ID_FIELDS,
    *_fields(("trans_depth", "count"), ("method", "string"), ("host", "string"),
             ("uri", "string"), ("referrer", "string"), ("version", "string"),
             ("user_agent", "string"), ("origin", "string"), ("request_body_len", "count"),
             ("response_body_len", "count"), ("status_code", "count"), ("status_msg", "string"),
             ("info_code", "count"), ("info_msg", "string"), ("tags", "set[enum]"),
             ("username", "string"), ("password", "string"), ("proxied", "set[string]"),
             ("orig_fuids", "vector[string]"), ("orig_filenames", "vector[string]"),
             ("orig_mime_types", "vector[string]"), ("resp_fuids", "vector[string]"),
             ("resp_filenames", "vector[string]"), ("resp_mime_types", "vector[string]")),
    *NAME_FIELDS]
DNS_LOG_FIELDS = [
    *_fields(("ts", "time"), ("uid", "string")), *ID_FIELDS,
    *_fields(("proto", "enum"), ("trans_id", "count"), ("rtt", "interval"),
             ("query", "string"), ("qclass", "count"), ("qclass_name", "string"),
             ("qtype", "count"), ("qtype_name", "string"), ("rcode", "count"),
             ("rcode_name", "string"), ("AA", "bool"), ("TC", "bool"), ("RD", "bool"),
             ("RA", "bool"), ("Z", "count"), ("answers", "vector[string]"),
             ("TTLs", "vector[interval]"), ("rejected", "bool")),
    *NAME_FIELDS]

FLOW_COLUMNS = ["uid", "proto", "orig", "orig_port", "resp", "resp_port", "first_ts",
                "last_ts"]
# DNS messages dns.log makes into transactions at once (about; more when one pair of hosts
# exchanged more): 360k took ~600 MB (a 10M-packet capture).
DNS_PARTITION_MESSAGES = 100_000
# What http.log takes of http.parquet, and of each request's connection.
HTTP_LOG_COLUMNS = ["ts", "frame", "uid", "src", "dst", "method", "uri", "status"]
HTTP_ENDS = ["orig", "orig_port", "resp", "resp_port"]
DNS_PACKET_COLUMNS = ["frame", "ts", "src", "src_port", "dst", "dst_port", "info", "dns_id",
                      "dns_query", "dns_qtype"]
# Wireshark's Info of a DNS message: id, the error of a response, the question's type and
# name, then (in a response) the records as "TYPE value".
DNS_INFO = (r"^Standard query (?P<response>response )?0x(?P<id>[0-9a-fA-F]{1,4}) "
            r"(?:(?P<error>No such name|Server failure|Refused|Format error|Not implemented) )?"
            r"(?P<qtype>[A-Z][A-Z0-9]*) (?P<name>[^\s,]+)(?P<records>.*)$")
DNS_RECORD = r"(?:^|\s)(?:[A-Z][A-Z0-9]*) ([^\s,]+)"
# RFC 1035 / IANA numbers of the names Zeek writes (DNS::rcode_types).
RCODES = {"NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5}
WIRESHARK_RCODES = {"No such name": "NXDOMAIN", "Server failure": "SERVFAIL",
                    "Refused": "REFUSED", "Format error": "FORMERR", "Not implemented": "NOTIMP"}
# Zeek's DNS::query_types (base/protocols/dns/consts.zeek, zeek/zeek a13de64); a number not in
# it is "query-<n>". Wireshark's Info names the same types the same way, but 255 "ANY".
ZEEK_QUERY_TYPES = {
    1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG", 9: "MR",
    10: "NULL", 11: "WKS", 12: "PTR", 13: "HINFO", 14: "MINFO", 15: "MX", 16: "TXT", 17: "RP",
    18: "AFSDB", 19: "X25", 20: "ISDN", 21: "RT", 22: "NSAP", 23: "NSAP-PTR", 24: "SIG",
    25: "KEY", 26: "PX", 27: "GPOS", 28: "AAAA", 29: "LOC", 30: "NXT", 31: "EID", 32: "NIMLOC",
    33: "SRV", 34: "ATMA", 35: "NAPTR", 36: "KX", 37: "CERT", 38: "A6", 39: "DNAME",
    40: "SINK", 41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG",
    47: "NSEC", 48: "DNSKEY", 49: "DHCID", 50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA",
    53: "SMIMEA", 55: "HIP", 56: "NINFO", 57: "RKEY", 58: "TALINK", 59: "CDS", 60: "CDNSKEY",
    61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB", 65: "HTTPS", 99: "SPF",
    100: "UINFO", 101: "UID", 102: "GID", 103: "UNSPEC", 104: "NID", 105: "L32", 106: "L64",
    107: "LP", 108: "EUI48", 109: "EUI64", 249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR",
    253: "MAILB", 254: "MAILA", 255: "*", 256: "URI", 257: "CAA", 32768: "TA", 32769: "DLV",
    65281: "WINS", 65282: "WINS-R", 65422: "XPF", 65521: "INTEGRITY"}
WIRESHARK_QTYPES = {**{name: n for n, name in ZEEK_QUERY_TYPES.items()}, "ANY": 255}


def _flow_table(flows_path, keep, columns: list[str]) -> pa.Table:
    """`columns` of the flows `keep(row group)` selects (a boolean array), streamed, as an
    Arrow table, text as plain strings."""
    parquet = pq.ParquetFile(flows_path)
    return _kept_flows(derived_row_groups(parquet, columns, non_empty_groups(parquet)), keep,
                       columns)


def _kept_flows(flows: Iterable[pa.Table], keep, columns: list[str]) -> pa.Table:
    """The rows `keep` selects of each of the tables `flows`, text as plain strings."""
    parts = [rows.filter(keep(rows)).select(columns) for rows in flows]
    parts = [part.cast(pa.schema([pa.field(f.name, pa.string()) if pa.types.is_dictionary(
        f.type) else f for f in part.schema])) for part in parts]
    if not parts:
        return pa.schema([(name, pa.string()) for name in columns]).empty_table()
    return pa.concat_tables(parts)


def _ids(frame: pd.DataFrame, dns: dict[str, str]) -> dict[str, pa.Array]:
    """id.* and the name fields of rows with orig, orig_port, resp, resp_port columns."""
    orig, orig_name = endpoint_fields(pa.array(frame["orig"], pa.string()), dns)
    resp, resp_name = endpoint_fields(pa.array(frame["resp"], pa.string()), dns)
    return {"id.orig_h": orig, "id.orig_p": _counts(frame["orig_port"]), "id.resp_h": resp,
            "id.resp_p": _counts(frame["resp_port"]), "orig_name": orig_name,
            "resp_name": resp_name}


def _counts(values: pd.Series) -> pa.Array:
    return count_text(pa.array(values.astype("Int64"), pa.int64()))


def _ns(values: pd.Series) -> pa.Array:
    """Times (null: unset) as int64 nanoseconds since the epoch."""
    stamps = pa.array(pd.to_datetime(values, utc=True), pa.timestamp("ns", "UTC"))
    return stamps.cast(pa.int64())


def _strings(values: pd.Series) -> pa.Array:
    return string_text(pa.array(values.astype("object").where(values.notna(), None),
                                pa.string()))


def _in_order(fields: list[LogField], values: dict[str, pa.Array], rows: int) -> list[pa.Array]:
    return [values.get(f.name, unset(rows)) for f in fields]


# ---- http.log ------------------------------------------------------------------------------

def http_log_fields(http: pd.DataFrame, ends: pd.DataFrame, depth: np.ndarray,
                    dns: dict[str, str]) -> list[pa.Array]:
    """http.log's fields of the requests `http` (HTTP columns ts, uid, src, dst, method, uri,
    status; in time order), given each one's connection `ends` (orig, orig_port, resp,
    resp_port; null for a request in no connection, which has its client and server and no
    ports) and `depth` (its rank in its connection, from 1)."""
    ends = ends.assign(orig=ends["orig"].where(ends["orig"].notna(), http["src"]),
                       resp=ends["resp"].where(ends["resp"].notna(), http["dst"]))
    values = {"ts": time_text(_ns(http["ts"])), "uid": _strings(http["uid"]),
              "trans_depth": _counts(pd.Series(depth).where(http["uid"].notna())),
              "method": _strings(http["method"]), "uri": _strings(http["uri"]),
              "status_code": _counts(http["status"]), **_ids(ends, dns)}
    return _in_order(HTTP_LOG_FIELDS, values, len(http))


class _Connections:
    """The connection of every request with one (its ids in flows.parquet), and how many
    requests of each were written: what http.log needs beyond a batch of requests, a row a
    connection that carried HTTP, found by its uid (`UidIndex`)."""

    def __init__(self, http_path, flows_path):
        self.uids = UidIndex(pq.read_table(http_path, columns=["uid"]).column("uid"))
        flows = _flow_table(flows_path, lambda rows: self.uids.find(rows.column("uid")) >= 0,
                            ["uid", *HTTP_ENDS])
        self.row = np.full(len(self.uids), -1, np.int64)
        self.row[self.uids.find(flows.column("uid"))] = np.arange(flows.num_rows)
        self.ends = flows.select(HTTP_ENDS)
        self.written = np.zeros(len(self.uids), np.int64)

    def of(self, http: pa.Table) -> tuple[pd.DataFrame, np.ndarray]:
        """The `ends` and `depth` of `http_log_fields` of the next requests in time order."""
        slot = self.uids.find(http.column("uid"))
        row = np.where(slot >= 0, self.row[np.maximum(slot, 0)], -1)
        ends = self.ends.take(pa.array(row, mask=row < 0)).to_pandas()
        depth = self.written[np.maximum(slot, 0)] + occurrence(slot) + 1
        np.add.at(self.written, slot[slot >= 0], 1)
        return ends, depth


def write_http_log(handle, http_path, flows_path, dns, span) -> int:
    """http.log of the requests of `http_path` in time order, a batch at a time: each row group
    of the file is sorted (a partition's requests) and merged with the others."""
    connections = _Connections(http_path, flows_path)
    writer = ZeekLogWriter(handle, "http", HTTP_LOG_FIELDS, span[0])
    rows = 0
    for batch in merge_row_groups(http_path, ("ts", "frame"), HTTP_LOG_COLUMNS):
        ends, depth = connections.of(batch)
        writer.write(http_log_fields(batch.to_pandas(), ends, depth, dns))
        rows += batch.num_rows
    writer.close(span[1])
    return rows


# ---- dns.log -------------------------------------------------------------------------------

def _dns_rows(rows: pa.Table) -> pa.Table:
    """The DNS messages that may be in a connection: a message is matched to one by both its
    ports, which a CSV export's DNS rows do not show (1.6M such rows at 50M packets were held
    and joined to find none)."""
    return rows.filter(pc.and_(pc.is_valid(rows.column("dns_query")), pc.and_(
        pc.is_valid(rows.column("src_port")), pc.is_valid(rows.column("dst_port")))))


def _endpoint_keys(address, port) -> pa.Array:
    return pc.binary_join_element_wise(pc.cast(address, pa.string()),
                                       pc.cast(port, pa.string()), "|")


def dns_messages(packets_path, flows_path) -> pd.DataFrame:
    """The packets with a DNS question, each with its connection (FLOW_COLUMNS) and whether
    the originator sent it; a message in no connection is left out."""
    parquet = pq.ParquetFile(packets_path)
    parts = list(derived_row_groups(parquet, DNS_PACKET_COLUMNS, non_empty_groups(parquet),
                                    _dns_rows))
    flows = pq.ParquetFile(flows_path)
    return _connected_messages(pa.concat_tables(parts) if parts else None, derived_row_groups(
        flows, FLOW_COLUMNS, non_empty_groups(flows)))


def _connected_messages(packets: pa.Table | None, flows: Iterable[pa.Table]) -> pd.DataFrame:
    """`dns_messages` of the DNS rows `packets`, among the flows (FLOW_COLUMNS tables)."""
    if packets is None or not packets.num_rows:
        return pd.DataFrame(columns=[*DNS_PACKET_COLUMNS, *FLOW_COLUMNS, "from_orig"])
    src = _endpoint_keys(packets.column("src"), packets.column("src_port"))
    dst = _endpoint_keys(packets.column("dst"), packets.column("dst_port"))
    ends = pa.concat_arrays([src.combine_chunks(), dst.combine_chunks()]).unique()
    flows = _kept_flows(flows, lambda rows: pc.is_in(
        _endpoint_keys(rows.column("orig"), rows.column("orig_port")), ends),
                        FLOW_COLUMNS).to_pandas()
    frame = packets.to_pandas().assign(src_key=src.to_pylist(), dst_key=dst.to_pylist())
    frame["src"], frame["dst"] = frame["src"].astype("object"), frame["dst"].astype("object")
    flows = flows.assign(orig_key=[f"{a}|{p}" for a, p in zip(flows["orig"], flows["orig_port"])],
                         resp_key=[f"{a}|{p}" for a, p in zip(flows["resp"],
                                                                 flows["resp_port"])])
    sent = frame.merge(flows, left_on=["src_key", "dst_key"], right_on=["orig_key", "resp_key"])
    answered = frame.merge(flows, left_on=["dst_key", "src_key"],
                           right_on=["orig_key", "resp_key"])
    both = pd.concat([sent.assign(from_orig=True), answered.assign(from_orig=False)],
                     ignore_index=True)
    both = both[(both["first_ts"] <= both["ts"]) & (both["ts"] <= both["last_ts"])]
    # a port pair reused: the connection that started last before the packet
    both = both.sort_values(["frame", "first_ts"]).drop_duplicates("frame", keep="last")
    return both[[*DNS_PACKET_COLUMNS, *FLOW_COLUMNS, "from_orig"]].sort_values(
        ["ts", "frame"], kind="stable").reset_index(drop=True)


def zeek_qtype_names(qtypes: pd.Series) -> pd.Series:
    """Zeek's names of DNS type numbers (null stays null)."""
    return qtypes.map(lambda n: ZEEK_QUERY_TYPES.get(n, f"query-{n}"), na_action="ignore")


def _info(messages: pd.DataFrame) -> pd.DataFrame:
    """What dns.log takes of each message: its id and question type from the capture's
    columns, else from Wireshark's Info, and the rest of Info (columns of DNS_INFO; null for
    none)."""
    parsed = messages["info"].fillna("").str.extract(DNS_INFO)
    parsed["trans_id"] = messages["dns_id"].astype("Int64").fillna(
        parsed["id"].map(lambda h: int(h, 16), na_action="ignore").astype("Int64"))
    parsed["qtype"] = messages["dns_qtype"].astype("Int64").fillna(
        parsed["qtype"].map(WIRESHARK_QTYPES).astype("Int64"))
    parsed["qtype_name"] = zeek_qtype_names(parsed["qtype"])
    parsed["rcode_name"] = parsed["error"].map(WIRESHARK_RCODES).where(
        parsed["error"].notna(), np.where(parsed["response"].notna(), "NOERROR", None))
    parsed["answers"] = [",".join(rec) if name == "NOERROR" and rec else None
                         for name, rec in zip(parsed["rcode_name"],
                                              parsed["records"].fillna("").str.findall(
                                                  DNS_RECORD))]
    return parsed


def dns_transactions(messages: pd.DataFrame) -> pd.DataFrame:
    """One row a transaction: each query with the response that answers it (suffix _r),
    responses without a query and queries without a response alone."""
    messages = pd.concat([messages, _info(messages)], axis=1)
    key = messages["uid"] + "|" + messages["trans_id"].astype("Int64").astype("string").fillna("")
    messages = messages.assign(key=key, nth=messages.groupby([key, messages["from_orig"]])
                               .cumcount())
    queries = messages[messages["from_orig"]]
    responses = messages[~messages["from_orig"]]
    pairs = queries.merge(responses, on=["key", "nth"], how="outer", suffixes=("", "_r"))
    pairs["answered"] = pairs["frame"].notna() & pairs["frame_r"].notna()
    for column in [*FLOW_COLUMNS, "ts", "frame", "dns_query", "qtype", "qtype_name",
                   "trans_id"]:
        pairs[column] = pairs[column].where(pairs[column].notna(), pairs[f"{column}_r"])
    return pairs.sort_values(["ts", "frame"], kind="stable").reset_index(drop=True)


def dns_log_fields(transactions: pd.DataFrame, dns: dict[str, str]) -> list[pa.Array]:
    """dns.log's fields of `dns_transactions`."""
    t = transactions
    rtt = pc.if_else(pa.array(t["answered"], pa.bool_()),
                     pc.subtract(_ns(t["ts_r"]), _ns(t["ts"])), None)
    values = {"ts": time_text(_ns(t["ts"])), "uid": _strings(t["uid"]),
              "proto": _strings(t["proto"]),
              "trans_id": _counts(t["trans_id"]),
              "rtt": interval_text(rtt),
              "query": _strings(t["dns_query"]), "qtype_name": _strings(t["qtype_name"]),
              "qtype": _counts(t["qtype"]),
              "rcode_name": _strings(t["rcode_name_r"]),
              "rcode": _counts(t["rcode_name_r"].map(RCODES)),
              "answers": _strings(t["answers_r"]), **_ids(t, dns)}
    return _in_order(DNS_LOG_FIELDS, values, len(t))


def write_dns_log(handle, packets_path, flows_path, dns, span) -> int:
    """dns.log of the trace's DNS messages with ports (`dns_transactions`), in time order. Above
    DNS_PARTITION_MESSAGES of them the messages and the flows are split by address pair (a
    message's connection and its transaction's other half are between the same two hosts, as
    the connection stage splits packets), each part's transactions are made on its own and
    the parts are merged by time: memory is a part's, not the trace's."""
    writer = ZeekLogWriter(handle, "dns", DNS_LOG_FIELDS, span[0])
    rows = 0
    for fields in _dns_log_parts(packets_path, flows_path, dns):
        writer.write(fields)
        rows += len(fields[0])
    writer.close(span[1])
    return rows


def _dns_log_parts(packets_path, flows_path, dns) -> Iterator[list[pa.Array]]:
    """dns.log's fields, batch by batch in time order (see `write_dns_log`)."""
    count = _dns_message_count(packets_path)
    if not count:  # a CSV export's DNS rows have no ports: nothing more to read
        return
    parts = partition_count(count, DNS_PARTITION_MESSAGES)
    if parts == 1:
        messages = dns_messages(packets_path, flows_path)
        if len(messages):
            yield dns_log_fields(dns_transactions(messages), dns)
        return
    with tempfile.TemporaryDirectory(prefix=".dns-", dir=Path(flows_path).parent) as scratch:
        messages = split_by_pair(packets_path, DNS_PACKET_COLUMNS, parts,
                                 Path(scratch) / "messages", derive=_dns_rows)
        flows = split_by_pair(flows_path, FLOW_COLUMNS, parts, Path(scratch) / "flows",
                              pair=("orig", "resp"))
        paths = []
        for index, (rows, flow_rows) in enumerate(zip(messages.tables(), flows.tables())):
            connected = _connected_messages(rows, [flow_rows])
            if not len(connected):
                continue
            transactions = dns_transactions(connected)
            fields = dns_log_fields(transactions, dns)
            paths.append(Path(scratch) / f"log-{index:05d}.parquet")
            pq.write_table(pa.table({
                "ts": _ns(transactions["ts"]), "frame": transactions["frame"].astype(np.int64),
                **{str(number): field for number, field in enumerate(fields)}}), paths[-1],
                compression="lz4", row_group_size=MERGE_BATCH_ROWS)
        for batch in merge_sorted(paths, ("ts", "frame")):
            yield [batch.column(str(number)).combine_chunks()
                   for number in range(len(DNS_LOG_FIELDS))]


def _dns_message_count(packets_path) -> int:
    """DNS messages with both ports (`_dns_rows`), counted from three columns."""
    parquet = pq.ParquetFile(packets_path)
    return sum(rows.num_rows for rows in derived_row_groups(
        parquet, ["dns_query", "src_port", "dst_port"], non_empty_groups(parquet), _dns_rows))
