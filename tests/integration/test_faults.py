"""Faults a user will meet, survived on the embedded AWS: every item in the parent's aggregate,
every execution ended, no duplicate call to the legacy API.

One run carries most faults at once (they are independent per item) so the suite pays for one
deploy; the callback timeout needs a slow API and gets its own run. What cannot be shown here:
real Lambda crash semantics beyond a killed process, and Step Functions' own throttling rates
(the throttled SendTaskSuccess is injected into the embedded AWS, see localcloud/faults.py).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import pytest

from localcloud.legacy_api import ApiProfile, Call
from localcloud.runner import RunResult, run_scenario
from localcloud.scenario import Batch, Scenario

pytestmark = pytest.mark.slow

FAULTY_ITEMS = (
    {"id": "err-then-ok", "priority": "NORMAL", "fail_first": 2},
    {"id": "err-always", "priority": "BATCH", "fail_first": 99},
    {"id": "hang-then-ok", "priority": "HIGH", "hang_first": 1},
    {"id": "hang-always", "priority": "NORMAL", "hang_first": 99},
    {"id": "throttled", "priority": "NORMAL", "throttle_first": 1, "retry_after": 4},
    {"id": "big", "priority": "BATCH", "result_bytes": 300_000},
    {"id": "rejected", "priority": "HIGH", "reject": True},
    {"id": "odd-priority", "priority": "URGENT"},
    {"id": "completion-throttled", "priority": "HIGH"},
    {"id": "completion-hangs", "priority": "NORMAL"},
)
CHAOS = Scenario(
    name="chaos",
    batches=(Batch(start_s=0, counts={"HIGH": 3, "NORMAL": 3, "BATCH": 4}, items=FAULTY_ITEMS),),
    # The API's limit is above Sluice's so a call the client gave up on (it lingers on the server
    # until `timeout_s`) never pushes a later call over it: refusals would blur each item's story.
    api=ApiProfile(concurrency_limit=4, service_time_s=0.1, timeout_s=1.5),
    stack_config={
        "sluice:concurrency": "2",
        # A short worker timeout keeps the crashed item's redelivery (6x: 18 s) inside the test.
        "sluice:workerTimeoutSeconds": "3",
        "sluice:httpTimeoutSeconds": "1",
        "sluice:maxAttempts": "3",
        "sluice:retryBaseSeconds": "1",
        "sluice:retryMaxSeconds": "2",
    },
    completion_faults={"completion-throttled": "throttle:2", "completion-hangs": "hang"},
    malformed_payloads=2,
    deadline_s=100,
)
ITEMS_TOTAL = 10 + len(FAULTY_ITEMS)


@pytest.fixture(scope="module")
def chaos() -> RunResult:
    return run_scenario(CHAOS)


def outcomes(run: RunResult, batch: int = 0) -> dict[Any, dict[str, Any]]:
    """The aggregate's verdict per item id: its result entry or its failure entry."""
    (execution,) = [e for e in run.executions if e.batch == batch]
    summary = execution.output
    ids = {i: item["id"] for i, item in enumerate(execution.items)}
    verdicts: dict[Any, dict[str, Any]] = {ids[r["index"]]: r for r in execution.results or []}
    for failure in summary["failures"]:
        verdicts[ids[failure["index"]]] |= {"error": failure["error"], "cause": failure["cause"]}
    return verdicts


def exhausted_cause(run: RunResult, item_id: str) -> str:
    """The cause the worker sent with Sluice.RetriesExhausted. moto's interpreter drops
    SendTaskFailure's cause (see docs/embedded-aws.md), so it is read from the worker's log."""
    (execution,) = [e for e in run.executions if e.batch == 0]
    index = next(i for i, item in enumerate(execution.items) if item["id"] == item_id)
    (record,) = [
        r for r in run.worker_logs if r.get("message") == "attempts exhausted" and r.get("index") == index
    ]
    return str(record["cause"])


def calls_by_item(run: RunResult) -> dict[Any, list[Call]]:
    by_item: dict[Any, list[Call]] = defaultdict(list)
    for call in sorted(run.calls, key=lambda c: c.start):
        by_item[call.item_id].append(call)
    return by_item


def test_every_item_is_in_the_aggregate_and_the_execution_ended(chaos: RunResult) -> None:
    (execution,) = chaos.executions
    assert execution.status == "SUCCEEDED"
    summary = execution.output
    assert summary["total"] == ITEMS_TOTAL
    assert sorted(r["index"] for r in execution.results or []) == list(range(ITEMS_TOTAL))
    failed = {item_id for item_id, verdict in outcomes(chaos).items() if verdict["status"] == "FAILED"}
    assert failed == {"err-always", "hang-always", "rejected", "odd-priority"}


def test_no_item_was_done_twice_by_the_api(chaos: RunResult) -> None:
    assert [c for c in chaos.calls if c.in_flight == 0] == []  # and none refused over the limit
    done = Counter(c.key for c in chaos.calls if c.status == 200)
    assert max(done.values()) == 1
    # Not even answered from the API's own Idempotency-Key store: Sluice never asked twice.
    assert [c for c in chaos.calls if c.replayed] == []


def test_500s_are_retried_with_backoff_then_fail_with_the_reason(chaos: RunResult) -> None:
    by_item, verdicts = calls_by_item(chaos), outcomes(chaos)
    assert [c.status for c in by_item["err-then-ok"]] == [500, 500, 200]
    assert verdicts["err-then-ok"]["status"] == "SUCCEEDED"
    gaps = [b.start - a.end for a, b in zip(by_item["err-then-ok"], by_item["err-then-ok"][1:], strict=False)]
    assert all(gap >= 0.5 for gap in gaps), gaps  # backoff (1 s, then 2 s), not a hot loop
    assert [c.status for c in by_item["err-always"]] == [500, 500, 500]  # maxAttempts
    assert verdicts["err-always"]["error"] == "Sluice.RetriesExhausted"
    assert "HTTP 500" in exhausted_cause(chaos, "err-always")


def test_timeouts_are_retried_then_fail_with_the_reason(chaos: RunResult) -> None:
    by_item, verdicts = calls_by_item(chaos), outcomes(chaos)
    assert [c.status for c in by_item["hang-then-ok"]] == [504, 200]
    assert verdicts["hang-then-ok"]["status"] == "SUCCEEDED"
    assert len(by_item["hang-always"]) == 3
    assert verdicts["hang-always"]["error"] == "Sluice.RetriesExhausted"
    assert "timed out" in exhausted_cause(chaos, "hang-always").lower()


def test_a_429_s_retry_after_is_honoured_through_the_message_visibility(chaos: RunResult) -> None:
    first, second = calls_by_item(chaos)["throttled"]
    assert (first.status, second.status) == (429, 200)
    assert first.in_flight > 0  # the item's own 429, not a refusal over the limit
    assert second.start - first.end >= 4 - 0.5  # Retry-After: 4
    # The wait was the message's visibility, set by the worker, not a sleep in the function.
    retries = [r for r in chaos.worker_logs if r.get("message") == "will retry" and r.get("delay_s") == 4]
    assert len(retries) == 1
    assert outcomes(chaos)["throttled"]["status"] == "SUCCEEDED"


def test_a_throttled_send_task_success_is_retried_and_the_token_completed_once(chaos: RunResult) -> None:
    assert chaos.completion_calls["completion-throttled"] == 3  # two throttled, then accepted
    assert len(calls_by_item(chaos)["completion-throttled"]) == 1
    assert outcomes(chaos)["completion-throttled"]["status"] == "SUCCEEDED"


def test_a_worker_killed_mid_item_is_redelivered_without_a_second_call(chaos: RunResult) -> None:
    """SendTaskSuccess hangs past the worker's timeout: the sandbox dies after the API did the
    work. The message comes back after its visibility timeout and the stored result answers."""
    assert chaos.completion_calls["completion-hangs"] == 2
    assert [c.status for c in calls_by_item(chaos)["completion-hangs"]] == [200]
    assert outcomes(chaos)["completion-hangs"]["status"] == "SUCCEEDED"
    replays = [r for r in chaos.worker_logs if r.get("message") == "processed" and r.get("replayed")]
    assert len(replays) == 1


def test_malformed_messages_go_to_the_dlq_with_the_reason_or_fail_their_task(chaos: RunResult) -> None:
    junk = [d for d in chaos.dead_letters if d["reason"]]
    assert len(junk) == 2 * len(["HIGH", "NORMAL", "BATCH"])
    assert all("token" in d["reason"] or "not JSON" in d["reason"] for d in junk)
    # An unknown priority has a token: its task fails with a clear error instead.
    verdict = outcomes(chaos)["odd-priority"]
    assert verdict["error"] == "Sluice.UnknownPriority"
    assert "URGENT" in json.dumps(verdict) or "HIGH, NORMAL, BATCH" in verdict["cause"]
    # Nothing real was dead-lettered.
    assert len(chaos.dead_letters) == len(junk)


def test_a_result_over_256_kib_is_stored_in_s3_and_resolved_by_the_aggregate(chaos: RunResult) -> None:
    (execution,) = chaos.executions
    verdict = outcomes(chaos)["big"]
    assert verdict["status"] == "SUCCEEDED"
    pointer = verdict["result"]["sluice_result_s3"]
    (located,) = execution.output["results_in_s3"]
    assert located["key"] == pointer["key"]
    assert located["bytes"] == pointer["bytes"] > 300_000


def test_permanent_failures_are_not_retried(chaos: RunResult) -> None:
    assert [c.status for c in calls_by_item(chaos)["rejected"]] == [400]
    assert outcomes(chaos)["rejected"]["error"] == "Sluice.PermanentFailure"


SLOW = Scenario(
    name="slow",
    batches=(
        Batch(start_s=0, counts={"HIGH": 6}),
        # Keeps the run (and the worker) going after the first batch's tasks have timed out.
        Batch(start_s=9, counts={"NORMAL": 1}),
    ),
    api=ApiProfile(concurrency_limit=1, service_time_s=2.0, service_jitter=0.0),
    stack_config={"sluice:callbackTimeoutSeconds": "5"},
    deadline_s=60,
)
CALLBACK_TIMEOUT_S = 5


def test_a_callback_timeout_fails_the_item_with_states_timeout_and_it_is_not_worked_after() -> None:
    run = run_scenario(SLOW)
    assert [e.status for e in run.executions] == ["SUCCEEDED", "SUCCEEDED"]
    verdicts = outcomes(run)
    assert len(verdicts) == 6
    timed_out = {item_id for item_id, v in verdicts.items() if v.get("error") == "States.Timeout"}
    succeeded = {item_id for item_id, v in verdicts.items() if v["status"] == "SUCCEEDED"}
    # Limit 1 at 2 s a call cannot finish six items within 5 s.
    assert timed_out
    assert timed_out | succeeded == set(verdicts)
    assert outcomes(run, batch=1)["b1-normal-0"]["status"] == "SUCCEEDED"
    # A task that timed out is not called afterwards: the heartbeat answers TaskTimedOut and the
    # worker skips it, instead of doing work whose result nobody will read.
    (first,) = [e for e in run.executions if e.batch == 0]
    index_of = {item["id"]: i for i, item in enumerate(first.items)}
    for item_id in timed_out:
        key = f"{first.arn}#{index_of[item_id]}"
        deadline = run.enqueued_at[key] + CALLBACK_TIMEOUT_S + 1.0
        assert all(c.start <= deadline for c in run.calls if c.key == key), item_id
    skipped = [r for r in run.worker_logs if r.get("message") == "task already ended; item not worked"]
    assert skipped
