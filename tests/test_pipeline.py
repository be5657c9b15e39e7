"""The real `snakemake` on the bundled traces: correct numbers, and only changed work reruns."""

import gzip
import json
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, copy_workflow, planned_jobs, run_snakemake

BUNDLED = {"log4j_scan": "data/log4j_scan.csv.gz", "web_browsing": "data/web_browsing.csv.gz"}
PER_TRACE_RULES = ("validate_trace", "normalize_trace", "trace_features")


@pytest.fixture(scope="module")
def bundled_run(tmp_path_factory):
    """One complete run of the workflow on a copy of the repository."""
    workdir = copy_workflow(tmp_path_factory.mktemp("bundled") / "wf")
    run_snakemake(workdir, "--cores", "2")
    return workdir


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
def test_bundled_summaries_match_an_independent_computation(bundled_run, trace):
    summary = json.loads((bundled_run / f"results/features/{trace}/summary.json").read_text())
    expected = independent_numbers(BUNDLED[trace])
    assert summary["packets"] == expected["packets"]
    assert summary["bytes"] == expected["bytes"]
    assert summary["duration_s"] == pytest.approx(expected["duration_s"], abs=1e-6)
    assert summary["unique_destinations"] == expected["unique_destinations"]
    assert summary["unique_sources"] == expected["unique_sources"]
    assert summary["protocol_counts"] == expected["protocol_counts"]
    report = json.loads((bundled_run / f"results/validation/{trace}.json").read_text())
    assert report["rows_read"] == report["rows_valid"] == expected["packets"]
    assert pq.ParquetFile(bundled_run / f"results/packets/{trace}.parquet").metadata.num_rows \
        == expected["packets"]


def test_bundled_outputs_exist(bundled_run):
    compare = bundled_run / "results/compare"
    for name in ("summary.csv", "summary.md", "iat_cdf.png", "length_cdf.png", "protocols.png",
                 "rate.png", "destinations.png"):
        assert (compare / name).stat().st_size > 0, name
    table = pd.read_csv(compare / "summary.csv")
    assert set(table["trace"]) >= set(BUNDLED)
    assert table.set_index("trace").loc["log4j_scan", "label"] == "scan"
    assert not list(bundled_run.glob("results/staged/*.arrow")), "staged files are temp()"


def assert_one_trace_and_the_comparison(jobs: dict[str, int]) -> None:
    """One trace's chain (each per-trace rule once, its perturbed copies once per perturbation)
    and the comparison, nothing else twice."""
    perturbations = yaml.safe_load((REPO / "config/config.yaml").read_text())["robustness"][
        "perturbations"]
    assert jobs.pop("robustness_windows") == len(perturbations), jobs
    assert all(jobs.get(rule) == 1 for rule in PER_TRACE_RULES), jobs
    assert jobs.get("compare_traces") == 1
    assert max(jobs.values()) == 1, jobs


def test_second_run_has_nothing_to_do(bundled_run):
    assert planned_jobs(bundled_run) == {}


def test_adding_a_trace_runs_only_its_chain_and_the_comparison(bundled_run):
    sheet = bundled_run / "config/traces.tsv"
    original = sheet.read_text()
    shutil.copy(bundled_run / BUNDLED["log4j_scan"], bundled_run / "data/extra_scan.csv.gz")
    try:
        sheet.write_text(original + "extra_scan\tdata/extra_scan.csv.gz\t\tscan\tUTC\tcopy\n")
        jobs = planned_jobs(bundled_run)
    finally:
        sheet.write_text(original)
    assert_one_trace_and_the_comparison(jobs)


def test_editing_one_trace_file_reruns_only_that_trace(bundled_run):
    path = bundled_run / BUNDLED["web_browsing"]
    original = path.read_bytes()
    try:
        with gzip.open(path, "rb") as handle:
            lines = handle.read().splitlines(keepends=True)
        path.write_bytes(gzip.compress(b"".join(lines[:-1])))  # drop the last packet
        jobs = planned_jobs(bundled_run)
    finally:
        path.write_bytes(original)
    assert_one_trace_and_the_comparison(jobs)


def test_changing_a_feature_parameter_skips_validation_and_normalization(bundled_run):
    config_path = bundled_run / "config/config.yaml"
    original = config_path.read_text()
    config = yaml.safe_load(original)
    config["features"]["ecdf_points"] = 123
    try:
        config_path.write_text(yaml.safe_dump(config))
        jobs = planned_jobs(bundled_run)
    finally:
        config_path.write_text(original)
    assert jobs.get("trace_features") == len(traces_in_sheet(bundled_run))
    assert jobs.get("compare_traces") == 1
    assert "validate_trace" not in jobs and "normalize_trace" not in jobs, jobs
