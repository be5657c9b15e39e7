"""Facts declared once and copied where a tool needs them: each copy checked against its source."""

from __future__ import annotations

import re
import tomllib

import yaml
from conftest import REPO

from tracelab.core.tables import declared_tables

# pip name -> conda-forge name, where they differ.
CONDA_NAMES = {"isal": "python-isal", "PyYAML": "pyyaml"}
# Dependencies of the workflow's own process, not of its jobs: the conda environment holds only
# what a job imports (workflow/envs/tracelab.yaml says why).
NOT_IN_JOBS = {"snakemake", "snakemake-executor-plugin-slurm", "pygments"}


def pinned(requirement: str) -> tuple[str, str]:
    name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", requirement).groups()
    return name, version


def test_the_conda_environment_pins_what_pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    expected = {CONDA_NAMES.get(name, name.lower()): version
                for name, version in map(pinned, project["dependencies"])
                if name not in NOT_IN_JOBS}
    environment = yaml.safe_load((REPO / "workflow/envs/tracelab.yaml").read_text())
    listed = dict(entry.split("=", 1) for entry in environment["dependencies"])
    assert listed.pop("python") == project["requires-python"].removeprefix(">=")
    assert listed == expected


def test_every_declared_table_is_written_where_a_rule_says():
    rules = "\n".join(path.read_text() for path in (REPO / "workflow/rules").glob("*.smk"))
    tables = declared_tables()
    assert len(tables) >= 10
    for table in tables:
        assert f'"{table.path}"' in rules, (table.name, table.path)


def test_the_docs_name_every_category_of_the_report():
    rules = "\n".join(path.read_text() for path in (REPO / "workflow/rules").glob("*.smk"))
    categories = set(re.findall(r'^\s*category="([^"]+)"', rules, re.MULTILINE))
    page = (REPO / "docs/cli.md").read_text()
    listed = re.search(r"with (\w+) categories — ([^—]+) —", page)
    assert listed, "docs/cli.md lists the report's categories"
    assert set(listed.group(2).split(", ")) == categories
    numbers = {"four": 4, "five": 5, "six": 6, "seven": 7}
    assert numbers[listed.group(1)] == len(categories)
