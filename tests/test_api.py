"""tracelab.flows, hosts and windows: the workflow's security tables of one file in one call,
checked against what the workflow itself writes for the same trace."""

from __future__ import annotations

import math
import subprocess

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import REPO, bundled_results

import tracelab
from tracelab.core.config import ConfigError
from tracelab.core.errors import TraceInputError
from tracelab.core.tables import PANDAS_TYPES

PCAPNG = REPO / "data/log4j_scan.pcapng"
CSV = REPO / "data/log4j_scan.csv.gz"
TRACE = "log4j_scan_pcap"  # the bundled sheet's name for PCAPNG: connection uids hash it
TABLES = ("flows", "hosts", "windows")


@pytest.fixture(scope="module")
def workflow_tables() -> dict[str, pd.DataFrame]:
    """The three tables as the session's Snakemake run of the workflow wrote them for PCAPNG."""
    features = bundled_results() / "features" / TRACE
    return {table: pq.read_table(features / f"{table}.parquet").to_pandas(
        types_mapper=PANDAS_TYPES.get) for table in TABLES}


def same_rows(found: pd.DataFrame, expected: pd.DataFrame, key: list[str]) -> None:
    # Categories (dictionary columns) are listed in the order values were met, which differs
    # between two runs; the values must not.
    pd.testing.assert_frame_equal(found.sort_values(key, ignore_index=True),
                                  expected.sort_values(key, ignore_index=True),
                                  check_categorical=False)


@pytest.mark.parametrize("table,key", [("flows", ["uid"]), ("hosts", ["source"]),
                                       ("windows", ["window"])])
def test_one_call_gives_the_table_the_workflow_writes(workflow_tables, table, key):
    found = getattr(tracelab, table)(PCAPNG, trace=TRACE)
    assert isinstance(found, pd.DataFrame) and len(found) > 0
    same_rows(found, workflow_tables[table], key)


def test_the_trace_is_named_after_the_file_unless_given():
    flows = tracelab.flows(CSV)
    assert set(flows["trace"]) == {"log4j_scan"}
    assert not set(flows["uid"]) & set(tracelab.flows(PCAPNG, trace=TRACE)["uid"])


def test_partitions_do_not_change_the_connections():
    """Bounded memory: 100-packet partitions give the same connections as one partition."""
    same_rows(tracelab.flows(PCAPNG, partition_packets=100), tracelab.flows(PCAPNG), ["uid"])


def capinfos_duration_s(path) -> float:
    found = subprocess.run(["capinfos", "-M", "-u", str(path)], capture_output=True, text=True,
                           check=True).stdout
    return float(found.split("Capture duration:")[1].split()[0])


@pytest.mark.parametrize("window_s", [1, 5, 10])
def test_settings_by_keyword_reach_the_stage(window_s):
    """Windows from the first packet on; a last window is kept when at least
    security.windows.min_coverage (0.5) of it holds the capture; capinfos gives the duration."""
    duration = capinfos_duration_s(PCAPNG)
    whole, rest = divmod(duration, window_s)
    expected = int(whole) + (rest / window_s >= 0.5)
    windows = tracelab.windows(PCAPNG, window_s=window_s)
    assert len(windows) == expected and windows["window"].tolist() == list(range(expected))
    assert math.isclose(windows["start_s"].iloc[-1], (expected - 1) * window_s)


def test_a_setting_of_another_call_or_a_typo_is_refused():
    with pytest.raises(TypeError, match=r"tracelab.flows\(\) got unknown setting\(s\) "
                                        r"window_s; its settings: active_timeout_s, "):
        tracelab.flows(PCAPNG, window_s=5)


def test_a_bad_setting_is_named_as_config_checks_name_it():
    with pytest.raises(ConfigError, match=r"^tracelab.hosts\(\): key "
                                          r"'security.scan.trw.theta0': 2 is greater than"):
        tracelab.hosts(PCAPNG, trw={"theta0": 2})


def test_a_bad_file_raises_the_clear_error(tmp_path):
    with pytest.raises(TraceInputError, match="check 'readable' failed: no such file"):
        tracelab.flows(tmp_path / "missing.pcap")
