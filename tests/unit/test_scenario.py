"""Scenario files: valid ones load, invalid ones say which field and value is wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from localcloud.scenario import DEMO, Batch, ScenarioError, load

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_scenario_loads() -> None:
    scenario = load(ROOT / "examples" / "scenario-backlog.json")
    assert scenario.batches == (
        Batch(start_s=0, counts={"BATCH": 60}),
        Batch(start_s=5, counts={"HIGH": 12}, direct=4),
    )
    assert scenario.api.concurrency_limit == 4
    assert scenario.items_total == 76
    assert scenario.source == "auto"


def test_the_large_s3_example_loads() -> None:
    scenario = load(ROOT / "examples" / "scenario-large-s3.json")
    assert scenario.source == "s3"
    assert scenario.items_total == 20_000


def test_a_large_batch_from_s3_needs_no_item_list(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps({"source": "s3", "batches": [{"counts": {"BATCH": 30_000}, "direct": 20_000}]})
    )
    scenario = load(path)
    assert scenario.source == "s3"
    assert scenario.items_total == 50_000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "non-empty 'batches'"),
        ({"batches": [{"counts": {"HIGH": -1}}]}, "batches[0].counts"),
        (
            {"batches": [{"start_s": "soon", "counts": {}}]},
            "batches[0].start_s must be a number >= 0, got 'soon'",
        ),
        ({"batches": [{"counts": {}}], "api": {"limit": 3}}, "api has an unknown field"),
        ({"batches": [{"counts": {}}], "dispatch": "lifo"}, "got 'lifo'"),
        ({"batches": [{"counts": {}}], "capacity_changes": [[60, 0]]}, "capacity_changes must be"),
        ({"batches": [{"counts": {}}], "capacity_changes": [[-1, 4]]}, "got [[-1, 4]]"),
        (
            {"batches": [{"counts": {}}], "source": "S3 please"},
            "source must be one of ['inline', 's3', 'auto'] (auto: inline up to 256 KiB of input, "
            "else S3), got 'S3 please'",
        ),
        ({"batches": [{"counts": {}}], "source": None}, "got None"),
    ],
)
def test_invalid_scenarios_name_the_problem(data: dict[str, object], message: str, tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ScenarioError, match=re.escape(message)):
        load(path)


def test_scaling_keeps_every_kind_of_item() -> None:
    small = DEMO.scaled(0.1)
    assert small.batches[0].counts == {"BATCH": 4, "NORMAL": 2}
    assert small.batches[0].reject == {"NORMAL": 1}
    assert small.batches[1].counts == {"HIGH": 1}


def test_capacity_changes_load_in_time_order(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps({"batches": [{"counts": {"BATCH": 1}}], "capacity_changes": [[180, 8], [60, 4]]})
    )
    assert load(path).capacity_changes == ((60.0, 4), (180.0, 8))
