"""The calls-per-second decision (GCRA without burst) as a table of plain values."""

from __future__ import annotations

import json

import pytest

from sluice_fanout.handlers import contract
from sluice_fanout.handlers.rate import Denied, Grant, interval_for, reserve
from sluice_fanout.handlers.worker_config import WorkerConfig, WorkerConfigError


@pytest.mark.parametrize(
    ("tat", "now", "interval", "max_wait", "expected"),
    [
        # Never used: the call goes now, the next one an interval later.
        (None, 10.0, 0.5, 5.0, Grant(at=10.0, wait=0.0, tat=10.5)),
        # A TAT in the past is not banked: no burst after idle time.
        (3.0, 10.0, 0.5, 5.0, Grant(at=10.0, wait=0.0, tat=10.5)),
        # Exactly due.
        (10.0, 10.0, 0.5, 5.0, Grant(at=10.0, wait=0.0, tat=10.5)),
        # Ahead: wait for it and push the TAT past it.
        (12.0, 10.0, 0.5, 5.0, Grant(at=12.0, wait=2.0, tat=12.5)),
        # A wait exactly at the limit is still granted.
        (15.0, 10.0, 0.5, 5.0, Grant(at=15.0, wait=5.0, tat=15.5)),
        # Beyond it: nothing reserved, the wait reported.
        (15.5, 10.0, 0.5, 5.0, Denied(wait=5.5)),
        # max_wait 0: only a slot that is due now.
        (10.1, 10.0, 0.5, 0.0, Denied(wait=pytest.approx(0.1))),
    ],
)
def test_reserve(tat: float | None, now: float, interval: float, max_wait: float, expected: object) -> None:
    assert reserve(tat, now, interval, max_wait) == expected


@pytest.mark.parametrize(
    ("rate", "interval"),
    [(1.0, 1.05), (4.0, 0.2625), (0.5, 2.1), (1_000.0, 0.00105)],
)
def test_the_interval_keeps_50_ms_of_each_second_as_slack(rate: float, interval: float) -> None:
    assert interval_for(rate) == pytest.approx(interval)


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan")])
def test_a_rate_that_is_not_positive_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="calls_per_second must be > 0"):
        interval_for(rate)


def test_a_due_slot_is_set_the_lead_ahead_and_a_later_one_is_kept() -> None:
    assert reserve(None, 10.0, 0.5, 5.0, lead=0.05) == Grant(at=10.05, wait=pytest.approx(0.05), tat=10.55)
    assert reserve(10.02, 10.0, 0.5, 5.0, lead=0.05) == Grant(at=10.05, wait=pytest.approx(0.05), tat=10.55)
    assert reserve(12.0, 10.0, 0.5, 5.0, lead=0.05) == Grant(at=12.0, wait=2.0, tat=12.5)


def test_back_to_back_calls_are_spaced_one_interval_apart() -> None:
    tat: float | None = None
    slots = []
    for _ in range(5):
        grant = reserve(tat, 100.0, 0.25, 60.0)
        assert isinstance(grant, Grant)
        slots.append(grant.at)
        tat = grant.tat
    assert slots == [100.0, 100.25, 100.5, 100.75, 101.0]


WORKER_ENV = {
    contract.ENV_QUEUES: json.dumps([{"priority": "HIGH", "url": "u", "arn": "a", "dlq_url": "d"}]),
    contract.ENV_IDEMPOTENCY_TABLE: "t",
    contract.ENV_DISPATCH: contract.DISPATCH_YIELD,
}


@pytest.mark.parametrize(("raw", "expected"), [(None, None), ("", None), ("4", 4.0), ("0.25", 0.25)])
def test_the_worker_reads_its_rate(raw: str | None, expected: float | None) -> None:
    env = WORKER_ENV | ({} if raw is None else {contract.ENV_CALLS_PER_SECOND: raw})
    assert WorkerConfig.from_env(env).calls_per_second == expected


@pytest.mark.parametrize("raw", ["0", "-1", "nan", "inf", "four"])
def test_the_worker_refuses_a_rate_that_is_not_a_positive_number(raw: str) -> None:
    with pytest.raises(WorkerConfigError, match=contract.ENV_CALLS_PER_SECOND):
        WorkerConfig.from_env(WORKER_ENV | {contract.ENV_CALLS_PER_SECOND: raw})
