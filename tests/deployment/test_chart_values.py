"""values.yaml against the templates and the docs: every key used, every use defined."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
import yaml

import gpushare
from tests.deployment import chart

DOCS = chart.ROOT / "docs" / "deployment.md"


def all_references() -> dict[tuple[str, ...], set[str]]:
    """values path → the template files that use it."""
    found: dict[tuple[str, ...], set[str]] = {}
    for path in chart.template_files():
        for reference in chart.values_references(path.read_text()):
            found.setdefault(reference, set()).add(path.name)
    return found


def leaf_paths(values: dict[str, Any], references: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
    """The keys an admin sets: nested maps are walked down as far as templates read into them."""
    leaves: set[tuple[str, ...]] = set()

    def walk(node: Any, path: tuple[str, ...]) -> None:
        deeper = any(ref[: len(path)] == path and len(ref) > len(path) for ref in references)
        if isinstance(node, dict) and node and (deeper or not path):
            for key, child in node.items():
                walk(child, (*path, key))
        else:
            leaves.add(path)

    walk(values, ())
    return leaves


def test_values_parse_to_a_mapping() -> None:
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    assert isinstance(values, dict)
    assert {"image", "timekeeper", "webhook", "sidecar", "nodemanager"} <= set(values)


def test_every_values_path_used_by_a_template_exists() -> None:
    values = chart.load_values()
    missing = []
    for reference, files in sorted(all_references().items()):
        try:
            chart.lookup(values, reference)
        except KeyError as err:
            missing.append(f"{'.'.join(reference)} (used in {', '.join(sorted(files))}; {err})")
    assert missing == []


def test_every_values_key_is_used_by_a_template() -> None:
    references = set(all_references())
    unused = []
    for leaf in sorted(leaf_paths(chart.load_values(), references)):
        used = any(ref[: len(leaf)] == leaf or leaf[: len(ref)] == ref for ref in references if ref)
        if not used:
            unused.append(".".join(leaf))
    assert unused == [], "values keys that no template reads"


def test_every_values_key_is_documented_and_no_other() -> None:
    references = set(all_references())
    leaves = {".".join(p) for p in leaf_paths(chart.load_values(), references)}
    table = DOCS.read_text().split("## Values", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", table, re.MULTILINE))
    assert sorted(leaves - documented) == [], "values keys missing from docs/deployment.md"
    assert sorted(documented - leaves) == [], "documented keys that values.yaml lacks"


def test_chart_versions_agree_with_the_package() -> None:
    meta = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())
    project = tomllib.loads((chart.ROOT / "pyproject.toml").read_text())["project"]
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "gpushare"
    assert meta["appVersion"] == gpushare.__version__ == project["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])


@pytest.mark.parametrize(
    ("references", "expected"),
    [
        pytest.param(
            {("a", "b"), ("a", "c", "d")},
            {("a", "b"), ("a", "c", "d"), ("e",)},
            id="walked-where-read-deeper",
        ),
        pytest.param(
            {("a", "b"), ("a", "c")}, {("a", "b"), ("a", "c"), ("e",)}, id="map-read-whole"
        ),
        pytest.param({("a",)}, {("a",), ("e",)}, id="top-level-map-read-whole"),
    ],
)
def test_leaf_paths_follow_the_references(
    references: set[tuple[str, ...]], expected: set[tuple[str, ...]]
) -> None:
    values = {"a": {"b": 1, "c": {"d": 2}}, "e": {}}
    assert leaf_paths(values, references) == expected
