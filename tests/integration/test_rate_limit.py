"""A calls-per-second limit, measured by the API it protects, on the embedded AWS.

The simulated legacy API admits at most R calls in any one-second window and answers 429 to
the rest (recorded with in_flight == 0); its concurrency limit is set well above Sluice's so
that only the rate can refuse a call. Sluice is configured with the same R.

What this cannot show: DynamoDB's real latency and its write limit on the one limiter item, clock
differences between Lambda hosts (here every sandbox shares one clock), and network delay
between the worker and the API beyond the loopback's. Here, unlike on Lambda, cold sandboxes
set up their clients on the same 2 cores as a sandbox sleeping until its slot, and can wake it
later than the limiter's 50 ms allowance: the stack runs at concurrency 4, not more, so fewer
sandboxes start at once (at 6, one run in a few saw a first call 72 ms late and a refusal).

This test used to fail about one run in five (issue 16). The likely failure, a call that starts
late for its slot and shares a one-second window with the next `rate` calls, now has two things
against it: a call that wakes more than 25 ms after its slot reserves another (attempt._wait_for_slot), and
the embedded AWS no longer stalls each request 40 ms (Nagle's algorithm against delayed ACK in
its HTTP front), which had taken most of the 50 ms lead a reservation is granted. Which of them
removed the failures is not proven: with the stall back and the guard off, 10 runs in a row
passed here too.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from localcloud.legacy_api import ApiProfile, Call
from localcloud.runner import RunResult, run_scenario
from localcloud.scenario import Batch, Scenario

pytestmark = pytest.mark.slow

RATE = 4
ITEMS = {"HIGH": 6, "NORMAL": 8, "BATCH": 10}
RATED = Scenario(
    name="rate-limit",
    batches=(Batch(start_s=0, counts=ITEMS),),
    # Without the limit Sluice would start about 4 / 0.15 = 26 calls a second.
    api=ApiProfile(concurrency_limit=12, calls_per_second=RATE, service_time_s=0.15),
    stack_config={"sluice:concurrency": "4", "sluice:callsPerSecond": str(RATE)},
    deadline_s=60,
)


@pytest.fixture(scope="module")
def rated() -> RunResult:
    return run_scenario(RATED)


def max_calls_in_one_second(calls: list[Call]) -> int:
    """The most calls admitted in any sliding one-second window (as the API counts them)."""
    starts = sorted(c.start for c in calls)
    return max(len([t for t in starts[i:] if t - first < 1.0]) for i, first in enumerate(starts))


def timeline(calls: list[Call]) -> str:
    """Each call's start (from the first), status and calls in flight: the story of a refusal."""
    ordered = sorted(calls, key=lambda c: c.start)
    first = ordered[0].start
    return "\n".join(f"{c.start - first:7.3f} {c.status} {c.in_flight} {c.item_id}" for c in ordered)


def test_every_item_is_done_and_the_api_refused_nothing(rated: RunResult) -> None:
    (execution,) = rated.executions
    assert execution.status == "SUCCEEDED"
    summary: dict[str, Any] = execution.output
    total = sum(ITEMS.values())
    assert summary["total"] == total
    assert sorted(r["index"] for r in execution.results or []) == list(range(total))
    assert summary["failures"] == []
    refused = [c for c in rated.calls if c.in_flight == 0 and c.status == 429]
    assert refused == [], timeline(rated.calls)
    assert sorted(c.key for c in rated.calls if c.status == 200) == sorted({c.key for c in rated.calls})
    assert len(rated.calls) == total  # one call per item: no retry was needed


def test_no_one_second_window_holds_more_than_the_rate(rated: RunResult) -> None:
    # Every request Sluice sent, refused ones included: the API's own limit must not be what
    # keeps the count down.
    peak = max_calls_in_one_second(rated.calls)
    starts = sorted(c.start for c in rated.calls)
    achieved = (len(starts) - 1) / (starts[-1] - starts[0])
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    print(
        f"rate limit {RATE}/s: peak {peak} calls in 1 s, achieved {achieved:.2f} calls/s over "
        f"{len(starts)} calls, smallest gap {min(gaps) * 1000:.0f} ms"
    )
    assert peak <= RATE
    # The limiter is not merely slow: it runs close to the rate (spacing is (1 s + 50 ms) / R).
    assert achieved >= 0.8 * RATE
