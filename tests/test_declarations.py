"""Facts declared once and copied where a tool needs them: each copy checked against its source."""

from __future__ import annotations

import re
import tomllib

import yaml
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tracelab.core.tables import declared_tables

# pip name -> conda-forge name, where they differ.
CONDA_NAMES = {"isal": "python-isal"}
# Dependencies of the workflow's own process, not of its jobs: the conda environment holds only
# what a job imports (workflow/envs/tracelab.yaml says why).
NOT_IN_JOBS = {"snakemake", "pygments"}


def locked_versions() -> dict[str, str]:
    lines = (REPO / "requirements.lock").read_text().splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in pins}


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [entry for entries in project["optional-dependencies"].values()
              for entry in entries if not entry.startswith("tracelab[")]
    return [Requirement(entry) for entry in project["dependencies"] + extras]


def test_every_range_in_pyproject_admits_its_locked_version():
    locked = locked_versions()
    installed = [req for req in project_requirements() if canonicalize_name(req.name) in locked]
    assert len(installed) >= len(project_requirements()) - 1   # nfstream: the bench extra only
    for requirement in installed:
        version = locked[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version), (str(requirement), version)


def test_the_conda_environment_pins_the_locked_versions():
    locked = locked_versions()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [canonicalize_name(Requirement(entry).name) for entry in project["dependencies"]]
    expected = {CONDA_NAMES.get(name, name): locked[name] for name in names
                if name not in NOT_IN_JOBS}
    environment = yaml.safe_load((REPO / "workflow/envs/tracelab.yaml").read_text())
    listed = dict(entry.split("=", 1) for entry in environment["dependencies"])
    assert listed.pop("python") == project["requires-python"].removeprefix(">=")
    assert listed == expected


def test_every_declared_table_is_written_where_a_rule_says():
    rules = "\n".join(path.read_text() for path in (REPO / "workflow/rules").glob("*.smk"))
    tables = declared_tables()
    assert len(tables) >= 9
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


def test_every_rule_runs_the_script_named_after_it_and_docs_list_it():
    rules_text = "\n".join(path.read_text() for path in (REPO / "workflow/rules").glob("*.smk"))
    blocks = re.split(r"^(?:rule|checkpoint) ", rules_text, flags=re.MULTILINE)[1:]
    design = (REPO / "docs/design.md").read_text()
    scripts = set()
    for block in blocks:
        name = block.split(":", 1)[0]
        script = re.search(r'^    script:\n        "\.\./scripts/(\w+)\.py"', block, re.MULTILINE)
        if name == "all":
            continue
        assert script and script.group(1) == name, name
        assert f"`{name}`" in design, f"docs/design.md's table lacks {name}"
        scripts.add(name)
    assert {path.stem for path in (REPO / "workflow/scripts").glob("*.py")} == scripts
