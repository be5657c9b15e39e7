"""The real `snakemake` on the bundled traces: correct numbers, and only changed work reruns."""

import gzip
import json
import re
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, dry_run_outputs, edited, planned_jobs

BUNDLED = {"log4j_scan": "data/log4j_scan.csv.gz", "web_browsing": "data/web_browsing.csv.gz"}
PER_TRACE_RULES = ("validate_trace", "normalize_trace", "trace_features")


def traces_in_sheet(workdir):
    return pd.read_csv(workdir / "config/traces.tsv", sep="\t")["trace"].tolist()


def independent_numbers(path):
    """The notebook's numbers, computed here with plain pandas from the export itself."""
    with gzip.open(REPO / path, "rt", encoding="utf-8") as handle:
        frame = pd.read_csv(handle, dtype=str)
    times = pd.to_datetime(frame["Time"], format="%Y-%m-%d %H:%M:%S.%f")
    return {
        "packets": len(frame),
        "bytes": int(frame["Length"].astype(int).sum()),
        "duration_s": (times.max() - times.min()).total_seconds(),
        "unique_destinations": frame["Destination"].nunique(),
        "unique_sources": frame["Source"].nunique(),
        "protocol_counts": frame["Protocol"].value_counts().to_dict(),
    }


@pytest.mark.parametrize("trace", sorted(BUNDLED))
def test_bundled_summaries_match_an_independent_computation(bundled, trace):
    summary = json.loads((bundled / f"results/features/{trace}/summary.json").read_text())
    expected = independent_numbers(BUNDLED[trace])
    assert summary["packets"] == expected["packets"]
    assert summary["bytes"] == expected["bytes"]
    assert summary["duration_s"] == pytest.approx(expected["duration_s"], abs=1e-6)
    assert summary["unique_destinations"] == expected["unique_destinations"]
    assert summary["unique_sources"] == expected["unique_sources"]
    assert summary["protocol_counts"] == expected["protocol_counts"]
    report = json.loads((bundled / f"results/validation/{trace}.json").read_text())
    assert report["rows_read"] == report["rows_valid"] == expected["packets"]
    assert pq.ParquetFile(bundled / f"results/packets/{trace}.parquet").metadata.num_rows \
        == expected["packets"]


def test_bundled_outputs_exist(bundled):
    compare = bundled / "results/compare"
    for name in ("summary.csv", "summary.md", "iat_cdf.png", "length_cdf.png", "protocols.png",
                 "rate.png", "destinations.png"):
        assert (compare / name).stat().st_size > 0, name
    table = pd.read_csv(compare / "summary.csv")
    assert set(table["trace"]) >= set(BUNDLED)
    assert table.set_index("trace").loc["log4j_scan", "label"] == "scan"
    assert not list(bundled.glob("results/staged/*.arrow")), "staged files are temp()"


def assert_one_trace_and_the_comparison(jobs: dict[str, int]) -> None:
    """One trace's chain (each per-trace rule once, its perturbed copies in one job) and the
    comparison, nothing else twice."""
    assert jobs.pop("robustness_variants") == 1, jobs
    assert all(jobs.get(rule) == 1 for rule in PER_TRACE_RULES), jobs
    assert jobs.get("compare_traces") == 1
    assert max(jobs.values()) == 1, jobs


def test_second_run_has_nothing_to_do(bundled):
    assert planned_jobs(bundled) == {}


def test_adding_a_trace_runs_only_its_chain_and_the_comparison(bundled):
    shutil.copy(bundled / BUNDLED["log4j_scan"], bundled / "data/extra_scan.csv.gz")
    row = b"extra_scan\tdata/extra_scan.csv.gz\t\tscan\tUTC\tcopy\n"
    with edited(bundled / "config/traces.tsv", lambda sheet: sheet + row):
        jobs = planned_jobs(bundled)
    assert_one_trace_and_the_comparison(jobs)


def test_editing_one_trace_file_reruns_only_that_trace(bundled):
    def drop_the_last_packet(data: bytes) -> bytes:
        return gzip.compress(b"".join(gzip.decompress(data).splitlines(keepends=True)[:-1]))

    with edited(bundled / BUNDLED["web_browsing"], drop_the_last_packet):
        jobs = planned_jobs(bundled)
    assert_one_trace_and_the_comparison(jobs)


def test_changing_a_feature_parameter_skips_validation_and_normalization(bundled):
    def fewer_points(text: bytes) -> bytes:
        config = yaml.safe_load(text)
        config["features"]["ecdf_points"] = 123
        return yaml.safe_dump(config).encode()

    with edited(bundled / "config/config.yaml", fewer_points):
        jobs = planned_jobs(bundled)
    assert jobs.get("trace_features") == len(traces_in_sheet(bundled))
    assert jobs.get("compare_traces") == 1
    assert "validate_trace" not in jobs and "normalize_trace" not in jobs, jobs


def connection_job_threads(workdir, *args: str) -> list[int]:
    """The threads of each planned security_connections job (a dry run shows more than one)."""
    [(returncode, output)] = dry_run_outputs([(workdir, ("--until", "security_connections",
                                                         *args))])
    assert returncode == 0, output[-4000:]
    jobs = [block for block in output.split("\nrule ")[1:]
            if block.startswith("security_connections:")]
    return [int(next(iter(re.findall(r"^\s+threads: (\d+)$", job, re.MULTILINE)), 1))
            for job in jobs]


def test_the_connection_stage_takes_its_second_thread_for_a_second_partition_only(bundled):
    # One partition is assembled whole on one thread: a second would keep a core from the
    # jobs that could run beside it.
    n = len(traces_in_sheet(bundled))
    assert connection_job_threads(bundled, "--forcerun", "security_connections") == [1] * n

    def small_partitions(text: bytes) -> bytes:
        config = yaml.safe_load(text)
        config["security"]["flows"]["partition_packets"] = 1000
        return yaml.safe_dump(config).encode()

    with edited(bundled / "config/config.yaml", small_partitions):
        assert connection_job_threads(bundled) == [2] * n
