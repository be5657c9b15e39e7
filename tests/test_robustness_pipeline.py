"""The robustness rules run by the real `snakemake` on the bundled traces (three of the
perturbations, to keep the run short: the others are the same rules with another name)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from conftest import copy_workflow, planned_jobs, run_snakemake

from tracelab.security.windows import FEATURES

TARGETS = ("results/robustness/separation.csv", "results/robustness/transfer.csv")
SOME = ["hour_shift", "first_half", "names_to_addresses"]


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("robustness") / "wf")
    config_path = workdir / "config/config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["robustness"]["perturbations"] = SOME
    config_path.write_text(yaml.safe_dump(config))
    run_snakemake(workdir, "--cores", "2", *TARGETS, timeout=1800)
    return workdir


def traces(workdir):
    return pd.read_csv(workdir / "config/traces.tsv", sep="\t")["trace"].tolist()


def test_every_output_is_there_and_perturbed_tables_are_temporary(bundled):
    out = bundled / "results/robustness"
    for name in ("invariance.csv", "invariance.png", "classes.csv", "classes.md",
                 "classes.html", "perturbations.md", "perturbations.html", "separation.csv",
                 "separation.md", "separation.html", "separation.png", "transfer.csv",
                 "transfer.md", "transfer.html", "transfer.png"):
        assert (out / name).stat().st_size > 0, name
    for trace in traces(bundled):
        for name in SOME:
            variant = out / trace / name
            assert sorted(p.name for p in variant.iterdir()) == ["perturbation.json",
                                                                 "windows.parquet"]
            record = json.loads((variant / "perturbation.json").read_text())
            assert record["trace"] == trace and record["perturbation"] == name


def test_bundled_classes_and_the_export_format_pair(bundled):
    out = bundled / "results/robustness"
    classes = pd.read_csv(out / "classes.csv").set_index("feature")
    assert set(classes.index) == set(FEATURES)
    assert set(classes["measured"]) <= {"behavioural", "artefact"}
    assert classes.at["hour_of_day_utc", "moved_most_by"] == "hour_shift"
    # Names are shown in the CSV export and not in the capture of the same traffic.
    assert "export_format" in classes.at["resolved_name_share", "moving"]
    table = pd.read_csv(out / "invariance.csv")
    assert set(table["perturbation"]) == {*SOME, "export_format"}
    pair = table[table["perturbation"] == "export_format"]
    assert set(pair["captures"]) == {1} and set(pair["windows"]) == {2}
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
    assert jobs == {"robustness_windows": len(traces(bundled)), "robustness_invariance": 1,
                    "robustness_separation": 1, "robustness_transfer": 1}
    assert planned_jobs(bundled, *TARGETS) == {}
