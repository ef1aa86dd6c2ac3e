"""The ticket loop's completions, sent off the slot's path."""

from __future__ import annotations

import io
import json
import logging
import threading
from typing import TYPE_CHECKING, Any, cast

from sluice_fanout.handlers.deferred import (
    FLUSH_ITEMS,
    FLUSH_S,
    Completer,
    DeferredDeletes,
    DeferredProgress,
    DeferredTokens,
)
from sluice_fanout.handlers.progress import Retry
from sluice_fanout.handlers.worker_config import logger

if TYPE_CHECKING:
    from sluice_fanout.handlers.adapters import BatchCounts


class _Tokens:
    def __init__(self, calls: list[str], fail_for: str = "") -> None:
        self._calls = calls
        self._fail_for = fail_for

    def alive(self, token: str) -> bool:
        self._calls.append(f"alive {token}")
        return True

    def succeed(self, token: str, output: str) -> bool:
        if token == self._fail_for:
            raise ConnectionError("Step Functions unreachable")
        self._calls.append(f"succeed {token}")
        return True

    def fail(self, token: str, error: str, cause: str) -> bool:
        self._calls.append(f"fail {token}")
        return True

    def logging_with(self, keys: dict[str, Any]) -> _Tokens:
        return self


class _Queues:
    def __init__(self, calls: list[str]) -> None:
        self._calls = calls

    def delete(self, queue_url: str, receipt_handle: str) -> None:
        self._calls.append(f"delete {receipt_handle}")

    def change_visibility(self, queue_url: str, receipt_handle: str, seconds: int) -> None:
        self._calls.append(f"visibility {receipt_handle}")


def test_each_items_steps_run_in_order_off_the_calling_thread_and_stop_at_a_failure() -> None:
    calls: list[str] = []
    threads: set[int] = set()
    completer = Completer()
    tokens = DeferredTokens(_Tokens(calls, fail_for="t2"), completer)  # type: ignore[arg-type]
    queues = DeferredDeletes(_Queues(calls), completer)  # type: ignore[arg-type]
    assert tokens.alive("t1")  # the liveness check is not deferred
    tokens.succeed("t1", "{}")
    queues.delete("q", "p1")
    completer.add(lambda: threads.add(threading.get_ident()))
    assert calls == ["alive t1"]  # nothing sent before the item's steps are all known
    completer.send()
    tokens.succeed("t2", "{}")
    queues.delete("q", "p2")  # never: its token was not completed
    completer.send()
    tokens.fail("t3", "E", "c")
    queues.delete("q", "p3")
    queues.change_visibility("q", "p4", 5)  # not deferred
    completer.send()
    completer.drain()
    # Sent in order on the completer's thread; what is not deferred went out at once.
    sent = [call for call in calls if not call.startswith(("alive", "visibility"))]
    assert sent == ["succeed t1", "delete p1", "fail t3", "delete p3"]
    assert "visibility p4" in calls
    assert completer.failed
    assert threading.get_ident() not in threads


def test_a_background_failure_is_logged_with_its_own_items_keys() -> None:
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    release = threading.Event()
    completer = Completer()
    try:
        with logger.append_context_keys(index=1, priority="HIGH", execution="arn:e"):
            completer.add(release.wait)
            completer.add(lambda: 1 / 0)
            completer.send()
        # The slot has moved on to the next item when the failure is logged.
        with logger.append_context_keys(index=2, priority="BATCH", execution="arn:e"):
            release.set()
            completer.drain()
    finally:
        logger.removeHandler(handler)
    (line,) = [json.loads(text) for text in sink.getvalue().splitlines()]
    assert "completion failed" in line["message"]
    assert (line["index"], line["priority"]) == (1, "HIGH")


def test_a_deferred_completion_logs_with_its_items_keys() -> None:
    import boto3
    from botocore.stub import Stubber

    from sluice_fanout.handlers.adapters import TaskTokens

    client = boto3.client(
        "stepfunctions", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    try:
        with Stubber(client) as stub:
            stub.add_client_error("send_task_success", "TaskTimedOut")
            tokens = TaskTokens(client, logger).logging_with({"index": 1, "priority": "HIGH"})
            with logger.append_context_keys(index=2, priority="BATCH"):
                assert tokens.succeed("t", "{}") is False
    finally:
        logger.removeHandler(handler)
    (line,) = [json.loads(text) for text in sink.getvalue().splitlines()]
    assert line["message"] == "task token already finished"
    assert (line["index"], line["priority"]) == (1, "HIGH")


class Counts:
    """BatchCounts' write side, recorded."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, int, int, list[int]]] = []
        self.retries: list[tuple[str, int]] = []

    def finished_many(self, execution: str, *, succeeded: int, failed: int, indexes: list[int]) -> None:
        self.writes.append((execution, succeeded, failed, list(indexes)))

    def retrying(self, execution: str, retry: Retry) -> None:
        self.retries.append((execution, retry.index))


def test_a_kept_slot_counts_its_outcomes_in_one_write_per_batch_and_flush() -> None:
    counts, completer, now = Counts(), Completer(), [0.0]
    progress = DeferredProgress(cast("BatchCounts", counts), completer, clock=lambda: now[0])
    for index in range(FLUSH_ITEMS + 5):
        progress.finished("b1" if index % 5 else "b2", index, ok=index % 7 != 0)
    progress.retrying("b1", Retry(99, 10.0, 1, "HTTP 503"))  # a retry is written at once
    now[0] += FLUSH_S  # the rest goes out a second later with the next outcome
    progress.finished("b1", 100, ok=True)
    completer.send()
    completer.drain()
    # The first 25 outcomes: one write per batch; then the other 5 and the late one together.
    assert {w[0]: w[1] + w[2] for w in counts.writes[:2]} == {"b1": 20, "b2": 5}
    assert {w[0]: w[1] + w[2] for w in counts.writes[2:]} == {"b1": 5, "b2": 1}
    assert sum(w[1] + w[2] for w in counts.writes) == FLUSH_ITEMS + 6
    assert sum(w[2] for w in counts.writes) == len([i for i in range(FLUSH_ITEMS + 5) if i % 7 == 0])
    assert sorted(i for w in counts.writes for i in w[3]) == [*range(FLUSH_ITEMS + 5), 100]
    assert counts.retries == [("b1", 99)]
