"""Configuration defaults, declared once: in the JSON schema of config/config.yaml.

Every key of `tracelab/schemas/config.schema.yaml` has a `description` and, where optional, a
`default`. Snakemake fills the defaults into `config` when it validates it; code called outside
Snakemake (tests, the command line, notebooks) takes the same defaults from here, so a settings
dataclass declares its fields and types but never a default of its own.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

import yaml

CONFIG_SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


@cache
def config_schema() -> dict:
    return yaml.safe_load(CONFIG_SCHEMA_PATH.read_text(encoding="utf-8"))


def _defaults_of(schema: dict):
    if schema.get("type") == "object" and "properties" in schema:
        return {key: _defaults_of(sub) for key, sub in schema["properties"].items()
                if "default" in sub or sub.get("type") == "object"}
    return schema.get("default")


def defaults(section: str = "") -> dict:
    """The schema's defaults of a section (`"security.scan"`), nested sections included."""
    schema = config_schema()
    for key in filter(None, section.split(".")):
        schema = schema["properties"][key]
    return _defaults_of(schema)


def with_defaults(section: str, values: dict | None) -> dict:
    """`values` over the section's defaults, nested sections merged key by key."""
    merged = defaults(section)
    for key, value in (values or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = with_defaults(f"{section}.{key}" if section else key, value)
        merged[key] = value
    return merged


def settings(cls, section: str, values: dict | None = None):
    """A settings dataclass of a config section: the given values over the schema's defaults
    (nested sections are flattened when the dataclass has their keys as fields)."""
    merged = with_defaults(section, values)
    names = {field.name for field in dataclasses.fields(cls)}
    flat = {}
    for key, value in merged.items():
        if isinstance(value, dict) and key not in names:
            flat.update(value)
        else:
            flat[key] = value
    return cls(**{key: value for key, value in flat.items() if key in names})
