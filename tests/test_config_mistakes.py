"""Mistakes in the config and the sheet that used to pass silently: each stops `snakemake -n`
with one line naming the key or line and what is wrong. And the schemas document every key:
a description for each, a default for each optional one, shown by config/config.yaml."""

from __future__ import annotations

import gzip
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, copy_workflow

from tracelab.core.config import ConfigError, check_config, config_schema, with_defaults
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


def _sheet_row(row: str):
    def edit(workdir):
        path = workdir / "config/traces.tsv"
        path.write_text(path.read_text() + row + "\n")
    return edit


def _gzipped_capture_as_csv(workdir):
    (workdir / "data/cap.csv.gz").write_bytes(
        gzip.compress((workdir / "data/log4j_scan.pcapng").read_bytes()))
    _sheet_row("cap\tdata/cap.csv.gz\t\tscan\tUTC\t")(workdir)


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
        _sheet_row("extra data/web_browsing.csv.gz wireshark_csv normal UTC"),
        (f"config/traces.tsv: the sheet is tab-separated; line {SHEET_LINES + 1} has 1 field, "
         f"the header 6")),
    "pcapng_listed_as_csv": (
        _sheet_row("cap\tdata/log4j_scan.pcapng\twireshark_csv\tscan\tUTC\t"),
        (f"config/traces.tsv, line {SHEET_LINES + 1} (trace 'cap'): field 'format': "
         f"'wireshark_csv', but the file holds a pcapng capture; set the format to pcapng")),
    "gzipped_pcapng_named_csv": (
        _gzipped_capture_as_csv,
        (f"config/traces.tsv, line {SHEET_LINES + 1} (trace 'cap'): field 'format': "
         f"'wireshark_csv', but the file holds a pcapng capture")),
}


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """`snakemake -n` on one edited copy per case, all started at once."""
    running = {}
    for case, (edit, _) in CASES.items():
        workdir = copy_workflow(tmp_path_factory.mktemp(case) / "wf")
        edit(workdir)
        running[case] = (workdir, subprocess.Popen(
            [sys.executable, "-m", "snakemake", "-n"], cwd=workdir, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = {}
    for case, (workdir, process) in running.items():
        stdout, stderr = process.communicate(timeout=300)
        results[case] = (workdir, process.returncode, stdout + stderr)
    return results


@pytest.mark.parametrize("case", sorted(CASES))
def test_mistake_stops_the_dry_run_with_one_line(dry_runs, case):
    workdir, returncode, output = dry_runs[case]
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

