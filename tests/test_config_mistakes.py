"""Mistakes in the config and the sheet that used to pass silently: each stops `snakemake -n`
with one line naming the key or line and what is wrong. And the schemas document every key:
a description for each, a default for each optional one, shown by config/config.yaml."""

from __future__ import annotations

import dataclasses
import gzip
import subprocess
import sys
from dataclasses import dataclass

import pandas as pd
import pytest
import yaml
from conftest import REPO, add_sheet_row, dry_runs

from tracelab.core.config import (
    ConfigError,
    check_config,
    config_schema,
    settings,
    with_defaults,
)
from tracelab.core.errors import TraceInputError
from tracelab.ingest.sheet import SCHEMA_PATH as SHEET_SCHEMA_PATH

CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())
SHEET_LINES = len((REPO / "config/traces.tsv").read_text().splitlines())


def _config_edit(old: str, new: str):
    def edit(workdir):
        path = workdir / "config/config.yaml"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
    return edit


def _gzipped_capture_as_csv(workdir):
    (workdir / "data/cap.csv.gz").write_bytes(
        gzip.compress((workdir / "data/log4j_scan.pcapng").read_bytes()))
    add_sheet_row("cap\tdata/cap.csv.gz\t\tscan\tUTC\t")(workdir)


# case -> (edit of the workflow copy, the one line expected)
CASES = {
    "misspelt_section": (
        _config_edit("\nvalidation:", "\nvalidaton:"),
        ("config/config.yaml: unknown key(s) 'validaton'; known keys: "
         + ", ".join(sorted(config_schema()["properties"])))),
    "misspelt_nested_key": (
        _config_edit("theta1: 0.2", "theta_1: 0.2"),
        ("config/config.yaml: unknown key(s) in security.scan.trw 'theta_1'; known keys: "
         "detection_probability, false_positive_probability, theta0, theta1")),
    "theta0_below_theta1": (
        _config_edit("theta0: 0.8", "theta0: 0.1"),
        ("config/config.yaml: security.scan.trw.theta1 (0.2) must be below "
         "security.scan.trw.theta0 (0.1): a scanner's first contacts must be answered less often")),
    "length_min_above_max": (
        _config_edit("length_min: 14", "length_min: 300000"),
        ("config/config.yaml: validation.length_min (300000) must be at most "
         "validation.length_max (262144): no frame length could be valid")),
    "pd_below_pf": (
        _config_edit("detection_probability: 0.99", "detection_probability: 0.005"),
        ("config/config.yaml: security.scan.trw.false_positive_probability (0.01) must be below "
         "security.scan.trw.detection_probability (0.005)")),
    "space_separated_row": (
        add_sheet_row("extra data/web_browsing.csv.gz wireshark_csv normal UTC"),
        (f"config/traces.tsv: the sheet is tab-separated; line {SHEET_LINES + 1} has 1 field, "
         f"the header 6")),
    "pcapng_listed_as_csv": (
        add_sheet_row("cap\tdata/log4j_scan.pcapng\twireshark_csv\tscan\tUTC\t"),
        (f"config/traces.tsv, line {SHEET_LINES + 1} (trace 'cap'): field 'format': "
         f"'wireshark_csv', but the file holds a pcapng capture; set the format to pcapng")),
    "gzipped_pcapng_named_csv": (
        _gzipped_capture_as_csv,
        (f"config/traces.tsv, line {SHEET_LINES + 1} (trace 'cap'): field 'format': "
         f"'wireshark_csv', but the file holds a pcapng capture")),
    "window_s_nan": (
        _config_edit("window_s: 10", "window_s: .nan"),
        "config/config.yaml: key 'security.windows.window_s': nan is not a finite number"),
    "window_s_a_nanosecond": (
        _config_edit("window_s: 10", "window_s: 1.0e-9"),
        "config/config.yaml: key 'security.windows.window_s': 1e-09 is less than the minimum "
        "of 0.001"),
    "name_of_300_characters": (
        add_sheet_row("n" * 300 + "\tdata/web_browsing.csv.gz"),
        f"config/traces.tsv, line {SHEET_LINES + 1} (trace '{'n' * 300}'): field 'trace': "
        f"'{'n' * 300}' is too long"),
    "name_equal_but_for_case": (
        add_sheet_row("LOG4J_SCAN\tdata/web_browsing.csv.gz"),
        f"config/traces.tsv, line {SHEET_LINES + 1} (trace 'LOG4J_SCAN'): trace name differs "
        f"from 'log4j_scan' (line 2) only by case"),
    "name_snakemake_takes_for_periodic": (
        add_sheet_row("t" + "a" * 20 + "\tdata/web_browsing.csv.gz"),
        "ends in 'a' repeated 20 or more times, which Snakemake refuses as a periodic "
        "wildcard"),
}


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory):
    return dry_runs(tmp_path_factory, {case: edit for case, (edit, _) in CASES.items()})


@pytest.mark.parametrize("case", sorted(CASES))
def test_mistake_stops_the_dry_run_with_one_line(mistakes, case):
    workdir, returncode, output = mistakes[case]
    expected = CASES[case][1]
    assert returncode != 0
    lines = [line for line in output.splitlines() if expected in line]
    assert len(lines) == 1, output[-3000:]
    assert "Traceback" not in output
    assert not (workdir / "results").exists()


def test_the_bundled_config_passes_and_gets_nothing_added():
    assert check_config(CONFIG) == CONFIG


def test_defaults_fill_a_partial_config():
    config = check_config({"traces": "t.tsv", "security": {"scan": {"interval_s": 60}}})
    assert config["security"]["scan"]["interval_s"] == 60
    assert config["security"]["scan"]["trw"]["theta0"] == CONFIG["security"]["scan"]["trw"][
        "theta0"]
    assert config["validation"] == CONFIG["validation"]


def test_a_rule_sees_the_defaults_of_keys_left_out():
    # theta1 given alone, above the default theta0.
    with pytest.raises(ConfigError, match=r"theta1 \(0.9\) must be below .*theta0 \(0.8\)"):
        check_config({"traces": "t.tsv", "security": {"scan": {"trw": {"theta1": 0.9}}}})


def test_a_bad_value_names_the_key_and_its_meaning():
    with pytest.raises(ConfigError) as error:
        check_config({**CONFIG, "normalize": {"row_group_rows": 10}})
    assert str(error.value) == (
        "config: key 'normalize.row_group_rows': 10 is less than the minimum of 1024 "
        "(rows per Parquet row group)")


def test_the_trace_sheet_is_required():
    with pytest.raises(ConfigError, match="'traces' is a required property"):
        check_config({})


def _properties(schema: dict, prefix=""):
    """(dotted key, its schema, required?) for every key of the schema, nested ones too."""
    for key, spec in schema.get("properties", {}).items():
        yield f"{prefix}{key}", spec, key in schema.get("required", [])
        yield from _properties(spec, f"{prefix}{key}.")


@pytest.mark.parametrize("schema", [config_schema(), yaml.safe_load(SHEET_SCHEMA_PATH.read_text())],
                         ids=["config", "traces"])
def test_every_key_has_a_description_and_every_optional_one_a_default(schema):
    assert schema.get("description")
    undocumented = [key for key, spec, _ in _properties(schema) if not spec.get("description")]
    no_default = [key for key, spec, required in _properties(schema)
                  if not required and "default" not in spec]
    assert undocumented == [] and no_default == []


def test_config_yaml_shows_exactly_the_schemas_defaults():
    assert with_defaults("", {"traces": CONFIG["traces"]}) == CONFIG



# --- Numbers that pass every bound and fail in a job ------------------------------------------

def _number_keys(schema: dict, prefix=""):
    """Dotted keys of every number or integer of the schema (array items as `key.0`)."""
    for key, spec in schema.get("properties", {}).items():
        if spec.get("type") in ("number", "integer"):
            yield f"{prefix}{key}"
        if spec.get("type") == "array" and spec.get("items", {}).get("type") == "number":
            yield f"{prefix}{key}.0"
        yield from _number_keys(spec, f"{prefix}{key}.")


def _with_value(dotted: str, value) -> dict:
    config = check_config({"traces": "t.tsv"})
    *path, last = dotted.split(".")
    section = config
    for key in path:
        section = section[key]
    if isinstance(section, list):
        section[int(last)] = value
    else:
        section[last] = value
    return config


NUMBER_KEYS = sorted(_number_keys(config_schema()))


def test_the_schema_has_the_number_keys_looked_for():
    assert {"security.windows.window_s", "features.quantiles.0", "validation.length_min",
            "progress_interval_s"} <= set(NUMBER_KEYS)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("key", NUMBER_KEYS)
def test_no_number_in_the_config_may_be_nan_or_infinite(key, value):
    with pytest.raises(ConfigError) as error:
        check_config(_with_value(key, value))
    assert str(error.value).startswith(f"config: key '{key}': {value} is not a finite number")


def test_a_window_count_beyond_the_bound_stops_with_one_line():
    from tracelab.security.window_totals import MAX_WINDOWS, WindowAccumulator
    from tracelab.security.windows import window_settings
    chosen = window_settings({"window_s": 0.001})
    # Two busy windows an hour apart: every empty window between them is a row (max_pause_s).
    hour = round(3600 / chosen.window_s)
    with pytest.raises(TraceInputError) as error:
        WindowAccumulator(chosen, 0).kept_windows(pd.Index([0, hour]))
    assert str(error.value) == (
        f"config, field 'security.windows.window_s': check 'window count' failed: windows of "
        f"0.001 s would cut the trace into {hour + 1:,} rows, more than {MAX_WINDOWS:,}; "
        f"choose a longer window")


# --- Settings: one path for every stage, and schema and dataclass agree ---------------------

@dataclass(frozen=True)
class _Partial:
    window_s: float
    min_coverage: float


@dataclass(frozen=True)
class _Extra:
    window_s: float
    min_coverage: float
    max_pause_s: float
    max_windows: int


def test_a_schema_key_without_a_field_is_an_error():
    with pytest.raises(ConfigError, match=r"config section 'security.windows' and _Partial "
                                          r"disagree: key\(s\) without a field: max_pause_s$"):
        settings(_Partial, "security.windows")


def test_a_field_without_a_schema_key_is_an_error():
    with pytest.raises(ConfigError, match=r"field\(s\) without a key: max_windows$"):
        settings(_Extra, "security.windows")


def test_a_nested_key_without_a_field_is_named_with_its_section():
    @dataclass(frozen=True)
    class Scan:
        address_scan_hosts: int
        port_scan_ports: int
        interval_s: float
    with pytest.raises(ConfigError, match=r"without a field: trw.detection_probability, "
                                          r"trw.false_positive_probability, trw.theta0"):
        settings(Scan, "security.scan")


def test_a_value_given_for_no_field_is_an_error_not_dropped():
    from tracelab.ingest.outcome import validation_settings
    with pytest.raises(ConfigError, match="key\\(s\\) without a field: max_invalid_fractoin"):
        validation_settings({"max_invalid_fractoin": 0.5})


def _settings_functions():
    """Every `*_settings` function of the package that builds a settings dataclass."""
    import importlib
    import pkgutil

    import tracelab
    for module in pkgutil.walk_packages(tracelab.__path__, "tracelab."):
        if module.name.endswith("__main__"):  # runs a command when imported
            continue
        loaded = importlib.import_module(module.name)
        for name, value in vars(loaded).items():
            if name.endswith("_settings") and getattr(value, "__module__", "") == module.name:
                yield f"{module.name}.{name}", value


def test_every_stages_settings_agree_with_its_schema_section():
    found = dict(_settings_functions())
    assert {"tracelab.security.windows.window_settings", "tracelab.ingest.outcome."
            "validation_settings", "tracelab.robustness.bootstrap.bootstrap_settings"} <= set(found)
    for name, function in found.items():
        assert dataclasses.is_dataclass(function()), name  # raises ConfigError on a mismatch


def test_a_stage_reads_its_whole_section():
    from tracelab.features.summary import feature_settings
    from tracelab.ingest.outcome import validation_settings
    from tracelab.security.connections import flow_settings
    from tracelab.security.hosts import scan_settings
    from tracelab.security.windows import window_settings
    read = {"features": feature_settings(), "validation": validation_settings(),
            "security.flows": flow_settings(), "security.windows": window_settings()}
    for section, chosen in read.items():
        assert dataclasses.asdict(chosen) == with_defaults(section, None)
    trw = with_defaults("security.scan", None)
    assert dataclasses.asdict(scan_settings()) == {**trw.pop("trw"), **trw}


def test_a_stage_reads_its_defaults_without_importing_the_checks():
    """jsonschema took 0.1 CPU s of every job's start-up: only check_config imports it."""
    code = ("import sys; from tracelab.security.windows import window_settings; "
            "from tracelab.ingest.outcome import validation_settings; "
            "window_settings({}); validation_settings({}); print('jsonschema' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
