"""HTTP requests: one row a request line, with its connection, its response's status, and the
shape and Log4Shell indicators of its URI (`tracelab.security.log4shell`).

`results/features/{trace}/http.parquet` is declared by HTTP.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from pandera.pandas import Check

from tracelab.core.packets import PORT_CHECK
from tracelab.core.tables import DICT_STRING, TIMESTAMP, Column, Table
from tracelab.security.flow_arrays import occurrence
from tracelab.security.log4shell import uri_indicators

HTTP = Table("http", "results/features/{trace}/http.parquet", (
    "One row an HTTP request line (a Wireshark CSV export shows request lines only, not "
    "headers), in order of time within each partition of the connection stage. Log4Shell "
    "columns come from the URI after undoing obfuscation; nothing is ever looked up."), [
    Column("trace", DICT_STRING, "Trace name, as in the trace sheet."),
    Column("frame", pa.int64(), "Frame number of the request.", unique=True,
           checks=[Check.gt(0)]),
    Column("ts", TIMESTAMP, "When the request was captured.", unit="ns"),
    Column("uid", pa.string(), "Connection of the request (`flows.uid`); null when it joined "
           "no connection.", nullable=True),
    Column("src", DICT_STRING, "Client address."),
    Column("dst", DICT_STRING, "Server address."),
    Column("method", DICT_STRING, "Request method (GET, POST, ...)."),
    Column("uri", pa.string(), "Request URI as captured (a prefix where the snap length cut "
           "it).", nullable=True),
    Column("uri_length", pa.int64(), "Characters in the URI.", unit="characters",
           checks=[Check.ge(0)]),
    Column("uri_truncated", pa.bool_(), "The request line ends without an HTTP version: the "
           "capture's snap length cut it."),
    Column("percent_encoded_share", pa.float64(), "Share of the URI's characters in `%XX` "
           "escapes.", checks=[Check.in_range(0, 1)]),
    Column("status", pa.int16(), "Status of the response (the n-th response of a connection "
           "answers its n-th request); null when none was seen.", nullable=True,
           checks=[Check.in_range(100, 999)]),
    Column("lookups", pa.int64(), "`${` lookups in the URI (plain or URL-encoded).",
           checks=[Check.ge(0)]),
    Column("jndi", pa.bool_(), "A `${jndi:...}` lookup remains after deobfuscation."),
    Column("jndi_obfuscated", pa.bool_(), "...and it was hidden in the URI as sent."),
    Column("jndi_scheme", DICT_STRING, "Scheme of the JNDI lookup (ldap, rmi, dns, ...).",
           nullable=True),
    Column("jndi_host", pa.string(), "Callback host of the JNDI lookup; `*.zone` when the "
           "host is built around a lookup whose value is unknown here; none for `java:` names "
           "and URLs without slashes.", nullable=True),
    Column("jndi_host_unresolved", pa.bool_(), "The callback host contains lookups whose "
           "value is unknown here (`${env:X}.attacker.tld`)."),
    Column("jndi_port", pa.int32(), "Callback port of the JNDI lookup.", nullable=True,
           checks=[PORT_CHECK]),
    Column("jndi_lookup", pa.string(), "The JNDI lookup as deobfuscated.", nullable=True),
])

# Packet columns the HTTP table is made of; a packet is an HTTP row when one of the last two
# is set.
PACKET_COLUMNS = ["frame", "ts", "src", "dst", "http_method", "http_uri", "http_version",
                  "http_status"]


def http_requests(packets: pd.DataFrame, packet_uid: np.ndarray, trace: str) -> pd.DataFrame:
    """One row an HTTP request, with its connection's uid and the status of its response.

    `packets` (any rows of a packet table, at least the HTTP ones) and `packet_uid` (each
    row's connection uid, None outside connections) are aligned. Within a connection the n-th
    response answers the n-th request (HTTP/1.1 keeps order). A request line without an HTTP
    version was cut short by the capture's snap length.
    """
    packet_uid = np.asarray(packet_uid, dtype=object)
    connection = pd.factorize(packet_uid)[0]  # -1: none
    ts = pd.to_datetime(packets["ts"], utc=True).array
    chrono = np.lexsort((packets["frame"].to_numpy(np.int64), ts.asi8))  # time, frame, row
    request = chrono[packets["http_method"].notna().to_numpy(bool)[chrono]]
    response = chrono[(packets["http_status"].notna().to_numpy(bool)
                       & (connection >= 0))[chrono]]
    # A request's response: the one of its connection with as many before it.
    places = len(connection) + 1
    responses = pd.Index(connection[response] * places + occurrence(connection[response]))
    answer = responses.get_indexer(connection[request] * places + occurrence(connection[request]))
    answered = (answer >= 0) & (connection[request] >= 0)
    status = np.full(len(request), np.nan)
    status[answered] = packets["http_status"].to_numpy(np.float64, na_value=np.nan)[
        response[answer[answered]]]
    requests = packets.iloc[request]
    table = pd.DataFrame({
        "trace": trace,
        "frame": requests["frame"].to_numpy(np.int64),
        "ts": ts[request],
        "uid": pd.array(packet_uid[request], dtype="string"),
        "src": requests["src"].astype("string").to_numpy(),
        "dst": requests["dst"].astype("string").to_numpy(),
        "method": requests["http_method"].astype("string").to_numpy(),
        "uri": requests["http_uri"].astype("string").to_numpy(),
        "status": pd.array(status, dtype="Float64").round().astype("Int16"),
    })
    indicators = uri_indicators(table["uri"],
                                pd.Series(requests["http_version"].isna().to_numpy()))
    return pd.concat([table, indicators], axis=1)[HTTP.names]

