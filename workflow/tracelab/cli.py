"""The `tracelab` command (also `python -m tracelab`).

    tracelab inspect FILE              summary of one trace file, without Snakemake
    tracelab add FILE [--name N] ...   append a checked row to the trace sheet
    tracelab run [snakemake options]   run the pipeline (all cores unless told otherwise)
    tracelab report                    build results/report.html
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from tracelab.core.atomic import atomic_path, is_disk_full, unwritten_path
from tracelab.core.config import ConfigError, check_config
from tracelab.core.errors import TraceInputError
from tracelab.ingest.capture.link import WIRESHARK_ENCAPSULATIONS
from tracelab.ingest.formats import content_format, shown_as_text, trace_name_for
from tracelab.ingest.sheet import COLUMNS, TraceSheetError, check_sheet, read_sheet

CONFIG_FILE = Path("config/config.yaml")
REPORT = "results/report.html"
CORES_OPTIONS = ("-c", "--cores", "-j", "--jobs")
# The commands that hand their other options to snakemake.
PASSES_OPTIONS = ("run", "report")


class UsageError(Exception):
    """A mistake in how the command was called, or where: one line for the user."""


def repository_root(start: Path) -> Path:
    """The tracelab checkout holding `start`: the nearest folder with a Snakefile and a
    config/config.yaml."""
    for folder in [start, *start.parents]:
        if (folder / "Snakefile").is_file() and (folder / CONFIG_FILE).is_file():
            return folder
    raise UsageError(f"{start} is not inside a tracelab checkout (no folder with a Snakefile "
                     f"and {CONFIG_FILE}); run this command there")


# --- inspect --------------------------------------------------------------------------------

def _number(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _validation_line(report: dict) -> str:
    line = f"{report['status']} ({_number(report['rows_valid'])} of " \
           f"{_number(report['rows_read'])} rows valid)"
    failed = {name: check["failures"] for name, check in report["checks"].items()
              if check["failures"]}
    if failed:
        line += "; set aside: " + ", ".join(f"{name} {count}" for name, count in failed.items())
    return line


def time_digits(resolution_ns: float) -> int:
    """Decimal places that show a clock of this resolution (capinfos' time precision)."""
    return max(0, min(9, math.ceil(9 - math.log10(resolution_ns) - 1e-9)))


def duration_text(first: str, last: str, digits: int) -> str:
    """The time between two timestamps exactly (integer ns), at `digits` decimal places."""
    ns = (pd.Timestamp(last) - pd.Timestamp(first)).value
    seconds, fraction = divmod(ns, 10**9)
    text = f"{seconds:,}"
    return f"{text}.{fraction // 10**(9 - digits):0{digits}d}" if digits else text


def capture_lines(capture: dict) -> list[tuple[str, str]]:
    """capinfos' lines about a capture's encapsulation, snap length and interfaces."""
    interfaces = capture["interfaces"]
    encapsulations = {WIRESHARK_ENCAPSULATIONS.get(i["linktype"], i["link"])
                      for i in interfaces}
    lines = [("File encapsulation",
              encapsulations.pop() if len(encapsulations) == 1 else "per-packet")]
    if capture["format"] == "pcap":  # pcapng has no file-wide snap length, only interfaces'
        lines.append(("Packet size limit", f"{interfaces[0]['snaplen']:,} bytes"))
    inferred = capture.get("snap_length_inferred")
    if inferred:
        lines += [("Packet size limit min (inferred)", f"{inferred['min']:,} bytes"),
                  ("Packet size limit max (inferred)", f"{inferred['max']:,} bytes")]
    counts = capture["packets_per_interface"]
    for number, interface in enumerate(interfaces):
        lines.append((f"Interface #{number}", ", ".join(filter(None, [
            interface.get("name", ""),
            WIRESHARK_ENCAPSULATIONS.get(interface["linktype"], interface["link"]),
            f"snap length {interface['snaplen']:,}",
            f"{time_digits(interface['timestamp_resolution_ns'])}-digit clock",
            f"{counts[number] if number < len(counts) else 0:,} packets"]))))
    return lines


def summary_lines(path: str, found: dict) -> list[tuple[str, str]]:
    """capinfos' fields (and tracelab's validation, addresses and protocol counts) as
    (name, value) pairs."""
    report, summary, file = found["validation"], found["summary"], found["file"]
    packets, data_bytes = summary["packets"], summary["bytes"]
    protocols = summary["protocol_counts"]
    capture = report.get("capture")
    digits = 9 if capture is None else max(
        time_digits(i["timestamp_resolution_ns"]) for i in capture["interfaces"])
    return [
        ("File name", path),
        ("File type", report["format"]),
        *(capture_lines(capture) if capture else []),
        ("Validation", _validation_line(report)),
        ("Number of packets", _number(packets)),
        *([("File size", f"{_number(file['size_bytes'])} bytes")] if file else []),
        ("Data size", f"{_number(data_bytes)} bytes"),
        ("Capture duration",
         f"{duration_text(summary['first_ts'], summary['last_ts'], digits)} seconds"),
        ("First packet time", str(summary["first_ts"])),
        ("Last packet time", str(summary["last_ts"])),
        ("Data byte rate", f"{summary['mean_bps'] / 8:,.2f} bytes/s"),
        ("Data bit rate", f"{summary['mean_bps']:,.2f} bits/s"),
        ("Average packet size", f"{summary['mean_length']:,.2f} bytes"),
        ("Average packet rate", f"{summary['mean_pps']:,.2f} packets/s"),
        *([("SHA256", file["sha256"])] if file else []),
        ("Strict time order", str(report["time_backwards"]["count"] == 0)),
        ("Distinct sources", _number(summary["unique_sources"])),
        ("Distinct destinations", _number(summary["unique_destinations"])),
        ("Protocols", ", ".join(f"{name} {_number(count)} ({count / packets:.1%})"
                                for name, count in protocols.items()) or "none"),
    ]


def terminal_text(text: str) -> str:
    """`text` with every character that is not printable (escape sequences, bell, line breaks,
    bidi overrides) quoted as repr quotes it, so a trace's strings cannot drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _fraction(text: str) -> float:
    """An --max-invalid-fraction value: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 1")
    return value


def command_inspect(args) -> int:
    # Imported here: the stages' modules (scipy among them) cost 0.5 s that `add`, `run` and
    # `report` do not need.
    from tracelab.api import inspect

    found = inspect(args.file, timezone=args.timezone,
                    max_invalid_fraction=args.max_invalid_fraction)
    if args.json:  # JSON escapes control characters itself
        print(json.dumps(found, indent=2, default=str))
        return 0
    lines = summary_lines(args.file, found)
    width = max(len(name) for name, _ in lines) + 1
    for name, value in lines:
        print(f"{name + ':':<{width}} {terminal_text(value)}")
    return 0


# --- add ------------------------------------------------------------------------------------

def _sheet_path(root: Path, given: str | None) -> Path:
    if given:
        return Path(given).resolve()
    config_file = root / CONFIG_FILE
    config = check_config(yaml.safe_load(config_file.read_text(encoding="utf-8")) or {},
                          source=str(config_file))
    return root / config["traces"]


def _stored_path(file: Path, root: Path) -> str:
    """The path as the sheet keeps it: relative to the checkout when inside it."""
    return str(file.relative_to(root)) if file.is_relative_to(root) else str(file)


def new_row(args, root: Path, sheet: pd.DataFrame) -> dict:
    """The sheet row for `args.file`, refusing a name or file the sheet already lists."""
    file = Path(args.file).resolve()
    if not file.is_file():
        raise UsageError(f"{args.file}: no such file")
    source_format = content_format(file)
    if source_format is None:
        raise UsageError(
            f"{args.file}: not a trace file: its first bytes show none of {shown_as_text()} "
            f"(gzip-compressed or not); `tracelab inspect {args.file}` says more")
    name = args.name or trace_name_for(file)
    for existing in sheet.to_dict("records"):
        if existing["trace"] == name:
            raise UsageError(f"trace {name!r} is already in the sheet (line {existing['line']}); "
                             f"choose another name with --name")
        listed = Path(existing["path"])
        if (listed if listed.is_absolute() else root / listed).resolve() == file:
            raise UsageError(f"{args.file} is already in the sheet as trace "
                             f"{existing['trace']!r} (line {existing['line']})")
    row = {"trace": name, "path": _stored_path(file, root), "format": source_format,
           "label": args.label or "", "timezone": args.timezone, "description": args.description}
    for column, value in row.items():
        if "\t" in value or "\n" in value or "\r" in value:
            raise UsageError(f"--{column}: the sheet is tab-separated, so no tabs or line breaks")
    return row


def command_add(args) -> int:
    root = repository_root(Path.cwd())
    sheet_path = _sheet_path(root, args.sheet)
    sheet = read_sheet(sheet_path)
    row = new_row(args, root, sheet)
    text = sheet_path.read_text(encoding="utf-8")
    text += "" if text.endswith("\n") else "\n"
    header = sheet.attrs["header"]
    kept = {column: row[column] if column in header else "" for column in COLUMNS}
    line = text.count("\n") + 1
    checked = check_sheet(pd.concat([sheet, pd.DataFrame([{**kept, "line": line}])]),
                          f"trace sheet {sheet_path}", root)
    # Written as checked: with the format, label and time zone the sheet would default to.
    added = {**checked.loc[row["trace"]].to_dict(), "path": row["path"]}
    with atomic_path(sheet_path) as tmp:
        tmp.write_text(text + "\t".join(added[column] for column in header) + "\n",
                       encoding="utf-8")
    print(f"added trace {added['trace']!r} ({added['format']}, label {added['label']!r}) to "
          f"{sheet_path}, line {line}")
    return 0


# --- run, report ----------------------------------------------------------------------------

def snakemake(root: Path, options: list[str]) -> int:
    return subprocess.call([sys.executable, "-m", "snakemake", *options], cwd=root)


def check_snakemake_options(options: list[str]) -> None:
    """Raise UsageError, in one line, for an option snakemake would refuse (it would print its
    whole usage, some hundred lines, before saying which)."""
    from snakemake.cli import get_argument_parser  # heavy: only for the commands that need it

    def refuse(message: str):
        raise UsageError(f"snakemake option: {message}")

    snakemake_parser = get_argument_parser()
    snakemake_parser.error = refuse
    _, unknown = snakemake_parser.parse_known_args(options)
    if unknown:
        refuse(f"unrecognized arguments: {' '.join(unknown)} (see python -m snakemake --help)")


def command_run(args) -> int:
    options = list(args.options)
    if not any(option.split("=")[0] in CORES_OPTIONS or
               (option[:2] in ("-c", "-j") and option[2:].isdigit()) for option in options):
        options = ["--cores", "all", *options]
    return snakemake(repository_root(Path.cwd()), options)


def command_report(args) -> int:
    return snakemake(repository_root(Path.cwd()), ["--report", REPORT, *args.options])


# --- parsing --------------------------------------------------------------------------------

def inspect_arguments(inspect_: argparse.ArgumentParser) -> None:
    inspect_.add_argument("file", help="a Wireshark CSV export, pcap or pcapng (or .gz)")
    inspect_.add_argument("--timezone", default="UTC",
                          help="IANA zone of a CSV export's local clock (default UTC)")
    inspect_.add_argument("--json", action="store_true",
                          help="print the validation report, the summary and the file's size "
                          "and SHA-256 as JSON; an error too, as {\"error\": ...}, exit 1")
    inspect_.add_argument("--max-invalid-fraction", type=_fraction, default=None,
                          metavar="F", help="the share of rows that may be invalid before the "
                          "trace is refused, 0..1 (default: config's validation section)")
    inspect_.set_defaults(handler=command_inspect)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="tracelab", description="Packet traces to validated tables, security features "
        "and comparisons.")
    main.add_argument("--version", action="version",
                      version=f"%(prog)s {importlib.metadata.version('tracelab')}")
    commands = main.add_subparsers(dest="command", required=True)

    inspect_ = commands.add_parser(
        "inspect", help="summarize one trace file (CSV export or capture), without Snakemake",
        description="Validate and normalize one trace file in a temporary folder and print a "
        "capinfos-like summary: packets, times, sizes, rates, protocols, validation result.")
    inspect_arguments(inspect_)

    add = commands.add_parser(
        "add", help="append a trace file to the trace sheet",
        description="Append a row for FILE to the trace sheet, its format read from the file's "
        "first bytes; the row is checked as the workflow checks it before it is written.")
    add.add_argument("file", help="the trace file: a Wireshark CSV export, pcap or pcapng "
                     "(or .gz); its format is read from its first bytes")
    add.add_argument("--name", help="trace name (default: from the file name)")
    add.add_argument("--label", help="short class name such as scan or normal "
                                     "(default: the trace name)")
    add.add_argument("--timezone", default="",
                     help="IANA zone of a CSV export's local clock (default UTC)")
    add.add_argument("--description", default="", help="one line about the trace")
    add.add_argument("--sheet", help="the trace sheet (default: `traces` of config/config.yaml)")
    add.set_defaults(handler=command_add)

    run = commands.add_parser(
        "run", help="run the pipeline with snakemake (--cores all unless given)",
        description="Run snakemake in the checkout; every other option is passed on to it.",
        usage="tracelab run [snakemake options and targets]")
    run.set_defaults(handler=command_run, usage=run)

    report = commands.add_parser(
        "report", help=f"build {REPORT} from the finished run",
        description=f"Run `snakemake --report {REPORT}` in the checkout; every other option "
        "is passed on to it.", usage="tracelab report [snakemake options]")
    report.set_defaults(handler=command_report, usage=report)
    return main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["inspect"] and "--json" in argv and not {"-h", "--help"} & set(argv):
        return inspect_json(argv)
    commands = parser()
    args, args.options = commands.parse_known_args(argv)
    if args.options and args.command not in PASSES_OPTIONS:
        commands.error(f"unrecognized arguments: {' '.join(args.options)}")
    if args.command in PASSES_OPTIONS:
        try:
            check_snakemake_options(args.options)
        except UsageError as error:
            args.usage.error(str(error))  # the command's usage line and this one
    try:
        return args.handler(args)
    except (UsageError, TraceInputError, TraceSheetError, ConfigError) as error:
        return failed(args.command, str(error))
    except OSError as error:
        if not is_disk_full(error):
            raise
        return failed(args.command, f"no space left on device writing "
                                    f"{unwritten_path(error) or 'a temporary file'}")


def failed(command: str, message: str) -> int:
    print(f"tracelab {command}: error: {terminal_text(message)}", file=sys.stderr)
    return 1


class _JsonParser(argparse.ArgumentParser):
    """Raises a usage mistake instead of printing usage: `inspect --json` reports it as JSON."""

    def error(self, message):
        raise UsageError(message)


def inspect_json(argv: list[str]) -> int:
    """`tracelab inspect --json`: the result, or any error, as one JSON document on stdout (a
    script parses it either way); exit 0, or 1 (2 for a usage mistake) with {"error": ...}."""
    inspect_parser = _JsonParser(prog="tracelab inspect")
    inspect_arguments(inspect_parser)
    status, error = 1, None
    try:
        return command_inspect(inspect_parser.parse_args(argv[1:]))
    except UsageError as mistake:
        status, error = 2, {"check": "usage", "message": f"tracelab inspect: {mistake}"}
    except TraceInputError as bad:
        error = {"message": str(bad), "file": str(bad.path), "check": bad.check,
                 "row": bad.row, "field": bad.field, "detail": bad.detail}
    except ConfigError as bad:
        error = {"check": "setting", "message": str(bad)}
    except OSError as failure:
        if not is_disk_full(failure):
            raise
        error = {"check": "disk space", "message": "no space left on device writing "
                 f"{unwritten_path(failure) or 'a temporary file'}"}
    print(json.dumps({"error": error}, indent=2))
    return status
