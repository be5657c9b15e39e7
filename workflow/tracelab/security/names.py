"""Host names and addresses: the address a trace itself gives for a name.

A Wireshark export with name resolution on shows names where the packets carried addresses. The
trace often still tells the address: a DNS answer in it (Wireshark's Info of a response), or the
address written in the name, in reverse-DNS order with dots (`47.1.18.198.host.example` is
198.18.1.47, as in-addr.arpa names and many hosting providers' names are) or in order with
dashes (`ip-198-18-1-47.example`). Nothing is ever looked up.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracelab.core.streaming import derived_row_groups, non_empty_groups

IPV4 = r"(?P<a>\d{1,3})\.(?P<b>\d{1,3})\.(?P<c>\d{1,3})\.(?P<d>\d{1,3})"
# A name that starts with the four octets of an address in reverse order, as reverse-DNS
# (in-addr.arpa) names and the names of many hosting providers do: 47.1.18.198.host.example.
REVERSED_ADDRESS_NAME = r"^(?P<d>\d{1,3})\.(?P<c>\d{1,3})\.(?P<b>\d{1,3})\.(?P<a>\d{1,3})\.[A-Za-z]"
# A name that holds an address with dashes, in order: ip-198-18-1-47.example, 198-18-1-47.x.
DASHED_ADDRESS_NAME = (r"(?:^|[^0-9])(?P<a>\d{1,3})-(?P<b>\d{1,3})-(?P<c>\d{1,3})-(?P<d>\d{1,3})"
                       r"(?:[^0-9]|$)")
# Wireshark's Info of a DNS answer: the query name, CNAMEs, then the first A/AAAA address.
DNS_ANSWER = (r"^Standard query response 0x[0-9a-fA-F]{1,4} (?:A|AAAA) (?P<name>[^\s,]+)"
              r"(?: CNAME [^\s,]+)* (?:A|AAAA) (?P<address>[0-9A-Fa-f:.]+)")
ADDRESS = rf"^(?:{IPV4}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*)$"
DNS_COLUMNS = ["protocol", "info"]


def _octets(match: pa.StructArray) -> pa.Array:
    """The dotted address of a match's octet groups a-d; null where the regex did not match or
    an octet is above 255."""
    numbers = [pc.cast(pc.struct_field(match, letter), pa.int32()) for letter in "abcd"]
    valid = pc.and_kleene(pc.and_kleene(pc.less_equal(numbers[0], 255),
                                        pc.less_equal(numbers[1], 255)),
                          pc.and_kleene(pc.less_equal(numbers[2], 255),
                                        pc.less_equal(numbers[3], 255)))
    dotted = pc.binary_join_element_wise(*[pc.cast(n, pa.string()) for n in numbers], ".")
    return pc.if_else(pc.fill_null(valid, False), dotted, None)


def names_from_dns(info: pa.Array) -> dict[str, str]:
    """name -> address, from DNS answers (Wireshark's Info of a response)."""
    answers = pc.extract_regex(pc.fill_null(info, ""), DNS_ANSWER)
    answers = answers.filter(pc.is_valid(answers))
    return dict(zip(pc.struct_field(answers, "name").to_pylist(),
                    pc.struct_field(answers, "address").to_pylist()))


def address_of_name(names: pa.Array, dns: dict[str, str]) -> pa.Array:
    """The address a name stands for, from the trace itself: its DNS answers, or an address
    written in the name (reverse-DNS order with dots, or in order with dashes); null if none."""
    from_dns = pa.array([dns.get(name) for name in names.to_pylist()], pa.string())
    reversed_order = _octets(pc.extract_regex(names, REVERSED_ADDRESS_NAME))
    dashed = _octets(pc.extract_regex(names, DASHED_ADDRESS_NAME))
    return pc.coalesce(from_dns, reversed_order, dashed)


def is_address(values: pa.Array) -> pa.Array:
    """Whether each value is an address literal (IPv4 dotted, or IPv6 with colons)."""
    return pc.fill_null(pc.match_substring_regex(values, ADDRESS), False)


def address_of_endpoint(endpoints: pa.Array, dns: dict[str, str]) -> pa.Array:
    """The address of each endpoint as a trace shows it: the endpoint itself where it is an
    address, else the address the trace gives for the name (`address_of_name`); null if none."""
    endpoints = pc.cast(endpoints, pa.string())
    literal = is_address(endpoints)
    named = address_of_name(pc.if_else(literal, None, endpoints), dns)
    return pc.if_else(literal, endpoints, named)


def _dns_rows(rows: pa.Table) -> pa.Table:
    return rows.filter(pc.fill_null(pc.equal(rows.column("protocol").cast(pa.string()), "DNS"),
                                    False))


def trace_dns_answers(packets_path) -> dict[str, str]:
    """name -> address from every DNS answer of a packet table (Info of Wireshark exports;
    captures have none and show addresses anyway), read row group by row group."""
    parquet = pq.ParquetFile(packets_path)
    answers: dict[str, str] = {}
    for rows in derived_row_groups(parquet, DNS_COLUMNS, non_empty_groups(parquet), _dns_rows):
        answers.update(names_from_dns(rows.column("info").combine_chunks()))
    return answers
