"""Every sheet and setting works: one trace, one label, one capture a label, and the experiment
left out (`robustness.perturbations: []`). The run succeeds and each page says what it cannot
compute and why."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, copy_workflow, run_snakemake
from packet_factory import handshake, packet_table, tcp

from tracelab.robustness.invariance import write_invariance
from tracelab.robustness.separation import write_separation
from tracelab.robustness.transfer import write_transfer
from tracelab.robustness.variants import write_variants
from tracelab.security.connections import write_connections
from tracelab.security.windows import write_windows

CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())
SOME = ["hour_shift", "first_half"]
LABELS = {"scan_a": "scan", "scan_b": "scan", "normal_a": "normal"}


def rows_of(label: str, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(150):
        t = k * 0.2
        if label == "scan":
            rows.append(tcp(t, "198.18.0.2", 40000 + k, f"10.0.{k % 250}.{1 + k % 200}", 8443,
                            "S"))
        else:
            rows += handshake(t + rng.random() * 0.1, "198.18.0.3", 40000 + k, "198.18.5.1", 443)
    return sorted(rows, key=lambda row: row["t"])


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """Each trace's windows and its copies under SOME."""
    root = tmp_path_factory.mktemp("sheets")
    security = CONFIG["security"]
    for k, (trace, label) in enumerate(LABELS.items()):
        folder = root / trace
        folder.mkdir()
        paths = {name: folder / f"{name}.parquet" for name in ("packets", "flows", "http")}
        pq.write_table(packet_table(rows_of(label, k)), paths["packets"])
        write_connections(trace=trace, packets_path=paths["packets"], flows_path=paths["flows"],
                          http_path=paths["http"], settings=security["flows"])
        write_windows(trace=trace, packets_path=paths["packets"], flows_path=paths["flows"],
                      http_path=paths["http"], windows_path=folder / "windows.parquet",
                      settings=security["windows"])
        write_variants(trace=trace, perturbations=SOME, packets_path=paths["packets"],
                       flows_path=paths["flows"], http_path=paths["http"],
                       original_windows_path=folder / "windows.parquet",
                       windows_paths=[folder / name / "windows.parquet" for name in SOME],
                       baseline_path=folder / "baseline.parquet",
                       records_path=folder / "perturbations.json",
                       parameters=CONFIG["robustness"]["parameters"], seed=14,
                       sample_packets=CONFIG["robustness"]["sample_packets"],
                       settings=security)
    return root


def run_stages(root, out, sheet: list[str], perturbations: list[str]) -> dict[str, str]:
    """The three comparison stages on a sheet; every Markdown page's text."""
    out.mkdir()
    variants = [[t, p] for p in perturbations for t in sheet]
    windows = [str(root / t / "windows.parquet") for t in sheet]
    settings = CONFIG["robustness"]
    write_invariance(
        traces=sheet, windows_paths=windows, variants=variants,
        variant_windows_paths=[str(root / t / p / "windows.parquet") for t, p in variants],
        baseline_paths=[str(root / t / "baseline.parquet") for t in sheet if perturbations],
        record_paths=[str(root / t / "perturbations.json") for t in sheet if perturbations],
        format_pairs={}, skipped_pairs=[], settings=settings,
        table_csv=out / "invariance.csv", classes_csv=out / "classes.csv",
        classes_md=out / "classes.md", classes_html=out / "classes.html",
        perturbations_md=out / "perturbations.md", perturbations_html=out / "perturbations.html",
        heatmap_png=out / "invariance.png")
    common = {"traces": sheet, "labels": {t: LABELS[t] for t in sheet}, "windows_paths": windows,
              "classes_csv": out / "classes.csv", "settings": settings}
    write_separation(**common, table_csv=out / "separation.csv", table_md=out / "separation.md",
                     table_html=out / "separation.html", figure_png=out / "separation.png")
    write_transfer(**common, format_pairs={}, table_csv=out / "transfer.csv",
                   table_md=out / "transfer.md", table_html=out / "transfer.html",
                   figure_png=out / "transfer.png", answer_png=out / "answer.png",
                   answer_md=out / "answer.md")
    for name in ("invariance.png", "separation.png", "transfer.png", "answer.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    return {path.stem: path.read_text() for path in out.glob("*.md")}


def test_one_trace(traces, tmp_path):
    pages = run_stages(traces, tmp_path / "out", ["scan_a"], SOME)
    assert "Nothing to compare: the sheet holds one trace" in pages["separation"]
    assert "The sheet holds one capture" in pages["transfer"]
    assert "The sheet holds one capture" in pages["answer"]
    assert pd.read_csv(tmp_path / "out/separation.csv").empty
    transfer = pd.read_csv(tmp_path / "out/transfer.csv")
    assert set(transfer.loc[transfer["note"].notna() & (transfer["features"] > 0), "note"]) == \
        {"no other trace to train on"}
    # Invariance needs no second trace.
    classes = pd.read_csv(tmp_path / "out/classes.csv").set_index("feature")
    assert classes.at["hour_of_day_utc", "measured"] == "artefact"


def test_one_label_two_traces(traces, tmp_path):
    pages = run_stages(traces, tmp_path / "out", ["scan_a", "scan_b"], SOME)
    table = pd.read_csv(tmp_path / "out/separation.csv")
    assert set(table["comparison"]) == {"trace"}  # the two captures of the label compared
    assert "Every capture is labelled scan" in pages["answer"]
    transfer = pd.read_csv(tmp_path / "out/transfer.csv")
    assert transfer["accuracy"].isna().all()


def test_one_capture_a_label(traces, tmp_path):
    pages = run_stages(traces, tmp_path / "out", ["scan_a", "normal_a"], SOME)
    assert "Each label has one capture" in pages["answer"]
    transfer = pd.read_csv(tmp_path / "out/transfer.csv")
    folds = transfer[(transfer["left_out"] != transfer["left_out"].iloc[-1])
                     & (transfer["features"] > 0)]
    assert set(folds["note"]) == {"the other traces hold one label"}


def test_the_experiment_left_out(traces, tmp_path):
    pages = run_stages(traces, tmp_path / "out", list(LABELS), [])
    assert "The experiment was left out: robustness.perturbations is empty" in pages["classes"]
    assert "The experiment was left out" in pages["perturbations"]
    classes = pd.read_csv(tmp_path / "out/classes.csv")
    assert set(classes["measured"]) == {"not measured"}
    assert pd.read_csv(tmp_path / "out/invariance.csv").empty
    # Separation and transfer still run; with no measured class, only "all" has features.
    transfer = pd.read_csv(tmp_path / "out/transfer.csv")
    assert transfer.loc[transfer["feature_set"] == "all", "accuracy"].notna().any()


def test_a_one_trace_sheet_without_perturbations_runs_in_snakemake(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    sheet = workdir / "config/traces.tsv"
    sheet.write_text("".join(sheet.read_text().splitlines(keepends=True)[:2]))
    config_path = workdir / "config/config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["robustness"]["perturbations"] = []
    config_path.write_text(yaml.safe_dump(config))
    run_snakemake(workdir, "--cores", "2", "results/robustness/transfer.csv",
                  "results/robustness/separation.csv", timeout=900)
    out = workdir / "results/robustness"
    assert "The experiment was left out" in (out / "classes.md").read_text()
    assert "Export-format pairs skipped" not in (out / "classes.md").read_text()
    assert "one capture" in (out / "answer.md").read_text()
    assert not list(out.glob("*/perturbations.json"))
