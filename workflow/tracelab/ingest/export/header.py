"""The header line of a Wireshark CSV export: its delimiter, its columns (in any of their
spellings) and what is wrong with it."""

from __future__ import annotations

import csv
from pathlib import Path

from tracelab.ingest.export.source import read_head
from tracelab.ingest.outcome import ValidationOutcome

RAW_COLUMNS = ["No.", "Time", "Source", "Destination", "Protocol", "Length", "Info"]

# Other spellings of the seven headers: tshark field names and localized GUI titles.
HEADER_ALIASES = {
    "No.": ["_ws.col.No.", "_ws.col.number", "frame.number", "Nr.", "N°", "Nº", "No", "Número"],
    "Time": ["_ws.col.Time", "_ws.col.def_time", "frame.time", "Zeit", "Temps", "Tiempo", "Tempo",
             "Время"],
    "Source": ["_ws.col.Source", "_ws.col.def_src", "Quelle", "Origen", "Origem", "Sorgente",
               "Источник"],
    "Destination": ["_ws.col.Destination", "_ws.col.def_dst", "Ziel", "Destino", "Destinazione",
                    "Назначение"],
    "Protocol": ["_ws.col.Protocol", "_ws.col.protocol", "Protokoll", "Protocole", "Protocolo",
                 "Protocollo", "Протокол"],
    "Length": ["_ws.col.Length", "_ws.col.packet_length", "frame.len", "Länge", "Longueur",
               "Longitud", "Comprimento", "Lunghezza", "Длина"],
    "Info": ["_ws.col.Info", "_ws.col.info", "Información", "Informação", "Информация"],
}
CANONICAL_HEADER = {alias.casefold(): name for name, aliases in HEADER_ALIASES.items()
                    for alias in [name, *aliases]}
# A first line with fewer of the seven columns than this is not taken for an export's header,
# and is never quoted back (the sheet may point at any file).
HEADER_MIN_KNOWN = 4
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class Header:
    """The first line of the export: delimiter, column order, extras."""

    def __init__(self, first_line: str):
        # A lone CR ends the header line in an export written with old Mac line ends.
        self.cr_line_ends = first_line.endswith("\r")
        # The file is this one line and nothing after it.
        self.alone = not first_line.endswith(("\r", "\n"))
        text = first_line.lstrip("\ufeff").rstrip("\r\n")
        counts = {d: text.count(d) for d in (",", ";", "\t")}
        self.delimiter = max(counts, key=counts.get)
        self.names = next(csv.reader([text], delimiter=self.delimiter), [])
        self.canonical = [CANONICAL_HEADER.get(n.strip().casefold(), n.strip())
                          for n in self.names]
        self.missing = [c for c in RAW_COLUMNS if c not in self.canonical]
        self.extra = [n for n, c in zip(self.names, self.canonical) if c not in RAW_COLUMNS]
        self.duplicated = sorted({c for c in self.canonical if self.canonical.count(c) > 1})
        self.quoted = '"' in text

    def problem(self) -> tuple[str, str] | None:
        """What is wrong with the header, and the field(s) to name; None when it is usable."""
        known = len(RAW_COLUMNS) - len(self.missing)
        if known < HEADER_MIN_KNOWN:
            detail = (f"the first line is not a CSV header with the expected columns ({known} "
                      f"of {RAW_COLUMNS} found; tshark field names like _ws.col.No. and "
                      f"localized titles are accepted): is the sheet's path a Wireshark CSV "
                      f"export?")
            return detail, None
        if not (self.missing or self.duplicated):
            return None
        problem = (f"missing column(s) {self.missing}" if self.missing
                   else f"duplicated column(s) {self.duplicated}")
        detail = (f"{problem}; found {self.names}; expected {RAW_COLUMNS} (tshark field names "
                  f"like _ws.col.No. and localized titles are accepted)")
        return detail, ", ".join(self.missing or self.duplicated)


def read_header(source: Path, report: ValidationOutcome) -> Header | None:
    """The export's header line; None (with the structural error reported) when there is no
    usable one."""
    try:
        first_line, head, damage = read_head(source)
    except OSError as error:
        report.structural("readable", f"cannot read the file: {error}")
        return None
    if damage and not first_line.endswith((b"\r", b"\n")):
        report.structural("readable", f"cannot read the file: {damage}", row=1)
        return None
    if not head:
        report.structural("header", "the file is empty: no header line", row=1)
        return None
    if head.startswith(UTF16_BOMS) or b"\x00" in first_line or \
            (not first_line.strip() and b"\x00" in head):
        report.structural("encoding", "the file starts with NUL bytes: UTF-16 text (as "
                          "PowerShell's '>' writes it) or not text at all (a pcap/pcapng capture "
                          "needs format pcap or pcapng); save the export as UTF-8 CSV", row=1)
        return None
    if not first_line.strip():
        report.structural("header", "line 1 is blank: expected the header line "
                          f"({', '.join(RAW_COLUMNS)})", row=1)
        return None
    header = Header(first_line.decode("utf-8", errors="replace"))
    problem = header.problem()
    if problem is not None:
        detail, fields = problem
        where = {"row": 1} if fields is None else {"row": 1, "field": fields}
        report.structural("columns", detail, **where)
        return None
    return header
