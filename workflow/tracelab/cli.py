"""The `tracelab` command (also `python -m tracelab`).

    tracelab inspect FILE              summary of one trace file, without Snakemake
    tracelab add FILE [--name N] ...   append a checked row to the trace sheet
    tracelab run [snakemake options]   run the pipeline (all cores unless told otherwise)
    tracelab report                    build results/report.html
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from tracelab.api import inspect
from tracelab.core.atomic import atomic_path
from tracelab.core.config import ConfigError, check_config
from tracelab.core.errors import TraceInputError
from tracelab.ingest.sheet import (
    COLUMNS,
    CONTENT_NAMES,
    TraceSheetError,
    check_sheet,
    content_format,
    read_sheet,
    trace_name_for,
)

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


def summary_lines(path: str, found: dict) -> list[tuple[str, str]]:
    """capinfos' fields (and tracelab's protocol counts) as (name, value) pairs."""
    report, summary = found["validation"], found["summary"]
    packets, duration = summary["packets"], summary["duration_s"]
    data_bytes = summary["bytes"]
    protocols = summary["protocol_counts"]
    return [
        ("File name", path),
        ("File format", report["format"]),
        ("Validation", _validation_line(report)),
        ("Number of packets", _number(packets)),
        ("First packet time", str(summary["first_ts"])),
        ("Last packet time", str(summary["last_ts"])),
        ("Capture duration", f"{duration:,.6f} seconds"),
        ("Data size", f"{_number(data_bytes)} bytes"),
        ("Average packet size", f"{summary['mean_length']:,.2f} bytes"),
        ("Average packet rate", f"{summary['mean_pps']:,.2f} packets/s"),
        ("Data byte rate", f"{summary['mean_bps'] / 8:,.2f} bytes/s"),
        ("Data bit rate", f"{summary['mean_bps']:,.2f} bits/s"),
        ("Distinct sources", _number(summary["unique_sources"])),
        ("Distinct destinations", _number(summary["unique_destinations"])),
        ("Protocols", ", ".join(f"{name} {_number(count)} ({count / packets:.1%})"
                                for name, count in protocols.items()) or "none"),
    ]


def command_inspect(args) -> int:
    found = inspect(args.file, timezone=args.timezone)
    if args.json:
        print(json.dumps(found, indent=2, default=str))
        return 0
    lines = summary_lines(args.file, found)
    width = max(len(name) for name, _ in lines) + 1
    for name, value in lines:
        print(f"{name + ':':<{width}} {value}")
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
            f"{args.file}: its first bytes show neither a {CONTENT_NAMES['pcap']}, nor "
            f"{CONTENT_NAMES['pcapng']}, nor {CONTENT_NAMES['wireshark_csv']} (gzip-compressed "
            f"or not); `tracelab inspect {args.file}` says more")
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


def command_run(args) -> int:
    options = list(args.options)
    if not any(option.split("=")[0] in CORES_OPTIONS or
               (option[:2] in ("-c", "-j") and option[2:].isdigit()) for option in options):
        options = ["--cores", "all", *options]
    return snakemake(repository_root(Path.cwd()), options)


def command_report(args) -> int:
    return snakemake(repository_root(Path.cwd()), ["--report", REPORT, *args.options])


# --- parsing --------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="tracelab", description="Packet traces to validated tables, security features "
        "and comparisons.")
    commands = main.add_subparsers(dest="command", required=True)

    inspect_ = commands.add_parser(
        "inspect", help="summarize one trace file (CSV export or capture), without Snakemake",
        description="Validate and normalize one trace file in a temporary folder and print a "
        "capinfos-like summary: packets, times, sizes, rates, protocols, validation result.")
    inspect_.add_argument("file", help="a Wireshark CSV export, pcap or pcapng (or .gz)")
    inspect_.add_argument("--timezone", default="UTC",
                          help="IANA zone of a CSV export's local clock (default UTC)")
    inspect_.add_argument("--json", action="store_true",
                          help="print the validation report and the summary as JSON")
    inspect_.set_defaults(handler=command_inspect)

    add = commands.add_parser(
        "add", help="append a trace file to the trace sheet",
        description="Append a row for FILE to the trace sheet, its format read from the file's "
        "first bytes; the row is checked as the workflow checks it before it is written.")
    add.add_argument("file")
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
    run.set_defaults(handler=command_run)

    report = commands.add_parser(
        "report", help=f"build {REPORT} from the finished run",
        description=f"Run `snakemake --report {REPORT}` in the checkout; every other option "
        "is passed on to it.", usage="tracelab report [snakemake options]")
    report.set_defaults(handler=command_report)
    return main


def main(argv: list[str] | None = None) -> int:
    commands = parser()
    args, args.options = commands.parse_known_args(argv)
    if args.options and args.command not in PASSES_OPTIONS:
        commands.error(f"unrecognized arguments: {' '.join(args.options)}")
    try:
        return args.handler(args)
    except (UsageError, TraceInputError, TraceSheetError, ConfigError) as error:
        print(f"tracelab {args.command}: error: {error}", file=sys.stderr)
        return 1
