"""The worker against moto: real SQS semantics and the real child workflow run by moto's
Step Functions interpreter (the ItemProcessor Sluice deploys, started as its own state machine).

What this cannot prove: IAM (moto does not enforce it), Lambda's own event source mapping (the
test receives messages itself and hands them over in the ESM's event shape), quotas.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from moto import mock_aws

from localcloud.moto_fixes import atomic_dynamodb_writes, aws_like_heartbeats
from sluice_fanout.components.definition import build_item_processor
from sluice_fanout.handlers.adapters import BatchCounts, DynamoRateLimiter, SqsQueues, TaskTokens
from sluice_fanout.handlers.attempt import THROTTLE_HOLD_MAX_S
from sluice_fanout.handlers.contract import (
    ATTR_DEAD_LETTER_REASON,
    DEFAULT_THROTTLE_RULE,
    EVENT_SLOT_TIME,
    RESULT_POINTER_FIELD,
)
from sluice_fanout.handlers.metrics import WorkerMetrics
from sluice_fanout.handlers.once import OncePerItem, ResultSpill
from sluice_fanout.handlers.rate import (
    RATE_LATE_S,
    RATE_LATE_TRIES,
    RATE_WINDOW_ALLOWANCE_S,
    Denied,
    Grant,
    interval_for,
)
from sluice_fanout.handlers.target import PermanentFailure, RetryLater, TargetContext
from sluice_fanout.handlers.worker import handle_batch
from sluice_fanout.handlers.worker_config import QueueRef, WorkerConfig, WorkerDeps, logger
from tests.support.idempotency import create_idempotency_table, idempotency_store
from tests.support.sqs_events import receive_event

PRIORITIES = ["HIGH", "NORMAL", "BATCH"]
HIGH_RESOLUTION = {"ApiCalls", "ApiThrottled", "ApiErrors", "ApiLatency"}
DEADLINE_S = 10.0
TABLE = "idempotency"
BUCKET = "results"


@dataclass
class Rig:
    sqs: Any
    sfn: Any
    ddb: Any
    s3: Any
    queues: dict[str, QueueRef]
    state_machine_arn: str
    ticket_url: str = ""
    sfn_calls: Counter[str] = field(default_factory=Counter)
    target_calls: list[tuple[Any, TargetContext]] = field(default_factory=list)

    def start(self, item: Any, index: int = 0) -> str:
        return str(
            self.sfn.start_execution(
                stateMachineArn=self.state_machine_arn,
                name=uuid.uuid4().hex,
                input=json.dumps({"item": item, "index": index, "execution": "arn:parent"}),
            )["executionArn"]
        )

    def deps(self, target: Callable[[Any, TargetContext], Any], **overrides: Any) -> WorkerDeps:
        settings = {
            "dispatch": "yield",
            "force_after_receives": 3,
            "max_attempts": 2,
            "yield_delay_seconds": 1,
            "retry_base_seconds": 1.0,
            "retry_max_seconds": 1.0,
        } | overrides

        def recording(item: Any, ctx: TargetContext) -> Any:
            self.target_calls.append((item, ctx))
            return target(item, ctx)

        if self.ticket_url:
            settings |= {"dispatch": "ticket", "ticket_queue_url": self.ticket_url}
        config = WorkerConfig(queues=tuple(self.queues[p] for p in PRIORITIES), **settings)
        return WorkerDeps(
            config,
            SqsQueues(self.sqs),
            TaskTokens(self.sfn, logger),
            recording,
            once=OncePerItem(idempotency_store(self.ddb, TABLE), 3_600),
            spill=ResultSpill(self.s3, BUCKET),
            progress=BatchCounts(self.ddb, TABLE, 3_600),
        )

    def receive(self, priority: str, wait_s: float = DEADLINE_S) -> dict[str, Any]:
        """Receive from a queue like the event source mapping, waiting up to a deadline."""
        deadline = time.monotonic() + wait_s
        while True:
            event = receive_event(self.sqs, self.queues[priority].url, self.queues[priority].arn)
            if event["Records"] or time.monotonic() > deadline:
                return event
            time.sleep(0.1)

    def finished(self, execution_arn: str) -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            described = self.sfn.describe_execution(executionArn=execution_arn)
            if described["status"] != "RUNNING":
                return dict(described)
            assert time.monotonic() < deadline, f"{execution_arn} still RUNNING after {DEADLINE_S}s"
            time.sleep(0.1)

    def output(self, execution_arn: str) -> Any:
        described = self.finished(execution_arn)
        assert described["status"] == "SUCCEEDED", described
        return json.loads(described["output"])

    def visible(self, priority: str) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.queues[priority].url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield from make_rig(ticket=False)


@pytest.fixture
def ticket_rig() -> Iterator[Rig]:
    yield from make_rig(ticket=True)


def make_rig(*, ticket: bool) -> Iterator[Rig]:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}), aws_like_heartbeats():
        sqs = boto3.client("sqs")
        sfn = boto3.client("stepfunctions")
        queues = {}
        for p in PRIORITIES:
            dlq_url = sqs.create_queue(QueueName=f"{p.lower()}-dlq")["QueueUrl"]
            url = sqs.create_queue(QueueName=p.lower(), Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            queues[p] = QueueRef(p, url, arn, dlq_url)
        ticket_url = sqs.create_queue(QueueName="tickets")["QueueUrl"] if ticket else ""
        processor = build_item_processor(
            priorities=PRIORITIES,
            queue_urls={p: q.url for p, q in queues.items()},
            throttle_rule=DEFAULT_THROTTLE_RULE,
            default_priority="BATCH",
            callback_timeout_seconds=60,
            direct_function_arn=None,
            ticket_queue_url=ticket_url or None,
        )
        processor.pop("ProcessorConfig")  # run the child workflow as a state machine of its own
        arn = sfn.create_state_machine(
            name="child", definition=json.dumps(processor), roleArn="arn:aws:iam::123456789012:role/sfn"
        )["stateMachineArn"]
        ddb = boto3.client("dynamodb")
        create_idempotency_table(ddb, TABLE)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        built = Rig(sqs, sfn, ddb, s3, queues, arn, ticket_url)

        def count(event_name: str, **_: Any) -> None:
            built.sfn_calls[event_name.rsplit(".", 1)[-1]] += 1

        sfn.meta.events.register("before-call.sfn.*", count)
        yield built


def ok(item: Any, ctx: TargetContext) -> Any:
    return {"echo": item, "index": ctx.index}


def test_success_sends_exactly_one_send_task_success(rig: Rig) -> None:
    execution = rig.start({"id": "a", "priority": "NORMAL"}, index=3)
    event = rig.receive("NORMAL")
    assert handle_batch(event, None, rig.deps(ok)) == {"batchItemFailures": []}
    assert rig.output(execution) == {
        "status": "SUCCEEDED",
        "index": 3,
        "priority": "NORMAL",
        "result": {"echo": {"id": "a", "priority": "NORMAL"}, "index": 3},
    }
    assert rig.sfn_calls["SendTaskSuccess"] == 1
    assert rig.sfn_calls["SendTaskFailure"] == 0


def test_permanent_failure_sends_exactly_one_send_task_failure(rig: Rig) -> None:
    def reject(item: Any, ctx: TargetContext) -> Any:
        raise PermanentFailure("HTTP 400: order 7 is closed")

    execution = rig.start({"id": "b", "priority": "HIGH"})
    assert handle_batch(rig.receive("HIGH"), None, rig.deps(reject)) == {"batchItemFailures": []}
    out = rig.output(execution)
    assert out["status"] == "FAILED"
    assert out["priority"] == "HIGH"
    assert out["error"]["Error"] == "Sluice.PermanentFailure"
    assert (rig.sfn_calls["SendTaskFailure"], rig.sfn_calls["SendTaskSuccess"]) == (1, 0)


def test_retryable_errors_return_the_message_then_fail_once_the_budget_is_spent(rig: Rig) -> None:
    def flaky(item: Any, ctx: TargetContext) -> Any:
        raise ConnectionError("API down")

    execution = rig.start({"id": "c", "priority": "HIGH"})
    deps = rig.deps(flaky, force_after_receives=1, max_attempts=2)
    first = rig.receive("HIGH")
    message_id = first["Records"][0]["messageId"]
    assert handle_batch(first, None, deps) == {"batchItemFailures": [{"itemIdentifier": message_id}]}
    assert rig.sfn_calls["SendTaskFailure"] == 0
    counts = BatchCounts(rig.ddb, TABLE, 3_600)
    (retry,) = counts.load("arn:parent").retries
    assert (retry.attempt, retry.last_attempt, retry.cause) == (1, 2, "ConnectionError: API down")
    second = rig.receive("HIGH")  # visible again after the 1 s backoff
    assert second["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"
    assert handle_batch(second, None, deps) == {"batchItemFailures": []}
    out = rig.output(execution)
    assert out["error"]["Error"] == "Sluice.RetriesExhausted"
    assert len(rig.target_calls) == 2
    assert rig.sfn_calls["SendTaskFailure"] == 1
    # Why it ended, where `sluice explain` finds it: no idempotency record stores this failure.
    ended = counts.ended_item("arn:parent", 0)
    assert ended is not None
    assert (ended.error, ended.attempt, ended.cause) == (
        "Sluice.RetriesExhausted",
        2,
        "ConnectionError: API down",
    )
    assert counts.load("arn:parent").retries == ()


def test_a_delivery_past_the_budget_fails_the_item_without_calling_the_api(rig: Rig) -> None:
    """The last allowed attempt crashed (never reported back): the next delivery ends the item."""
    execution = rig.start({"id": "crashy", "priority": "HIGH"})
    crashed = rig.receive("HIGH")["Records"][0]
    # The crashed invocation's message comes back (here at once, on AWS after its visibility).
    rig.sqs.change_message_visibility(
        QueueUrl=rig.queues["HIGH"].url, ReceiptHandle=crashed["receiptHandle"], VisibilityTimeout=0
    )
    again = rig.receive("HIGH")
    assert again["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"
    assert handle_batch(again, None, rig.deps(ok, force_after_receives=1, max_attempts=1)) == {
        "batchItemFailures": []
    }
    assert rig.target_calls == []
    assert rig.output(execution)["error"]["Error"] == "Sluice.RetriesExhausted"
    ended = BatchCounts(rig.ddb, TABLE, 3_600).ended_item("arn:parent", 0)
    assert ended is not None
    assert (ended.error, ended.attempt) == ("Sluice.RetriesExhausted", 1)


def test_retry_later_sets_the_visibility_the_api_asked_for(rig: Rig) -> None:
    def busy(item: Any, ctx: TargetContext) -> Any:
        raise RetryLater(30)

    rig.start({"id": "d", "priority": "HIGH"})
    event = rig.receive("HIGH")
    assert len(handle_batch(event, None, rig.deps(busy))["batchItemFailures"]) == 1
    # Invisible for the API's 30 s, not the 1 s backoff: nothing comes back within 2 s.
    assert rig.receive("HIGH", wait_s=2.0) == {"Records": []}
    assert rig.sfn_calls["SendTaskSuccess"] + rig.sfn_calls["SendTaskFailure"] == 0


def test_a_lower_message_yields_while_higher_work_waits_then_is_forced(rig: Rig) -> None:
    batch_execution = rig.start({"id": "bulk", "priority": "BATCH"}, index=0)
    batch_event = rig.receive("BATCH")
    rig.start({"id": "urgent", "priority": "HIGH"}, index=1)
    deadline = time.monotonic() + DEADLINE_S
    while rig.visible("HIGH") == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    deps = rig.deps(ok, force_after_receives=2, yield_delay_seconds=1)
    batch_id = batch_event["Records"][0]["messageId"]
    assert handle_batch(batch_event, None, deps) == {"batchItemFailures": [{"itemIdentifier": batch_id}]}
    assert rig.target_calls == []
    # The yield shortened visibility from the queue's 30 s to 1 s: it is back within seconds.
    again = rig.receive("BATCH", wait_s=5.0)
    assert again["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"
    # HIGH still waits, but receive 2 reaches the force threshold: processed anyway.
    assert handle_batch(again, None, deps) == {"batchItemFailures": []}
    assert rig.output(batch_execution)["status"] == "SUCCEEDED"
    assert [item["id"] for item, _ in rig.target_calls] == ["bulk"]


def test_a_duplicate_delivery_after_completion_is_tolerated(rig: Rig) -> None:
    execution = rig.start({"id": "e", "priority": "HIGH"})
    event = rig.receive("HIGH")
    deps = rig.deps(ok)
    assert handle_batch(event, None, deps) == {"batchItemFailures": []}
    rig.output(execution)
    # At-least-once delivery: the same message again. The task is over, so the heartbeat says
    # so and the message is dropped: no second call, no second completion, no retry loop.
    assert handle_batch(event, None, deps) == {"batchItemFailures": []}
    assert (rig.sfn_calls["SendTaskSuccess"], rig.sfn_calls["SendTaskHeartbeat"]) == (1, 2)
    assert len(rig.target_calls) == 1
    assert rig.output(execution)["status"] == "SUCCEEDED"


def test_a_redelivery_after_a_crash_replays_the_stored_result_without_calling_again(rig: Rig) -> None:
    """The API answered, then the worker died before SendTaskSuccess: SQS redelivers."""
    execution = rig.start({"id": "h", "priority": "NORMAL"}, index=7)
    crashes = iter([True])

    def crash_once(**_: Any) -> None:
        if next(crashes, False):
            raise SystemError("sandbox died after the API call")

    rig.sfn.meta.events.register("before-call.sfn.SendTaskSuccess", crash_once)
    deps = rig.deps(ok)
    first = rig.receive("NORMAL")
    assert len(handle_batch(first, None, deps)["batchItemFailures"]) == 1
    rig.sqs.change_message_visibility(  # on AWS, after the visibility timeout
        QueueUrl=rig.queues["NORMAL"].url,
        ReceiptHandle=first["Records"][0]["receiptHandle"],
        VisibilityTimeout=0,
    )
    assert handle_batch(rig.receive("NORMAL"), None, deps) == {"batchItemFailures": []}

    assert rig.output(execution)["result"] == {"echo": {"id": "h", "priority": "NORMAL"}, "index": 7}
    assert len(rig.target_calls) == 1


def test_the_same_item_sent_again_with_a_new_token_gets_the_stored_result(rig: Rig) -> None:
    """A Step Functions retry (or a rerun of the child) enqueues the item again: same business
    key, new token. The API is called once; both tokens get the result."""
    first_run = rig.start({"id": "k", "priority": "HIGH"}, index=2)
    second_run = rig.start({"id": "k", "priority": "HIGH"}, index=2)
    wait_visible(rig, "HIGH", 2)
    event = rig.receive("HIGH")
    assert len(event["Records"]) == 2
    assert handle_batch(event, None, rig.deps(ok)) == {"batchItemFailures": []}
    assert rig.output(first_run)["result"] == rig.output(second_run)["result"]
    assert len(rig.target_calls) == 1
    assert rig.sfn_calls["SendTaskSuccess"] == 2


def test_a_permanent_failure_is_replayed_too(rig: Rig) -> None:
    def reject(item: Any, ctx: TargetContext) -> Any:
        raise PermanentFailure("HTTP 400: closed")

    first_run = rig.start({"id": "r", "priority": "HIGH"}, index=1)
    second_run = rig.start({"id": "r", "priority": "HIGH"}, index=1)
    wait_visible(rig, "HIGH", 2)
    assert handle_batch(rig.receive("HIGH"), None, rig.deps(reject)) == {"batchItemFailures": []}
    for run in (first_run, second_run):
        assert rig.output(run)["error"]["Error"] == "Sluice.PermanentFailure"
    assert len(rig.target_calls) == 1


def test_a_task_that_already_timed_out_is_not_worked(rig: Rig) -> None:
    rig.state_machine_arn = impatient(rig)
    execution = rig.start({"id": "late", "priority": "HIGH"})
    event = rig.receive("HIGH")
    assert rig.output(execution)["error"]["Error"] == "States.Timeout"

    assert handle_batch(event, None, rig.deps(ok)) == {"batchItemFailures": []}
    assert rig.target_calls == []
    assert rig.sfn_calls["SendTaskSuccess"] + rig.sfn_calls["SendTaskFailure"] == 0


def test_a_result_too_large_for_step_functions_goes_to_s3_as_a_pointer(rig: Rig) -> None:
    def large(item: Any, ctx: TargetContext) -> Any:
        return {"blob": "x" * 300_000}

    execution = rig.start({"id": "big", "priority": "NORMAL"}, index=9)
    assert handle_batch(rig.receive("NORMAL"), None, rig.deps(large)) == {"batchItemFailures": []}
    pointer = rig.output(execution)["result"][RESULT_POINTER_FIELD]
    assert pointer["bucket"] == BUCKET
    assert pointer["key"].endswith("/9.json")
    stored = json.loads(rig.s3.get_object(Bucket=BUCKET, Key=pointer["key"])["Body"].read())
    assert stored == {"blob": "x" * 300_000}
    assert pointer["bytes"] == len(json.dumps(stored))


def test_malformed_messages_neither_crash_the_batch_nor_loop(rig: Rig) -> None:
    good = rig.start({"id": "f", "priority": "NORMAL"}, index=0)
    real = rig.receive("NORMAL")["Records"][0]
    token = json.loads(real["body"])["token"]
    stolen = rig.start({"id": "g", "priority": "NORMAL"}, index=1)
    stolen_record = rig.receive("NORMAL")["Records"][0]
    stolen_token = json.loads(stolen_record["body"])["token"]
    normal = rig.queues["NORMAL"]
    tokenless = json.dumps({"index": 5, "execution": good, "item": {}, "priority": "NORMAL"})
    for body in (
        "{not json",
        json.dumps({"token": stolen_token, "index": 1, "priority": "NORMAL", "execution": stolen}),
        tokenless,
    ):
        rig.sqs.send_message(QueueUrl=normal.url, MessageBody=body)
    junk = rig.receive("NORMAL")
    for _ in range(10):  # moto may hand the three over in more than one receive
        if len(junk["Records"]) == len(("not json", "stolen", "tokenless")):
            break
        junk["Records"] += rig.receive("NORMAL", wait_s=1)["Records"]
    event = {"Records": [real, *junk["Records"]]}

    assert handle_batch(event, None, rig.deps(ok)) == {"batchItemFailures": []}
    assert rig.output(good)["status"] == "SUCCEEDED"
    # With a token but no item: the waiting execution is told why.
    failed = rig.output(stolen)
    assert failed["error"]["Error"] == "Sluice.MalformedMessage"
    # Without a token: straight to the DLQ with the reason, and not redelivered.
    dead = rig.sqs.receive_message(QueueUrl=normal.dlq_url, MessageAttributeNames=["All"], WaitTimeSeconds=0)[
        "Messages"
    ]
    for _ in range(10):
        if len(dead) == len(("not json", "tokenless")):
            break
        dead += rig.sqs.receive_message(QueueUrl=normal.dlq_url, MessageAttributeNames=["All"]).get(
            "Messages", []
        )
    dead.sort(key=lambda m: m["Body"] != "{not json")
    assert [m["Body"] for m in dead] == ["{not json", tokenless]
    assert "not JSON" in dead[0]["MessageAttributes"][ATTR_DEAD_LETTER_REASON]["StringValue"]
    assert token not in dead[0]["Body"]
    assert [item["id"] for item, _ in rig.target_calls] == ["f"]
    # What `sluice explain` reads: the failure with a token, and the dead-lettering of a message
    # that still says which item it is about (one that is not JSON cannot say).
    counts = BatchCounts(rig.ddb, TABLE, 3_600)
    malformed = counts.ended_item(stolen, 1)
    assert malformed is not None
    assert (malformed.error, malformed.dead_lettered) == ("Sluice.MalformedMessage", False)
    assert counts.load(stolen).failed == 1
    lettered = counts.ended_item(good, 5)
    assert lettered is not None
    assert lettered.dead_lettered
    assert "no task token" in lettered.cause
    assert counts.load(good).failed == 0  # its execution still waits: not an outcome


# ---- ticket dispatch --------------------------------------------------------------------------


def receive_ticket(rig: Rig, wait_s: float = DEADLINE_S) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    while True:
        event = receive_event(rig.sqs, rig.ticket_url, "arn:aws:sqs:us-east-1:123456789012:tickets", 1)
        if event["Records"] or time.monotonic() > deadline:
            return event
        time.sleep(0.1)


def wait_visible(rig: Rig, priority: str, count: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while rig.visible(priority) < count:
        assert time.monotonic() < deadline, f"{priority} never reached {count} visible"
        time.sleep(0.1)


def test_a_ticket_pulls_the_highest_priority_payload_and_the_slot_keeps_working(ticket_rig: Rig) -> None:
    rig = ticket_rig
    batch = rig.start({"id": "bulk", "priority": "BATCH"}, index=5)
    wait_visible(rig, "BATCH", 1)
    high = rig.start({"id": "urgent", "priority": "HIGH"}, index=6)
    wait_visible(rig, "HIGH", 1)
    # Whichever ticket comes first, the HIGH payload is worked first; the invocation then takes
    # the other ticket itself and works the BATCH payload in the same slot.
    assert handle_batch(receive_ticket(rig), None, rig.deps(ok)) == {"batchItemFailures": []}
    assert [item["id"] for item, _ in rig.target_calls] == ["urgent", "bulk"]
    assert rig.output(high)["status"] == "SUCCEEDED"
    assert rig.output(batch)["status"] == "SUCCEEDED"
    assert rig.visible("HIGH") + rig.visible("BATCH") == 0
    assert receive_ticket(rig, wait_s=0.5) == {"Records": []}  # both tickets consumed


class WithdrawnGrant:
    """The adaptive controller's grant, withdrawn after `for_items` checks."""

    def __init__(self, for_items: int) -> None:
        self.left = for_items
        self.started = 0

    def start(self) -> None:
        self.started += 1

    def granted(self) -> bool:
        self.left -= 1
        return self.left >= 0


def start_items(rig: Rig, count: int) -> list[str]:
    executions = [rig.start({"id": f"i{n}", "priority": "NORMAL"}, index=n) for n in range(1, count + 1)]
    wait_visible(rig, "NORMAL", count)
    return executions


def test_the_slot_goes_back_when_the_controller_takes_it(ticket_rig: Rig) -> None:
    rig = ticket_rig
    start_items(rig, 4)
    grant = WithdrawnGrant(for_items=1)
    deps = dataclasses.replace(rig.deps(ok), grant=grant)
    assert handle_batch(receive_ticket(rig), None, deps) == {"batchItemFailures": []}
    # The delivered ticket, one further one while granted, then the slot is given back.
    assert len(rig.target_calls) == 2
    assert grant.started == 1
    assert rig.visible("NORMAL") == 2


def test_the_slot_goes_back_after_a_refused_call(ticket_rig: Rig) -> None:
    rig = ticket_rig
    start_items(rig, 3)

    def full_after_one(item: Any, ctx: TargetContext) -> Any:
        if len(rig.target_calls) > 1:
            raise RetryLater(0, "HTTP 429")
        return {"ok": True}

    assert handle_batch(receive_ticket(rig), None, rig.deps(full_after_one)) == {"batchItemFailures": []}
    assert len(rig.target_calls) == 2  # the refused slot is not sent straight back into the full API


class CompletionDown:
    """Step Functions refusing every SendTaskSuccess after the first (retries spent)."""

    def __init__(self, tokens: TaskTokens) -> None:
        self._tokens = tokens
        self.succeeded = 0

    def alive(self, token: str) -> bool:
        return self._tokens.alive(token)

    def succeed(self, token: str, output: str) -> bool:
        if self.succeeded:
            raise ConnectionError("Step Functions unreachable")
        self.succeeded += 1
        return self._tokens.succeed(token, output)

    def logging_with(self, keys: dict[str, Any]) -> CompletionDown:
        return self


def test_a_further_item_whose_completion_fails_keeps_its_payload_and_ticket(ticket_rig: Rig) -> None:
    rig = ticket_rig
    start_items(rig, 3)
    deps = dataclasses.replace(rig.deps(ok), tokens=CompletionDown(rig.deps(ok).tokens))
    # The delivered ticket's item completes on the invocation's own path, so it succeeds.
    assert handle_batch(receive_ticket(rig), None, deps) == {"batchItemFailures": []}
    further = len(rig.target_calls) - 1
    assert further >= 1
    # The completion runs after the next pick, so the loop may take one more before it stops;
    # whichever it took, each failed item's payload and ticket stay, to come back.

    def in_flight(url: str) -> int:
        attributes = rig.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        return int(attributes["ApproximateNumberOfMessagesNotVisible"])

    assert in_flight(rig.queues["NORMAL"].url) == further
    # The delivered ticket too: the event source mapping deletes it, not the worker.
    assert in_flight(rig.ticket_url) == further + 1
    assert rig.visible("NORMAL") == 2 - further


def test_no_further_item_without_the_time_for_it(ticket_rig: Rig) -> None:
    rig = ticket_rig
    start_items(rig, 3)
    context = SimpleNamespace(get_remaining_time_in_millis=lambda: 1_500)
    assert handle_batch(receive_ticket(rig), context, rig.deps(ok)) == {"batchItemFailures": []}
    assert len(rig.target_calls) == 1


def test_a_share_slot_ticket_serves_the_lower_queue_first(ticket_rig: Rig) -> None:
    rig = ticket_rig
    rig.start({"id": "bulk", "priority": "BATCH"}, index=10)  # index 10 % 10 == 0: BATCH's slot
    wait_visible(rig, "BATCH", 1)
    rig.start({"id": "urgent", "priority": "HIGH"}, index=11)
    wait_visible(rig, "HIGH", 1)
    tickets = [receive_ticket(rig)["Records"][0], receive_ticket(rig)["Records"][0]]
    share_ticket = next(t for t in tickets if json.loads(t["body"])["index"] == 10)
    assert handle_batch({"Records": [share_ticket]}, None, rig.deps(ok)) == {"batchItemFailures": []}
    assert [item["id"] for item, _ in rig.target_calls] == ["bulk"]


def test_a_retried_payload_keeps_its_ticket_and_counts_real_attempts(ticket_rig: Rig) -> None:
    rig = ticket_rig

    def flaky(item: Any, ctx: TargetContext) -> Any:
        if ctx.receive_count == 1:
            raise ConnectionError("API down")
        return {"attempt": ctx.receive_count}

    execution = rig.start({"id": "x", "priority": "NORMAL"}, index=4)
    wait_visible(rig, "NORMAL", 1)
    deps = rig.deps(flaky)
    first = receive_ticket(rig)
    assert len(handle_batch(first, None, deps)["batchItemFailures"]) == 1  # ticket returned with the payload
    second = receive_ticket(rig)
    assert second["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"
    assert handle_batch(second, None, deps) == {"batchItemFailures": []}
    assert rig.output(execution)["result"] == {"attempt": 2}  # the payload was received twice: two attempts


def test_an_empty_ticket_is_returned_then_dropped_as_an_orphan(ticket_rig: Rig) -> None:
    rig = ticket_rig
    rig.sqs.send_message(QueueUrl=rig.ticket_url, MessageBody=json.dumps({"index": 3, "priority": "HIGH"}))
    deps = rig.deps(ok, orphan_ticket_receives=2, empty_ticket_delay_seconds=0, orphan_ticket_age_seconds=0)
    first = receive_ticket(rig)
    assert len(handle_batch(first, None, deps)["batchItemFailures"]) == 1
    second = receive_ticket(rig)
    assert second["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"
    assert handle_batch(second, None, deps) == {"batchItemFailures": []}  # dropped
    assert receive_ticket(rig, wait_s=0.5) == {"Records": []}
    assert rig.target_calls == []


def test_a_ticket_ahead_of_its_payload_waits_for_it_instead_of_going_back(ticket_rig: Rig) -> None:
    """The state machine sends a ticket just before its payload; a worker that got the ticket
    first finds the payload within its short wait and works it in the same invocation."""
    rig = ticket_rig
    rig.sqs.send_message(QueueUrl=rig.ticket_url, MessageBody=json.dumps({"index": 0, "priority": "NORMAL"}))
    early = receive_ticket(rig)
    outcome: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: outcome.append(handle_batch(early, None, rig.deps(ok))))
    worker.start()
    time.sleep(0.2)  # the worker is waiting on NORMAL by now
    execution = rig.start({"id": "late", "priority": "NORMAL"}, index=0)
    worker.join(timeout=10)
    assert outcome == [{"batchItemFailures": []}]
    assert rig.output(execution)["status"] == "SUCCEEDED"
    assert [item["id"] for item, _ in rig.target_calls] == ["late"]


def test_a_malformed_payload_does_not_use_up_a_real_item_s_ticket(ticket_rig: Rig) -> None:
    """Junk on a payload queue has no ticket; the ticket that met it still serves a real item."""
    rig = ticket_rig
    normal = rig.queues["NORMAL"]
    rig.sqs.send_message(QueueUrl=normal.url, MessageBody="{not json")
    wait_visible(rig, "NORMAL", 1)
    execution = rig.start({"id": "real", "priority": "NORMAL"}, index=1)
    wait_visible(rig, "NORMAL", 2)
    assert handle_batch(receive_ticket(rig), None, rig.deps(ok)) == {"batchItemFailures": []}
    assert rig.output(execution)["status"] == "SUCCEEDED"
    dead = rig.sqs.receive_message(QueueUrl=normal.dlq_url, MessageAttributeNames=["All"])["Messages"]
    assert [m["Body"] for m in dead] == ["{not json"]


def test_tokens_and_payloads_never_reach_the_logs_at_info(rig: Rig) -> None:
    secret = "PAYLOAD-MARKER-7f3a"
    logger.setLevel("INFO")
    # What CloudWatch would get: the worker's own JSON lines, extra fields included.
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)

    def mixed(item: Any, ctx: TargetContext) -> Any:
        if item["kind"] == "retry":
            raise ConnectionError("API down")
        if item["kind"] == "reject":
            raise PermanentFailure("HTTP 400")
        return {"echo": item}

    for index, kind in enumerate(("ok", "retry", "reject")):
        rig.start({"id": secret, "kind": kind, "priority": "NORMAL"}, index=index)
    wait_visible(rig, "NORMAL", 3)
    event = rig.receive("NORMAL")
    tokens = [json.loads(r["body"])["token"] for r in event["Records"]]
    stolen = {"token": tokens[0], "index": 9, "priority": "NORMAL", "extra": secret}  # no item
    event["Records"].append({**event["Records"][0], "messageId": "junk", "body": json.dumps(stolen)})
    try:
        handle_batch(event, None, rig.deps(mixed, max_attempts=1, force_after_receives=1))
    finally:
        logger.removeHandler(handler)

    logged = sink.getvalue()
    assert '"level":"INFO"' in logged  # the worker did log at INFO...
    for token in tokens:
        assert token not in logged  # ...but never a token
    assert secret not in logged  # nor the payload
    # Every line about a well-formed item names it; the malformed one has only its message id.
    lines = [json.loads(line) for line in logged.splitlines()]
    named = [(line["index"], line["priority"], line["execution"]) for line in lines if "index" in line]
    assert sorted(set(named)) == [
        (0, "NORMAL", "arn:parent"),
        (1, "NORMAL", "arn:parent"),
        (2, "NORMAL", "arn:parent"),
    ]
    # ...and the invocation's one line about its own time names no item.
    about_items = [line for line in lines if line.get("event") != EVENT_SLOT_TIME]
    assert [line["message_id"] for line in about_items if "index" not in line] == ["junk"]


def test_the_adapters_log_lines_name_the_item_too(rig: Rig) -> None:
    """A duplicate delivery after completion: TaskTokens logs the finished token, inside the
    item's context, so that line names the item like the worker's own."""
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    execution = rig.start({"id": "dup", "priority": "HIGH"}, index=4)
    event = rig.receive("HIGH")
    deps = rig.deps(ok)
    try:
        handle_batch(event, None, deps)
        rig.output(execution)
        handle_batch(event, None, deps)
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    # Each invocation's line about its own time is not about an item.
    lines = [line for line in lines if line.get("event") != EVENT_SLOT_TIME]
    assert [line["message"] for line in lines] == [
        "processed",
        "task token already finished",
        "task already ended; item not worked",
    ]
    for line in lines:
        assert (line["index"], line["priority"], line["execution"]) == (4, "HIGH", "arn:parent"), line


def test_a_young_ticket_is_kept_while_its_payload_may_still_be_on_its_way(ticket_rig: Rig) -> None:
    """Step Functions sends the ticket first and retries the payload's send for up to ~15 s."""
    rig = ticket_rig
    rig.sqs.send_message(QueueUrl=rig.ticket_url, MessageBody=json.dumps({"index": 3, "priority": "HIGH"}))
    deps = rig.deps(ok, orphan_ticket_receives=1, empty_ticket_delay_seconds=0, orphan_ticket_age_seconds=60)
    for _ in range(3):
        assert len(handle_batch(receive_ticket(rig), None, deps)["batchItemFailures"]) == 1


def test_a_stored_success_answers_even_after_the_attempts_are_spent(rig: Rig) -> None:
    """The only attempt called the API and stored the answer, then died before SendTaskSuccess."""
    execution = rig.start({"id": "s", "priority": "HIGH"}, index=5)
    crashes = iter([True])

    def crash_once(**_: Any) -> None:
        if next(crashes, False):
            raise SystemError("sandbox died after the API call")

    rig.sfn.meta.events.register("before-call.sfn.SendTaskSuccess", crash_once)
    deps = rig.deps(ok, force_after_receives=1, max_attempts=1)
    first = rig.receive("HIGH")
    assert len(handle_batch(first, None, deps)["batchItemFailures"]) == 1
    rig.sqs.change_message_visibility(
        QueueUrl=rig.queues["HIGH"].url,
        ReceiptHandle=first["Records"][0]["receiptHandle"],
        VisibilityTimeout=0,
    )
    assert handle_batch(rig.receive("HIGH"), None, deps) == {"batchItemFailures": []}
    assert rig.output(execution)["status"] == "SUCCEEDED"
    assert len(rig.target_calls) == 1


def impatient(rig: Rig) -> str:
    """A child workflow whose callback times out after 1 s, on the rig's queues."""
    processor = build_item_processor(
        priorities=PRIORITIES,
        queue_urls={p: q.url for p, q in rig.queues.items()},
        throttle_rule=DEFAULT_THROTTLE_RULE,
        default_priority="BATCH",
        callback_timeout_seconds=1,
        direct_function_arn=None,
        ticket_queue_url=rig.ticket_url or None,
    )
    processor.pop("ProcessorConfig")
    return str(
        rig.sfn.create_state_machine(
            name=f"impatient-{uuid.uuid4().hex[:6]}",
            definition=json.dumps(processor),
            roleArn="arn:aws:iam::123456789012:role/sfn",
        )["stateMachineArn"]
    )


def test_a_payload_whose_task_ended_does_not_use_up_the_ticket(ticket_rig: Rig) -> None:
    """A payload whose task has ended (timed out here; a duplicate SQS delivery of one already
    worked looks the same) is dropped, and the ticket that met it serves the next payload."""
    rig = ticket_rig
    patient = rig.state_machine_arn
    rig.state_machine_arn = impatient(rig)
    stale = rig.start({"id": "stale", "priority": "HIGH"}, index=5)
    assert rig.output(stale)["error"]["Error"] == "States.Timeout"
    rig.state_machine_arn = patient
    live = rig.start({"id": "live", "priority": "NORMAL"}, index=6)
    wait_visible(rig, "NORMAL", 1)
    # Index 6 is not a share slot: the HIGH (stale) payload is pulled first.
    live_ticket = next(
        t
        for t in (receive_ticket(rig)["Records"][0] for _ in range(2))
        if json.loads(t["body"])["index"] == 6
    )
    assert handle_batch({"Records": [live_ticket]}, None, rig.deps(ok)) == {"batchItemFailures": []}
    assert [item["id"] for item, _ in rig.target_calls] == ["live"]
    assert rig.output(live)["status"] == "SUCCEEDED"
    assert rig.visible("HIGH") == 0


# ---- metrics (EMF lines on stdout, as CloudWatch Logs would receive them) ---------------------

FUNCTION = "orders-worker-function"
WAIT_MS = 2_500


def emf_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """Every EMF object printed since the last call, its timestamp checked and removed."""
    lines = []
    for line in capsys.readouterr().out.splitlines():
        if '"_aws"' not in line:
            continue
        blob = json.loads(line)
        assert abs(blob["_aws"].pop("Timestamp") / 1000 - time.time()) < 60
        lines.append(blob)
    return lines


def emf(priority: str, **metrics: tuple[str, float]) -> dict[str, Any]:
    """The one EMF object a batch prints for a priority: `name=(unit, value)`. Powertools gathers
    a metric's values in a list, here one value each."""
    return {
        "_aws": {
            "CloudWatchMetrics": [
                {
                    "Namespace": "Sluice",
                    "Dimensions": [["FunctionName", "Priority", "service"]],
                    # The controller's signals are high resolution: it reads them in windows
                    # under a minute, which CloudWatch serves only for those.
                    "Metrics": [
                        {"Name": name, "Unit": unit}
                        | ({"StorageResolution": 1} if name in HIGH_RESOLUTION else {})
                        for name, (unit, _) in metrics.items()
                    ],
                }
            ]
        },
        "FunctionName": FUNCTION,
        "Priority": priority,
        "service": "sluice-worker",
        **{name: [value] for name, (_, value) in metrics.items()},
    }


class RecordingQueues(SqsQueues):
    """SqsQueues that keeps every payload it pulls (the ticket path), to read SentTimestamp."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.pulled: list[dict[str, Any]] = []

    def receive_one(self, queue_url: str, wait_seconds: int = 0) -> dict[str, Any] | None:
        payload = super().receive_one(queue_url, wait_seconds)
        if payload is not None:
            self.pulled.append(payload)
        return payload


def measured(deps: WorkerDeps, sent_ms: Callable[[], int]) -> WorkerDeps:
    """Deps whose clock reads WAIT_MS after the message's SentTimestamp and whose every target
    call takes 250 ms, so the timings are exact."""
    return dataclasses.replace(
        deps,
        metrics=WorkerMetrics(FUNCTION),
        clock=lambda: (sent_ms() + WAIT_MS) / 1000,
        timer=itertools.count(10.0, 0.125).__next__,
    )


def sent_ms(event: dict[str, Any]) -> Callable[[], int]:
    return lambda: int(event["Records"][0]["attributes"]["SentTimestamp"])


def test_a_processed_item_reports_its_wait_latency_and_outcome(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    rig.start({"id": "m1", "priority": "HIGH"}, index=0)
    event = rig.receive("HIGH")
    emf_lines(capsys)
    assert handle_batch(event, None, measured(rig.deps(ok), sent_ms(event))) == {"batchItemFailures": []}
    assert emf_lines(capsys) == [
        emf(
            "HIGH",
            QueueWaitTime=("Milliseconds", 2_500.0),
            ApiCalls=("Count", 1.0),
            ApiLatency=("Milliseconds", 125.0),
            ItemsProcessed=("Count", 1.0),
        )
    ]


def test_a_retried_then_failed_item_reports_each_delivery(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    def flaky(item: Any, ctx: TargetContext) -> Any:
        raise ConnectionError("API down")

    rig.start({"id": "m2", "priority": "NORMAL"}, index=0)
    first = rig.receive("NORMAL")
    deps = rig.deps(flaky, force_after_receives=1, max_attempts=2)
    emf_lines(capsys)
    assert len(handle_batch(first, None, measured(deps, sent_ms(first)))["batchItemFailures"]) == 1
    assert emf_lines(capsys) == [
        emf(
            "NORMAL",
            QueueWaitTime=("Milliseconds", 2_500.0),
            ApiCalls=("Count", 1.0),
            ApiLatency=("Milliseconds", 125.0),
            ApiErrors=("Count", 1.0),
            ItemsRetried=("Count", 1.0),
        )
    ]
    second = rig.receive("NORMAL")
    assert handle_batch(second, None, measured(deps, sent_ms(second))) == {"batchItemFailures": []}
    assert emf_lines(capsys) == [
        emf(
            "NORMAL",
            QueueWaitTime=("Milliseconds", 2_500.0),
            ApiCalls=("Count", 1.0),
            ApiLatency=("Milliseconds", 125.0),
            ApiErrors=("Count", 1.0),
            ItemsFailed=("Count", 1.0),
        )
    ]


def test_a_permanently_failed_item_counts_as_failed(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    def reject(item: Any, ctx: TargetContext) -> Any:
        raise PermanentFailure("HTTP 400")

    rig.start({"id": "m3", "priority": "BATCH"}, index=0)
    event = rig.receive("BATCH")
    emf_lines(capsys)
    assert handle_batch(event, None, measured(rig.deps(reject), sent_ms(event))) == {"batchItemFailures": []}
    assert emf_lines(capsys) == [
        emf(
            "BATCH",
            QueueWaitTime=("Milliseconds", 2_500.0),
            ApiCalls=("Count", 1.0),
            ApiLatency=("Milliseconds", 125.0),
            ItemsFailed=("Count", 1.0),
        )
    ]


@pytest.mark.parametrize(
    ("retry_after", "hold_setting", "held"),
    [(1, 0.0, [1]), (30, 0.0, [THROTTLE_HOLD_MAX_S]), (1, 6.0, [6.0])],
)
def test_a_refused_call_is_counted_without_latency_and_holds_its_slot(
    rig: Rig, capsys: pytest.CaptureFixture[str], retry_after: int, hold_setting: float, held: list[float]
) -> None:
    """The controller reads refusals from ApiThrottled and the served concurrency from
    ApiLatency, so a 429 must count as a call and a refusal but add no latency; the slot is
    held for the Retry-After (at most THROTTLE_HOLD_MAX_S), or the controller's reaction time."""

    def full(item: Any, ctx: TargetContext) -> Any:
        raise RetryLater(retry_after)

    rig.start({"id": "m5", "priority": "NORMAL"}, index=0)
    event = rig.receive("NORMAL")
    slept: list[float] = []
    printed_before_hold: list[dict[str, Any]] = []

    def hold(seconds: float) -> None:
        slept.append(seconds)
        printed_before_hold.extend(emf_lines(capsys))

    deps = dataclasses.replace(
        measured(rig.deps(full, throttle_hold_seconds=hold_setting), sent_ms(event)), sleep=hold
    )
    emf_lines(capsys)
    assert len(handle_batch(event, None, deps)["batchItemFailures"]) == 1
    # The refusal is printed before the hold, so it lands in the controller's window it
    # happened in, not one hold later.
    assert printed_before_hold == [
        emf(
            "NORMAL",
            QueueWaitTime=("Milliseconds", 2_500.0),
            ApiCalls=("Count", 1.0),
            ApiThrottled=("Count", 1.0),
        )
    ]
    assert emf_lines(capsys) == [emf("NORMAL", ItemsRetried=("Count", 1.0))]
    assert slept == held


def test_a_rate_limit_denial_is_no_call_and_holds_nothing(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    rig.start({"id": "m6", "priority": "NORMAL"}, index=0)
    event = rig.receive("NORMAL")
    slept: list[float] = []
    deps = dataclasses.replace(
        measured(rig.deps(ok), sent_ms(event)), sleep=slept.append, limiter=CountingLimiter(denied_wait=5.0)
    )
    emf_lines(capsys)
    assert len(handle_batch(event, None, deps)["batchItemFailures"]) == 1
    assert emf_lines(capsys) == [
        emf("NORMAL", QueueWaitTime=("Milliseconds", 2_500.0), ItemsRetried=("Count", 1.0))
    ]
    assert slept == []
    assert rig.target_calls == []


def test_a_yield_then_a_forced_delivery_are_counted(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    rig.start({"id": "bulk", "priority": "BATCH"}, index=0)
    first = rig.receive("BATCH")
    rig.start({"id": "urgent", "priority": "HIGH"}, index=1)
    wait_visible(rig, "HIGH", 1)
    deps = rig.deps(ok, force_after_receives=2, yield_delay_seconds=1)
    emf_lines(capsys)
    assert len(handle_batch(first, None, measured(deps, sent_ms(first)))["batchItemFailures"]) == 1
    # A yield is not worked: no wait, no latency, only the count.
    assert emf_lines(capsys) == [emf("BATCH", ItemsYielded=("Count", 1.0))]
    again = rig.receive("BATCH", wait_s=5.0)
    assert handle_batch(again, None, measured(deps, sent_ms(again))) == {"batchItemFailures": []}
    assert emf_lines(capsys) == [
        emf(
            "BATCH",
            ItemsForced=("Count", 1.0),
            QueueWaitTime=("Milliseconds", 2_500.0),
            ApiCalls=("Count", 1.0),
            ApiLatency=("Milliseconds", 125.0),
            ItemsProcessed=("Count", 1.0),
        )
    ]


def test_a_ticket_measures_the_wait_of_the_payload_it_pulls(
    ticket_rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = ticket_rig
    rig.start({"id": "m4", "priority": "HIGH"}, index=1)
    wait_visible(rig, "HIGH", 1)
    queues = RecordingQueues(rig.sqs)
    deps = measured(
        dataclasses.replace(rig.deps(ok), queues=queues),
        lambda: int(queues.pulled[0]["Attributes"]["SentTimestamp"]),
    )
    emf_lines(capsys)
    assert handle_batch(receive_ticket(rig), None, deps) == {"batchItemFailures": []}
    assert emf_lines(capsys) == [
        emf(
            "HIGH",
            QueueWaitTime=("Milliseconds", 2_500.0),
            ApiCalls=("Count", 1.0),
            ApiLatency=("Milliseconds", 125.0),
            ItemsProcessed=("Count", 1.0),
        )
    ]


class CountingLimiter:
    """A limiter that always grants at once (or denies), counting the reservations."""

    def __init__(self, denied_wait: float | None = None) -> None:
        self.reservations = 0
        self._denied_wait = denied_wait

    def reserve(self, max_wait: float) -> Grant | Denied:
        self.reservations += 1
        if self._denied_wait is not None:
            return Denied(self._denied_wait)
        now = time.time()
        return Grant(at=now, wait=0.0, tat=now + 1)


def test_calls_under_a_rate_limit_are_spaced_across_concurrent_invocations(rig: Rig) -> None:
    """Three invocations at once, each its own sandbox (its own limiter object), share the limit
    through the table: the target's calls are one interval apart however they interleave."""
    rate = 10.0
    interval = interval_for(rate)
    called_at: list[float] = []
    lock = threading.Lock()

    def timed(item: Any, ctx: TargetContext) -> Any:
        with lock:
            called_at.append(time.time())
        return ok(item, ctx)

    runs = [rig.start({"id": f"r{i}", "priority": "NORMAL"}, index=i) for i in range(6)]
    wait_visible(rig, "NORMAL", 6)
    records: list[Any] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(records) < 6 and time.monotonic() < deadline:
        records += rig.receive("NORMAL")["Records"]
    assert len(records) == 6
    events = [{"Records": records[i : i + 2]} for i in range(0, 6, 2)]

    def invoke(event: dict[str, Any]) -> None:
        limiter = DynamoRateLimiter(rig.ddb, TABLE, "worker", interval)
        assert handle_batch(event, None, dataclasses.replace(rig.deps(timed), limiter=limiter)) == {
            "batchItemFailures": []
        }

    with atomic_dynamodb_writes():
        threads = [threading.Thread(target=invoke, args=(e,)) for e in events]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=DEADLINE_S)
    assert len(called_at) == 6
    calls = sorted(called_at)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    # A call starts at or after its slot (sleep never wakes early), but a slot that is due at
    # once is reached only after the reservation's write: that call may be late by the write's
    # latency, which the allowance in the interval is there to absorb.
    assert min(gaps) >= interval - RATE_WINDOW_ALLOWANCE_S, gaps
    assert calls[-1] - calls[0] >= 5 * interval - RATE_WINDOW_ALLOWANCE_S
    for run in runs:
        assert rig.output(run)["status"] == "SUCCEEDED"


def test_a_replay_takes_no_rate_limit_slot(rig: Rig) -> None:
    """The same item sent again (new token) is answered from its stored outcome: one call, one
    reservation."""
    limiter = CountingLimiter()
    first_run = rig.start({"id": "k", "priority": "HIGH"}, index=2)
    second_run = rig.start({"id": "k", "priority": "HIGH"}, index=2)
    wait_visible(rig, "HIGH", 2)
    event = rig.receive("HIGH")
    assert len(event["Records"]) == 2
    deps = dataclasses.replace(rig.deps(ok), limiter=limiter)
    assert handle_batch(event, None, deps) == {"batchItemFailures": []}
    assert rig.output(first_run)["result"] == rig.output(second_run)["result"]
    assert (len(rig.target_calls), limiter.reservations) == (1, 1)


def test_a_rate_limit_slot_too_far_away_returns_the_message_without_a_call(rig: Rig) -> None:
    limiter = CountingLimiter(denied_wait=7.2)
    rig.start({"id": "far", "priority": "NORMAL"})
    event = rig.receive("NORMAL")
    deps = dataclasses.replace(rig.deps(ok), limiter=limiter)
    result = handle_batch(event, None, deps)
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    assert rig.target_calls == []
    assert rig.visible("NORMAL") == 0  # returned with the wait (8 s) as its visibility
    assert rig.sfn_calls["SendTaskSuccess"] == rig.sfn_calls["SendTaskFailure"] == 0


class LateLimiter(CountingLimiter):
    """Grants a slot that has already passed for the first `late` reservations: the worker woke
    (or the reservation returned) after its slot."""

    def __init__(self, late: int, by_s: float) -> None:
        super().__init__()
        self.late = late
        self.by_s = by_s
        self.slots: list[float] = []

    def reserve(self, max_wait: float) -> Grant | Denied:
        self.reservations += 1
        now = time.time()
        at = now - self.by_s if self.reservations <= self.late else now + 0.01
        self.slots.append(at)
        return Grant(at=at, wait=max(0.0, at - now), tat=at + 0.25)


def test_a_call_late_for_its_slot_takes_the_next_one(rig: Rig) -> None:
    """Started late, a call would share a one-second window with `rate` calls after it; it
    reserves a new slot instead, and calls on that one."""
    limiter = LateLimiter(late=1, by_s=0.2)
    called_at: list[float] = []

    def timed(item: Any, ctx: TargetContext) -> Any:
        called_at.append(time.time())
        return ok(item, ctx)

    execution = rig.start({"id": "late", "priority": "HIGH"})
    deps = dataclasses.replace(rig.deps(timed), limiter=limiter)
    assert handle_batch(rig.receive("HIGH"), None, deps) == {"batchItemFailures": []}
    assert limiter.reservations == 2
    assert called_at[0] - limiter.slots[1] < RATE_LATE_S
    assert rig.output(execution)["status"] == "SUCCEEDED"


def test_a_call_late_for_every_slot_goes_back_to_its_queue(rig: Rig) -> None:
    limiter = LateLimiter(late=RATE_LATE_TRIES, by_s=0.2)
    rig.start({"id": "always-late", "priority": "HIGH"})
    deps = dataclasses.replace(rig.deps(ok), limiter=limiter)
    assert len(handle_batch(rig.receive("HIGH"), None, deps)["batchItemFailures"]) == 1
    assert (limiter.reservations, rig.target_calls) == (RATE_LATE_TRIES, [])


class FlushCounter(WorkerMetrics):
    def __init__(self) -> None:
        super().__init__("local")
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_each_item_of_a_kept_slot_emits_its_metrics_when_it_ends(ticket_rig: Rig) -> None:
    """The controller reads the metrics in windows of seconds: an item worked early in a long
    invocation must not wait for its end to be counted."""
    rig = ticket_rig
    start_items(rig, 2)
    metrics = FlushCounter()
    flushed_at_call: list[int] = []

    def noting(item: Any, ctx: TargetContext) -> Any:
        flushed_at_call.append(metrics.flushes)
        return ok(item, ctx)

    deps = dataclasses.replace(rig.deps(noting), metrics=metrics)
    assert handle_batch(receive_ticket(rig), None, deps) == {"batchItemFailures": []}
    assert flushed_at_call == [0, 1]  # the first item's metrics went out before the second call
