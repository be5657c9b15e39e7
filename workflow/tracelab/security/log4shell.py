"""Log4Shell (CVE-2021-44228) indicators in request URIs (the HTTP table: security/http.py).

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
