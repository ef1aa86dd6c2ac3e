"""Metrics by key stay bounded: a backlog names only the few keys with the most items waiting,
whatever the number of keys, and the report goes out once per interval."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice_fanout.handlers import contract
from sluice_fanout.handlers.dispatch_ticket import report_backlog
from sluice_fanout.handlers.fair import Backlog, backlog
from sluice_fanout.handlers.metrics import WorkerMetrics


def test_the_largest_keys_are_named_and_the_rest_summed() -> None:
    counts = [("a", 3), ("b", 9), ("c", 0), ("d", 9), ("e", 1)]
    assert backlog(counts, 2) == Backlog(keys=4, top=(("b", 9), ("d", 9)), rest=4)
    assert backlog(counts, 10) == Backlog(keys=4, top=(("b", 9), ("d", 9), ("a", 3), ("e", 1)), rest=0)
    assert backlog([], 5) == Backlog(keys=0, top=(), rest=0)


@given(
    st.dictionaries(st.text(min_size=1, max_size=8), st.integers(0, 10_000), max_size=300), st.integers(0, 8)
)
def test_a_backlog_is_bounded_and_loses_no_item(waiting: dict[str, int], top: int) -> None:
    result = backlog(waiting.items(), top)
    assert len(result.top) <= top
    assert result.keys == sum(1 for n in waiting.values() if n > 0)
    assert sum(n for _, n in result.top) + result.rest == sum(waiting.values())
    named = [n for _, n in result.top]
    assert named == sorted(named, reverse=True)
    unnamed = [n for key, n in waiting.items() if key not in dict(result.top)]
    assert all(n <= min(named) for n in unnamed) if named else True


def emf(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_only_the_named_keys_get_a_key_dimension(capsys: pytest.CaptureFixture[str]) -> None:
    metrics = WorkerMetrics("fn")
    metrics.backlog("BATCH", backlog([(f"tenant-{n}", n) for n in range(1, 1001)], contract.KEY_BACKLOG_TOP))
    metrics.flush()
    lines = emf(capsys)
    keyed = [line for line in lines if contract.DIMENSION_KEY in line]
    assert {line[contract.DIMENSION_KEY] for line in keyed} == {f"tenant-{n}" for n in range(996, 1001)}
    assert all(line[contract.METRIC_KEY_WAITING_ITEMS] == [int(line["Key"].split("-")[1])] for line in keyed)
    (summary,) = [line for line in lines if contract.DIMENSION_KEY not in line]
    assert summary[contract.METRIC_KEYS_WAITING] == [1000]
    assert summary[contract.METRIC_OTHER_KEYS_WAITING_ITEMS] == [sum(range(1, 996))]
    assert summary[contract.DIMENSION_PRIORITY] == "BATCH"


class Keyed:
    """KeyedItems' report side: a turn every other ask, and fixed counts by priority."""

    def __init__(self, counts: dict[str, list[tuple[str, int]]]) -> None:
        self.counts = counts
        self.asks = 0

    def report_turn(self, interval_s: float) -> bool:
        assert interval_s == contract.KEY_BACKLOG_INTERVAL_S
        self.asks += 1
        return self.asks % 2 == 1

    def waiting(self, priority: str) -> tuple[list[tuple[str, int]], bool]:
        return self.counts.get(priority, []), True


class Deps:
    def __init__(self, keyed: Keyed) -> None:
        self.keyed = keyed
        self.metrics = WorkerMetrics("fn")
        self.config = type("Config", (), {"priorities": ["HIGH", "BATCH"]})()


def test_the_report_covers_every_priority_once_per_turn(capsys: pytest.CaptureFixture[str]) -> None:
    deps: Any = Deps(Keyed({"BATCH": [("a", 4), ("b", 1)]}))
    report_backlog(deps)
    lines = emf(capsys)
    assert {(line["Priority"], line.get("Key")) for line in lines} == {
        ("HIGH", None),
        ("BATCH", None),
        ("BATCH", "a"),
        ("BATCH", "b"),
    }
    report_backlog(deps)  # not this sandbox's turn
    assert emf(capsys) == []
