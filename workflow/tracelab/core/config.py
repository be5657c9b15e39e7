"""Configuration defaults and checks, declared once: in the JSON schema of config/config.yaml,
and the cross-field RULES below.

Every key of `tracelab/schemas/config.schema.yaml` has a `description` and, where optional, a
`default`. The workflow (workflow/rules/common.smk) and the command line check a config with
`check_config`, which fills in the defaults, so a mistake gets the same one line from both; code
called outside Snakemake (tests, notebooks) takes the same defaults from here, so a settings
dataclass declares its fields and types but never a default of its own.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

CONFIG_SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


# libyaml where PyYAML was built with it: every job reads its section's defaults from the schema,
# 0.03 CPU s with the pure-Python loader, 0.004 with this one.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@cache
def _parsed_schema() -> dict:
    return yaml.load(CONFIG_SCHEMA_PATH.read_text(encoding="utf-8"), Loader=SAFE_LOADER)


def config_schema() -> dict:
    """The config schema, a fresh copy each call (its defaults end up in callers' dicts)."""
    return copy.deepcopy(_parsed_schema())


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


class ConfigError(ValueError):
    pass


def settings(cls, section: str, values: dict | None = None):
    """A settings dataclass of a config section: the given values over the schema's defaults
    (nested sections are flattened when the dataclass has their keys as fields). The one way
    every stage reads its section: a key without a field, or a field without a key, is an
    error rather than a setting silently dropped or defaulted in code."""
    merged = with_defaults(section, values)
    names = {field.name for field in dataclasses.fields(cls)}
    flat = {}
    for key, value in merged.items():
        if isinstance(value, dict) and key not in names:
            flat.update({f"{key}.{inner}": (inner, item) for inner, item in value.items()})
        else:
            flat[key] = (key, value)
    unused = sorted(dotted for dotted, (key, _) in flat.items() if key not in names)
    missing = sorted(names - {key for key, _ in flat.values()})
    if unused or missing:
        raise ConfigError(
            f"config section {section!r} and {cls.__name__} disagree: "
            + "; ".join(filter(None, [
                unused and f"key(s) without a field: {', '.join(unused)}",
                missing and f"field(s) without a key: {', '.join(missing)}"])))
    return cls(**dict(flat.values()))


@dataclass(frozen=True)
class Ordered:
    """A cross-field rule: the value at `lower` must be below the one at `upper` (or equal,
    unless `strict`), because of `why`."""
    lower: str
    upper: str
    strict: bool
    why: str

    def problem(self, config: dict) -> str | None:
        low, high = lookup(config, self.lower), lookup(config, self.upper)
        if low < high or (low == high and not self.strict):
            return None
        relation = "below" if self.strict else "at most"
        return f"{self.lower} ({low}) must be {relation} {self.upper} ({high}): {self.why}"


RULES = [
    Ordered("validation.length_min", "validation.length_max", strict=False,
            why="no frame length could be valid"),
    Ordered("security.scan.trw.theta1", "security.scan.trw.theta0", strict=True,
            why="a scanner's first contacts must be answered less often than a benign "
                "source's, or the random walk runs backwards"),
    Ordered("security.scan.trw.false_positive_probability",
            "security.scan.trw.detection_probability", strict=True,
            why="the scanner threshold P_D / P_F must be above 1"),
]


def lookup(config: dict, dotted: str):
    for key in dotted.split("."):
        config = config[key]
    return config


def _finite_number(checker, instance) -> bool:
    from jsonschema import Draft202012Validator

    return Draft202012Validator.TYPE_CHECKER.is_type(instance, "number") and math.isfinite(instance)


# jsonschema is imported by the checks alone: jobs only read defaults, and its import took 0.1
# CPU s of every job's start-up.
@cache
def _validator_class():
    """The schema's validator, where YAML's .nan and .inf are not numbers: they pass every bound
    of the schema (nan > 0 is false, so is nan <= 0) and would fail in the job that uses them."""
    import jsonschema

    checker = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("number", _finite_number)
    return jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=checker)


def _not_finite(error) -> bool:
    return (error.validator == "type" and isinstance(error.instance, float)
            and not math.isfinite(error.instance))


def _schema_problem(error) -> str:
    """One line for a jsonschema.ValidationError."""
    where = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        section = f"in {where} " if where else ""
        return (f"unknown key(s) {section}{', '.join(map(repr, unknown))}; "
                f"known keys: {', '.join(known)}")
    meaning = error.schema.get("description") if isinstance(error.schema, dict) else None
    key = f"key {where!r}: " if where else ""
    message = f"{error.instance} is not a finite number" if _not_finite(error) else error.message
    return key + message + (f" ({meaning})" if meaning and where else "")


def check_config(config: dict, source: str = "config") -> dict:
    """The config with the schema's defaults filled in; raises ConfigError naming `source`, the
    key and the check that failed (the schema's first, then the cross-field RULES)."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator_class()(config_schema()).iter_errors(config))
    if error is not None:
        raise ConfigError(f"{source}: {_schema_problem(error)}")
    filled = with_defaults("", config)
    for rule in RULES:
        problem = rule.problem(filled)
        if problem:
            raise ConfigError(f"{source}: {problem}")
    return filled
