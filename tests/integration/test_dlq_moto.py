"""The DLQ command against moto's SQS: `inspect` consumes nothing and masks tokens; `redrive
--copy` puts every dead letter back on its source queue with its attributes and empties the DLQ.

Dead letters get there both ways they do in Sluice: SQS's redrive after maxReceiveCount, and the
worker's own SqsQueues.dead_letter with its reason attribute.

What this cannot prove: StartMessageMoveTask and ListMessageMoveTasks (moto 5.2.5 lacks them;
the unit tests check the exact calls with a Stubber), IAM, and real SQS's approximate counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from sluice_fanout.cli import dlq
from sluice_fanout.cli.dlq import DeadLetterQueues, DlqAwsError, Options
from sluice_fanout.handlers.adapters import SqsQueues
from sluice_fanout.handlers.contract import ATTR_DEAD_LETTER_REASON

PRIORITIES = ("HIGH", "BATCH")
TOKEN = "AQCEAAAAKgAAAAMAAAAAAAAAAb7Wk-secret-task-token"


@dataclass
class Stack:
    sqs: Any
    outputs: dict[str, dict[str, str]]

    def pairs(self) -> list[dlq.DlqPair]:
        return dlq.pair_stack_outputs(self.outputs, "outputs")

    def drain(self, url: str) -> list[dict[str, Any]]:
        """Every visible message, received for good (visibility long enough to see each once)."""
        messages: list[dict[str, Any]] = []
        while batch := self.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=300, MessageAttributeNames=["All"]
        ).get("Messages", []):
            messages.extend(batch)
        return messages

    def counts(self, url: str) -> tuple[int, int]:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def body(index: int) -> str:
    return json.dumps({"token": f"{TOKEN}-{index}", "item": {"id": f"o-{index}"}, "index": index})


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    # moto answers an empty queue at once; real SQS needs the long poll to be sure it is empty.
    monkeypatch.setattr(dlq, "RECEIVE_WAIT_SECONDS", 0)
    with mock_aws():
        sqs = boto3.client("sqs")
        outputs: dict[str, dict[str, str]] = {"dlqUrls": {}, "queueUrls": {}}
        for priority in PRIORITIES:
            name = priority.lower()
            dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
            dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            url = sqs.create_queue(
                QueueName=name,
                Attributes={
                    "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 1})
                },
            )["QueueUrl"]
            outputs["dlqUrls"][priority] = dlq_url
            outputs["queueUrls"][priority] = url
        yield Stack(sqs, outputs)


def dead_letter_by_redrive(stack: Stack, priority: str, index: int) -> None:
    """Send to the source queue and receive past maxReceiveCount, so SQS moves it to the DLQ."""
    url = stack.outputs["queueUrls"][priority]
    stack.sqs.send_message(
        QueueUrl=url,
        MessageBody=body(index),
        MessageAttributes={"Origin": {"DataType": "Binary", "BinaryValue": bytes([index, 0])}},
    )
    for _ in range(2):
        stack.sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)


def seed(stack: Stack) -> dict[str, set[str]]:
    """Three dead letters on HIGH's DLQ (one from the worker), one on BATCH's; bodies by DLQ."""
    for index in (1, 2):
        dead_letter_by_redrive(stack, "HIGH", index)
    dead_letter_by_redrive(stack, "BATCH", 3)
    SqsQueues(stack.sqs).dead_letter(stack.outputs["dlqUrls"]["HIGH"], body(4)[:30], "body is not JSON")
    for priority, expected in (("HIGH", 3), ("BATCH", 1)):
        assert stack.counts(stack.outputs["dlqUrls"][priority]) == (expected, 0), "seeding failed"
        assert stack.counts(stack.outputs["queueUrls"][priority]) == (0, 0), "seeding failed"
    return {"HIGH": {body(1), body(2), body(4)[:30]}, "BATCH": {body(3)}}


def test_inspect_shows_depth_reason_and_masked_bodies_and_consumes_nothing(stack: Stack) -> None:
    bodies = seed(stack)
    lines: list[str] = []
    dlq.run(
        Options("inspect", stack.pairs(), peek=10, body_chars=500), DeadLetterQueues(stack.sqs), lines.append
    )

    text = "\n".join(lines)
    assert TOKEN[:8] not in text
    assert text.count('"token": "<masked>"') == 4
    assert lines[0] == f"HIGH: 3 waiting, 0 in flight  {stack.outputs['dlqUrls']['HIGH']}"
    assert sum(f"{ATTR_DEAD_LETTER_REASON}: body is not JSON" in line for line in lines) == 1
    assert f"BATCH: 1 waiting, 0 in flight  {stack.outputs['dlqUrls']['BATCH']}" in lines
    # Released at once: every message is visible again, none in flight, none deleted.
    for priority in PRIORITIES:
        url = stack.outputs["dlqUrls"][priority]
        assert stack.counts(url) == (len(bodies[priority]), 0)
        assert {m["Body"] for m in stack.drain(url)} == bodies[priority]


def test_inspect_peeks_at_most_the_limit(stack: Stack) -> None:
    seed(stack)
    lines: list[str] = []
    pair = stack.pairs()[0]
    dlq.run(Options("inspect", [pair], peek=2), DeadLetterQueues(stack.sqs), lines.append)
    assert sum(line.startswith("  - ") for line in lines) == 2
    assert lines[-1] == "  ... about 1 more not shown"
    assert stack.counts(pair.dlq_url) == (3, 0)


def test_copy_redrive_puts_every_message_back_with_its_attributes(stack: Stack, tmp_path: Path) -> None:
    bodies = seed(stack)
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(stack.outputs))

    assert dlq.main(["redrive", "--copy", "--stack-outputs", str(outputs)]) == 0

    expected = {body(i): {"Origin": {"DataType": "Binary", "BinaryValue": bytes([i, 0])}} for i in (1, 2, 3)}
    expected[body(4)[:30]] = {
        ATTR_DEAD_LETTER_REASON: {"DataType": "String", "StringValue": "body is not JSON"}
    }
    for priority in PRIORITIES:
        assert stack.counts(stack.outputs["dlqUrls"][priority]) == (0, 0)
        back = stack.drain(stack.outputs["queueUrls"][priority])
        assert {m["Body"]: m.get("MessageAttributes") for m in back} == {
            b: expected[b] for b in bodies[priority]
        }


def test_copy_finds_the_source_from_the_redrive_policy_and_honours_the_limit(stack: Stack) -> None:
    seed(stack)
    high = stack.outputs["dlqUrls"]["HIGH"]
    lines: list[str] = []
    dlq.run(
        dlq.options_from(
            dlq.build_parser().parse_args(["redrive", "--copy", "--dlq-url", high, "--max-messages", "2"])
        ),
        DeadLetterQueues(stack.sqs),
        lines.append,
    )
    assert lines == [dlq.COPY_NOTICE, f"high-dlq: moved 2 messages to {stack.outputs['queueUrls']['HIGH']}"]
    assert stack.counts(high) == (1, 0)
    assert stack.counts(stack.outputs["queueUrls"]["HIGH"]) == (2, 0)


def test_a_failed_send_leaves_every_message_on_the_dlq(stack: Stack) -> None:
    bodies = seed(stack)
    high = stack.outputs["dlqUrls"]["HIGH"]
    gone = stack.outputs["queueUrls"]["HIGH"]
    stack.sqs.delete_queue(QueueUrl=gone)

    with pytest.raises(DlqAwsError) as caught:
        DeadLetterQueues(stack.sqs).copy_back(high, gone, 10)

    assert f"to {gone} failed after 0 moved" in str(caught.value)
    assert stack.counts(high) == (3, 0)
    assert {m["Body"] for m in stack.drain(high)} == bodies["HIGH"]
