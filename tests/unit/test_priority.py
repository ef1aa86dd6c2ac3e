"""The yield rule and the retry budget, as tables."""

from __future__ import annotations

import pytest

from sluice_fanout.handlers.priority import (
    Process,
    Yield,
    attempts_exhausted,
    clamp_visibility,
    decide,
    higher_priorities,
)
from sluice_fanout.handlers.priority import retry_delay as delay_for

PRIORITIES = ["HIGH", "NORMAL", "BATCH"]


@pytest.mark.parametrize(
    ("priority", "receive_count", "depths", "expected"),
    [
        ("HIGH", 1, {"HIGH": 5, "NORMAL": 5, "BATCH": 5}, Process(forced=False)),
        ("NORMAL", 1, {"HIGH": 0, "NORMAL": 9, "BATCH": 9}, Process(forced=False)),
        ("NORMAL", 1, {"HIGH": 1}, Yield(delay_seconds=2)),
        ("NORMAL", 2, {"HIGH": 1}, Yield(delay_seconds=2)),
        ("NORMAL", 3, {"HIGH": 1}, Process(forced=True)),
        ("NORMAL", 7, {"HIGH": 1}, Process(forced=True)),
        ("BATCH", 1, {"HIGH": 0, "NORMAL": 4}, Yield(delay_seconds=2)),
        ("BATCH", 1, {"HIGH": 0, "NORMAL": 0, "BATCH": 100}, Process(forced=False)),
        ("BATCH", 1, {}, Process(forced=False)),
        ("BATCH", 3, {"NORMAL": 1}, Process(forced=True)),
    ],
)
def test_decide(priority: str, receive_count: int, depths: dict[str, int], expected: object) -> None:
    decision = decide(
        priority=priority,
        priorities=PRIORITIES,
        receive_count=receive_count,
        force_after_receives=3,
        visible_depths=depths,
        yield_delay_seconds=2,
    )
    assert decision == expected


def test_decide_reads_only_strictly_higher_depths() -> None:
    asked: list[str] = []

    class Spy(dict[str, int]):
        def get(self, key: str, default: int | None = None) -> int:  # type: ignore[override]
            asked.append(key)
            return 0

    decide(
        priority="NORMAL",
        priorities=PRIORITIES,
        receive_count=1,
        force_after_receives=3,
        visible_depths=Spy(),
        yield_delay_seconds=2,
    )
    assert asked == ["HIGH"]


def test_higher_priorities() -> None:
    assert higher_priorities("HIGH", PRIORITIES) == []
    assert higher_priorities("BATCH", PRIORITIES) == ["HIGH", "NORMAL"]


@pytest.mark.parametrize(
    ("receive_count", "force_after", "max_attempts", "expected"),
    [(1, 3, 3, False), (4, 3, 3, False), (5, 3, 3, True), (6, 3, 3, True), (1, 1, 1, True), (2, 2, 1, True)],
)
def test_attempts_exhausted(receive_count: int, force_after: int, max_attempts: int, expected: bool) -> None:
    assert (
        attempts_exhausted(
            receive_count=receive_count, force_after_receives=force_after, max_attempts=max_attempts
        )
        is expected
    )


@pytest.mark.parametrize(
    ("receive_count", "expected"), [(1, 2), (2, 4), (3, 8), (4, 16), (6, 60), (10_000, 60)]
)
def test_retry_delay_doubles_then_caps(receive_count: int, expected: int) -> None:
    assert delay_for(receive_count=receive_count, base_seconds=2, max_seconds=60) == expected


@pytest.mark.parametrize(("seconds", "expected"), [(-5, 0), (0.4, 0), (2.6, 3), (10**9, 43_200)])
def test_clamp_visibility(seconds: float, expected: int) -> None:
    assert clamp_visibility(seconds) == expected
