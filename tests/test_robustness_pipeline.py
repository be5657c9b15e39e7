"""The robustness rules in the real `snakemake` run on the bundled traces, every configured
perturbation."""

from __future__ import annotations

import json
import re

import pandas as pd
import pyarrow.parquet as pq
import yaml
from conftest import REPO, dry_run_outputs, edited, planned_jobs, run_snakemake

from tracelab.security.windows import FEATURES

TARGETS = ("results/robustness/separation.csv", "results/robustness/transfer.csv")
PERTURBATIONS = yaml.safe_load((REPO / "config/config.yaml").read_text())["robustness"][
    "perturbations"]


def traces(workdir):
    return pd.read_csv(workdir / "config/traces.tsv", sep="\t")["trace"].tolist()


def test_every_output_is_there_and_perturbed_tables_are_temporary(bundled):
    out = bundled / "results/robustness"
    for name in ("invariance.csv", "invariance.png", "classes.csv", "classes.md",
                 "classes.html", "perturbations.md", "perturbations.html", "separation.csv",
                 "separation.md", "separation.html", "separation.png", "transfer.csv",
                 "transfer.md", "transfer.html", "transfer.png", "answer.png", "answer.md"):
        assert (out / name).stat().st_size > 0, name
    for trace in traces(bundled):
        # One job a trace: its copies' windows, their baseline and one record; no packet
        # table is left. A bundled trace is copied whole: its baseline is its own windows.
        assert sorted(p.name for p in (out / trace).iterdir()) == sorted(
            [*PERTURBATIONS, "baseline.parquet", "perturbations.json"])
        assert (out / trace / "baseline.parquet").read_bytes() == (
            bundled / f"results/features/{trace}/windows.parquet").read_bytes()
        records = json.loads((out / trace / "perturbations.json").read_text())
        assert list(records) == PERTURBATIONS
        assert all(record["sample"] is None for record in records.values())
        for name in PERTURBATIONS:
            assert [p.name for p in (out / trace / name).iterdir()] == ["windows.parquet"]
            assert records[name]["trace"] == trace and records[name]["perturbation"] == name
        assert records["hour_shift"]["connections"] == "the original's, relabelled"
        assert records["packet_loss"]["connections"] == "assembled again"


def test_bundled_classes_and_the_export_format_pair(bundled):
    out = bundled / "results/robustness"
    classes = pd.read_csv(out / "classes.csv").set_index("feature")
    assert set(classes.index) == set(FEATURES)
    assert set(classes["measured"]) <= {"behavioural", "artefact", "undetermined"}
    assert classes.at["hour_of_day_utc", "moved_most_by"] == "hour_shift"
    # Names are shown in the CSV export and not in the capture of the same traffic.
    assert "export_format" in classes.at["resolved_name_share", "moving"]
    table = pd.read_csv(out / "invariance.csv")
    assert set(table["perturbation"]) == {*PERTURBATIONS, "export_format"}
    pair = table[table["perturbation"] == "export_format"]
    # log4j_scan and log4j_scan_2, each beside its own capture.
    assert set(pair["captures"]) == {2}
    assert "<table>" in (out / "classes.html").read_text()


def test_a_perturbation_setting_reruns_only_its_copies_and_the_comparison(bundled):
    config_path = bundled / "config/config.yaml"
    original = config_path.read_text()
    config = yaml.safe_load(original)
    config["robustness"]["parameters"]["hour_shift"]["hours"] = 5
    try:
        config_path.write_text(yaml.safe_dump(config))
        jobs = planned_jobs(bundled, *TARGETS)
    finally:
        config_path.write_text(original)
    assert jobs == {"robustness_variants": len(traces(bundled)), "robustness_measures": 1}
    assert planned_jobs(bundled, *TARGETS) == {}


def variants_parents(workdir) -> list[list[str]]:
    """The rules each robustness_variants job waits for, from `snakemake --dag`."""
    [(returncode, output)] = dry_run_outputs([(workdir, ("--dag",))])
    assert returncode == 0, output[-4000:]
    rule = dict(re.findall(r"^\s*(\d+)\[label = \"(\w+)", output, re.MULTILINE))
    edges = re.findall(r"^\s*(\d+) -> (\d+)", output, re.MULTILINE)
    jobs = [job for job, name in rule.items() if name == "robustness_variants"]
    return [sorted(rule[parent] for parent, child in edges if child == job) for job in jobs]


def test_a_sampled_traces_copies_wait_for_its_packet_table_only(bundled):
    """Copies of a sample read none of the original's connections, requests or windows: their
    job starts once the packet table is written (beside the connection stage). A sample size
    between the bundled traces' packet counts samples the larger traces only."""
    packets = sorted(pq.ParquetFile(bundled / f"results/packets/{trace}.parquet").metadata.num_rows
                     for trace in traces(bundled))
    budget = packets[len(packets) // 2]
    whole = sum(count <= budget for count in packets)
    assert 0 < whole < len(packets)

    def sampled(text: bytes) -> bytes:
        config = yaml.safe_load(text)
        config["robustness"]["sample_packets"] = budget
        return yaml.safe_dump(config).encode()

    with edited(bundled / "config/config.yaml", sampled):
        parents = variants_parents(bundled)
    assert sorted(parents) == sorted(
        [["normalize_trace"]] * (len(packets) - whole)
        + [["normalize_trace", "security_connections", "security_windows"]] * whole)


def sampled_log4j_scan(workdir, partition_packets: int | None = None) -> None:
    """The workflow copy's sheet cut to log4j_scan, sampled at 1000 packets (and its
    connections in partitions of `partition_packets`, if given)."""
    sheet = workdir / "config/traces.tsv"
    header, *rows = sheet.read_text().splitlines()
    sheet.write_text("\n".join([header, *(row for row in rows if row.startswith("log4j_scan\t"))])
                     + "\n")
    config_path = workdir / "config/config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["robustness"]["sample_packets"] = 1000
    if partition_packets is not None:
        config["security"]["flows"]["partition_packets"] = partition_packets
    config_path.write_text(yaml.safe_dump(config))


def test_a_sampled_traces_copies_are_made_before_its_connections(workflow_copy):
    """Through Snakemake: a sheet of one trace above the sample size, and the copies asked for
    alone: the trace is validated, normalized and copied, and its connection stage never
    runs."""
    sampled_log4j_scan(workflow_copy)
    run_snakemake(workflow_copy, "--cores", "2", "results/robustness/log4j_scan/perturbations.json")
    records = json.loads((workflow_copy / "results/robustness/log4j_scan/perturbations.json")
                         .read_text())
    assert list(records) == PERTURBATIONS
    assert all(0 < record["sample"]["packets"] <= 1000 < record["sample"]["trace_packets"]
               for record in records.values())
    assert not (workflow_copy / "results/features/log4j_scan").exists()


def test_a_traces_connections_start_before_its_sampled_copies(workflow_copy):
    """Both wait for the packet table only; on two cores the connection stage, taking both for
    a trace above one partition, is started first: the copies (one thread), started first,
    would hold a core while it waits (the critical path: hosts, windows and statistics wait
    for it)."""
    sampled_log4j_scan(workflow_copy, partition_packets=1000)
    result = run_snakemake(workflow_copy, "--cores", "2",
                           "results/robustness/log4j_scan/perturbations.json",
                           "results/features/log4j_scan/flows.parquet")
    started = re.findall(r"^(?:local)?rule (\w+):", result.stderr, flags=re.MULTILINE)
    assert started.index("security_connections") < started.index("robustness_variants")
    threads = re.search(r"rule security_connections:.*?threads: (\d+)", result.stderr,
                        flags=re.DOTALL)
    assert threads and threads.group(1) == "2"
