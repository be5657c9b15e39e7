"""Reference documents made from the declarations, so they cannot drift from the code.

    python -m tracelab.core.docs            # writes config/README.md and docs/tables.md
    python -m tracelab.core.docs --check    # exits 1 naming any file that is out of date

config/README.md comes from the JSON schemas of config.yaml and the trace sheet (every key's
description, type, default and bounds); docs/tables.md from the `Table` declarations.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from tracelab.core.config import CONFIG_SCHEMA_PATH, config_schema
from tracelab.core.tables import tables_markdown

SHEET_SCHEMA_PATH = CONFIG_SCHEMA_PATH.with_name("traces.schema.yaml")
BOUNDS = {"minimum": "≥ {}", "exclusiveMinimum": "> {}", "maximum": "≤ {}",
          "exclusiveMaximum": "< {}", "enum": "one of {}", "pattern": "matches `{}`",
          "minItems": "at least {} items"}


def _value(value) -> str:
    return f"`{json.dumps(value)}`"


def _bounds(schema: dict) -> str:
    return "; ".join(text.format(schema[key]) for key, text in BOUNDS.items() if key in schema)


def _rows(schema: dict, prefix: str = ""):
    """(dotted key, type, default, bounds, description) of every leaf key, depth first."""
    for key, sub in schema.get("properties", {}).items():
        name = f"{prefix}{key}"
        if sub.get("type") == "object" and "properties" in sub:
            yield from _rows(sub, f"{name}.")
        else:
            default = _value(sub["default"]) if "default" in sub else "required"
            kind = sub.get("type", "")
            yield (name, kind if isinstance(kind, str) else " or ".join(kind), default,
                   _bounds(sub),
                   " ".join(sub.get("description", "").split()))


def _section_notes(schema: dict, prefix: str = ""):
    for key, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            if sub.get("description"):
                yield f"- `{prefix}{key}`: {' '.join(sub['description'].split())}"
            yield from _section_notes(sub, f"{prefix}{key}.")


def _markdown_table(header: tuple[str, ...], rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
              for row in rows]
    return lines


def config_markdown() -> str:
    config = config_schema()
    sheet = yaml.safe_load(SHEET_SCHEMA_PATH.read_text(encoding="utf-8"))
    lines = [
        "# Configuration", "",
        "Made by `python -m tracelab.core.docs` from `workflow/tracelab/schemas/` (the one "
        "place where every option, its default and its bounds are declared); do not edit by "
        "hand. `config/config.yaml` shows every default; a key left out takes its default, an "
        "unknown key stops the run naming it.", "",
        "## config/config.yaml", "",
        *_markdown_table(("key", "type", "default", "bounds", "meaning"),
                         [(f"`{row[0]}`", *row[1:]) for row in _rows(config)]),
    ]
    notes = list(_section_notes(config))
    if notes:
        lines += ["", "Sections:", "", *notes]
    lines += [
        "", "## The trace sheet (`traces:`, tab-separated, one row a trace)", "",
        " ".join(sheet.get("description", "").split()), "",
        *_markdown_table(("column", "type", "default", "bounds", "meaning"),
                         [(f"`{row[0]}`", *row[1:]) for row in _rows(sheet)]),
    ]
    return "\n".join(lines) + "\n"


def documents(root: Path) -> dict[Path, str]:
    return {root / "config" / "README.md": config_markdown(),
            root / "docs" / "tables.md": tables_markdown()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracelab.core.docs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for path, text in documents(args.root).items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(path))
        else:
            path.write_text(text, encoding="utf-8")
    for path in stale:
        print(f"out of date: {path} (run python -m tracelab.core.docs)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
