"""One execution of 1,000 items end to end on the embedded AWS: the size at which the emulator's
per-item costs (a copy of the batch per item, a thread per Task, an HTTP request per
integration) used to stall a run.

Real parts: the deployed stack, moto's interpreter running the real definition over an S3
source, the worker and aggregate from their zips in sandboxes, the legacy-API simulator on
127.0.0.1. Figures of speed live in `python -m localcloud scale`; this test only proves that
every item is accounted for at this size, that the threads stay bounded by the Map's
concurrency, not the batch, and that priority holds inside a batch five times larger than the
Map opens at once. What it cannot prove: AWS's own scaling of Map runs and Lambda.
"""

from __future__ import annotations

import threading

import pytest

from localcloud.legacy_api import ApiProfile, LegacyApi
from localcloud.report import build_report, first_calls
from localcloud.runner import ExecutionRecord, RunResult, run_scenario
from localcloud.scenario import Batch, Scenario

pytestmark = pytest.mark.slow

ITEMS = 1_000
MAP_CONCURRENCY = 200
LARGE = Scenario(
    name="large",
    # Worst order first: the HIGH items come last of the throttled ones, behind 450 others.
    batches=(Batch(start_s=0, counts={"BATCH": 300, "NORMAL": 150, "HIGH": 50}, direct=500),),
    api=ApiProfile(concurrency_limit=16, service_time_s=0.005),
    source="s3",
    stack_config={"sluice:mapMaxConcurrency": str(MAP_CONCURRENCY)},
    deadline_s=400,
)


@pytest.fixture(scope="module")
def large() -> tuple[RunResult, int]:
    peak = 0

    def tick(_api: LegacyApi, _executions: list[ExecutionRecord]) -> None:
        nonlocal peak
        peak = max(peak, threading.active_count())

    return run_scenario(LARGE, tick), peak


def test_every_item_of_a_large_batch_is_accounted_for(large: tuple[RunResult, int]) -> None:
    result, _ = large
    report = build_report(result)
    assert report["items"] == {
        "total": ITEMS,
        "throttled": 500,
        "direct": 500,
        "succeeded": ITEMS,
        "failed": 0,
        "lost": 0,
    }
    assert report["downstream"]["over_limit"] == 0
    assert report["downstream"]["duplicate_calls"] == 0
    assert report["downstream"]["calls_ok"] == 500
    (execution,) = result.executions
    assert execution.status == "SUCCEEDED"
    assert [r["index"] for r in execution.results or []] == list(range(ITEMS))


def test_high_items_are_worked_first_in_a_batch_larger_than_the_map(large: tuple[RunResult, int]) -> None:
    """The order function sorts the batch before the Map opens it: the Map's first 200 children
    are the 50 HIGH and 150 NORMAL items. Unsorted, the HIGH items (indexes 450-499) would not be
    opened until 250 calls were done."""
    result, _ = large
    positions = [n for n, call in enumerate(first_calls(result.calls)) if call.priority == "HIGH"]
    assert len(positions) == 50
    assert max(positions) < MAP_CONCURRENCY


def test_threads_are_bounded_by_the_map_concurrency_not_the_batch(large: tuple[RunResult, int]) -> None:
    _, peak = large
    # One thread per open child (the Map's workers), the HTTP front's connections, the
    # mappings' pollers and the runner's own: well under one per item.
    assert 0 < peak <= MAP_CONCURRENCY + 150
