"""HTTP requests and Log4Shell (CVE-2021-44228) indicators in their URIs.

Log4j 2 resolves `${prefix:name}` lookups in logged text; `${jndi:ldap://host:port/x}` makes it
fetch and run code from `host`. Scanners hide the string from filters with lookups that resolve
to single letters. `deobfuscate` undoes them by rewriting text only; nothing is ever looked up,
resolved against the environment, fetched or evaluated:

- `${lower:x}` -> x lowercased, `${upper:x}` -> x uppercased;
- `${anything:-x}` -> x (a lookup with a default: `${::-x}`, `${env:NAME:-x}`, `${sys:k:-x}`);
- `${date:'x'}` -> x (a quoted literal in a date pattern);
- URL encoding (`%24%7B` is `${`), possibly several layers;
innermost lookups first, repeated to a fixed point (at most `max_rounds` times). Lookups it
cannot undo (such as `${env:USER}`, which exfiltrates a value) stay as written. In the result,
`${jndi:SCHEME://HOST:PORT/...}` (case-insensitive, as Log4j's lookup prefixes are) is the
indicator; its scheme and callback host:port are reported.

A Wireshark CSV export shows only the request line, so lookups hidden in headers (User-Agent,
X-Api-Version, ...) are invisible there; a capture would show more. A capture cut by its snap
length may end inside the request line (no HTTP version after the URI): such URIs are marked
`uri_truncated`, and a callback host or port that runs into the cut is not reported.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow

from tracelab.core.packets import DICT_STRING, TIMESTAMP

KNOWN_SCHEMES = ("ldap", "ldaps", "rmi", "dns", "iiop", "corba", "nds", "nis", "http", "https")
# Longest text examined; request lines are far shorter, and it bounds the work per URI.
MAX_URI_CHARS = 65536

# A lookup with no lookup inside it: `${` then anything but `${` or `}`, then `}`.
INNERMOST_LOOKUP = re.compile(r"\$\{((?:(?!\$\{)[^}])*)\}")
QUOTED_DATE = re.compile(r"^'([^']*)'$")
JNDI = re.compile(
    r"\$\{jndi:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):(?://)?"
    r"(?P<host>\[[^\]\s/}]*\]|[^/:}?#\s$]*)(?::(?P<port>\d{1,5}))?"
    r"(?P<rest>(?:\$\{[^{}\s]*\}|[^{}\s])*)\}?",
    re.IGNORECASE)
PERCENT_ESCAPE = r"%[0-9A-Fa-f]{2}"

HTTP_SCHEMA = pa_arrow.schema([
    ("frame", pa_arrow.int64()),
    ("ts", TIMESTAMP),
    ("uid", pa_arrow.int64()),
    ("src", DICT_STRING),
    ("dst", DICT_STRING),
    ("method", DICT_STRING),
    ("uri", pa_arrow.string()),
    ("uri_length", pa_arrow.int64()),
    ("uri_truncated", pa_arrow.bool_()),
    ("percent_encoded_share", pa_arrow.float64()),
    ("status", pa_arrow.int16()),
    ("lookups", pa_arrow.int64()),
    ("jndi", pa_arrow.bool_()),
    ("jndi_obfuscated", pa_arrow.bool_()),
    ("jndi_scheme", DICT_STRING),
    ("jndi_host", pa_arrow.string()),
    ("jndi_port", pa_arrow.int32()),
    ("jndi_lookup", pa_arrow.string()),
])


class HttpModel(pa.DataFrameModel):
    """Checks on http.parquet before it is written."""

    frame: pd.Int64Dtype = pa.Field(gt=0, unique=True)
    uri_length: pd.Int64Dtype = pa.Field(ge=0)
    percent_encoded_share: float = pa.Field(ge=0, le=1)
    status: pd.Int16Dtype = pa.Field(ge=100, le=999, nullable=True)
    jndi: bool
    jndi_port: pd.Int32Dtype = pa.Field(ge=0, le=65535, nullable=True)

    class Config:
        strict = False
        coerce = False


def _undo_lookup(match: re.Match) -> str:
    body = match.group(1)
    prefix, colon, rest = body.partition(":")
    prefix = prefix.lower()
    if prefix == "jndi" and colon:
        return match.group(0)
    if prefix == "lower" and colon:
        return rest.lower()
    if prefix == "upper" and colon:
        return rest.upper()
    if ":-" in body:
        return body.split(":-", 1)[1]
    if prefix == "date" and colon and (literal := QUOTED_DATE.match(rest)):
        return literal.group(1)
    return match.group(0)


def deobfuscate(text: str, max_rounds: int = 16) -> str:
    """`text` with URL encoding and letter-hiding lookups undone (see the module docstring)."""
    text = text[:MAX_URI_CHARS]
    for _ in range(max_rounds):
        rewritten = INNERMOST_LOOKUP.sub(_undo_lookup, unquote(text))
        if rewritten == text:
            break
        text = rewritten
    return text


def jndi_indicator(text: str, truncated: bool = False) -> dict:
    """The first JNDI lookup in `text` after deobfuscation, or jndi=False.

    `truncated`: the text was cut short (snap length); a host or port reaching the cut may be
    incomplete, so it is left out.
    """
    plain = deobfuscate(text)
    found = JNDI.search(plain)
    if found is None:
        return {"jndi": False, "jndi_obfuscated": False, "jndi_scheme": None, "jndi_host": None,
                "jndi_port": None, "jndi_lookup": None}
    host, port = found.group("host") or None, found.group("port")
    if truncated and found.end() == len(plain) and not found.group("rest") \
            and not found.group(0).endswith("}"):
        if port:
            port = None
        else:
            host = None
    return {
        "jndi": True,
        "jndi_obfuscated": JNDI.search(text[:MAX_URI_CHARS]) is None,
        "jndi_scheme": found.group("scheme").lower(),
        "jndi_host": host,
        "jndi_port": int(port) if port and int(port) <= 65535 else None,
        "jndi_lookup": found.group(0),
    }


def uri_indicators(uris: pd.Series, truncated: pd.Series | None = None) -> pd.DataFrame:
    """Shape and Log4Shell columns for each URI (index kept); `truncated` marks cut URIs.

    The shape columns are vectorised; the deobfuscation runs once per distinct URI that could
    hide a lookup (one containing `$` or `%`).
    """
    text = uris.astype("string").fillna("")
    truncated = pd.Series(False, index=uris.index) if truncated is None else \
        truncated.astype(bool)
    length = text.str.len()
    escapes = text.str.count(PERCENT_ESCAPE)
    result = pd.DataFrame({
        "uri_length": length.astype("Int64"),
        "uri_truncated": truncated.to_numpy(),
        "percent_encoded_share": (3 * escapes / length.where(length > 0)).fillna(0.0)
        .clip(upper=1.0).astype(np.float64),
        "lookups": text.str.count(r"\$\{|%24%7[Bb]").astype("Int64"),
    }, index=uris.index)
    keys = pd.MultiIndex.from_arrays([text.to_numpy(), truncated.to_numpy()])
    may_hide = text.str.contains(r"[$%]", regex=True).to_numpy()
    suspects = keys[may_hide].unique()
    found = pd.DataFrame([jndi_indicator(uri, cut) for uri, cut in suspects], index=suspects,
                         columns=["jndi", "jndi_obfuscated", "jndi_scheme", "jndi_host",
                                  "jndi_port", "jndi_lookup"])
    per_uri = found.reindex(keys)
    per_uri.index = uris.index
    result["jndi"] = per_uri["jndi"].fillna(False).astype(bool)
    result["jndi_obfuscated"] = per_uri["jndi_obfuscated"].fillna(False).astype(bool)
    for column in ("jndi_scheme", "jndi_host", "jndi_lookup"):
        result[column] = per_uri[column].astype("string")
    result["jndi_port"] = pd.array(per_uri["jndi_port"], dtype="Int32")
    return result


def http_requests(packets: pd.DataFrame, packet_uid: np.ndarray) -> pd.DataFrame:
    """One row an HTTP request, with its connection's uid and the status of its response.

    Within a connection the n-th response answers the n-th request (HTTP/1.1 keeps order).
    A request line without an HTTP version was cut short by the capture's snap length.
    """
    packets = packets.assign(uid=packet_uid)
    is_request = packets["http_method"].notna()
    requests = packets[is_request].sort_values(["ts", "frame"], kind="stable")
    responses = packets[packets["http_status"].notna() & (packets["uid"] >= 0)].sort_values(
        ["ts", "frame"], kind="stable")
    requests = requests.assign(nth=requests.groupby("uid").cumcount())
    responses = responses.assign(nth=responses.groupby("uid").cumcount())
    status = responses.set_index(["uid", "nth"])["http_status"]
    where = pd.MultiIndex.from_arrays([requests["uid"], requests["nth"]])
    matched = status.reindex(where).to_numpy()
    answered = requests["uid"].to_numpy() >= 0
    table = pd.DataFrame({
        "frame": requests["frame"].astype("Int64").to_numpy(),
        "ts": requests["ts"].to_numpy(),
        "uid": pd.array(np.where(answered, requests["uid"], pd.NA), dtype="Int64"),
        "src": requests["src"].astype("string").to_numpy(),
        "dst": requests["dst"].astype("string").to_numpy(),
        "method": requests["http_method"].astype("string").to_numpy(),
        "uri": requests["http_uri"].astype("string").to_numpy(),
        "status": pd.array(np.where(answered, matched, np.nan), dtype="Float64").round()
        .astype("Int16"),
    })
    table["ts"] = pd.to_datetime(table["ts"], utc=True)
    indicators = uri_indicators(table["uri"],
                                pd.Series(requests["http_version"].isna().to_numpy()))
    return pd.concat([table, indicators], axis=1)[HTTP_SCHEMA.names]


def http_to_table(http: pd.DataFrame) -> pa_arrow.Table:
    return pa_arrow.Table.from_pandas(http, preserve_index=False).cast(HTTP_SCHEMA)
