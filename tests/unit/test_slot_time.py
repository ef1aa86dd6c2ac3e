"""The worker's account of where an invocation's time goes."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import boto3
from botocore.stub import Stubber

from sluice_fanout.handlers import contract
from sluice_fanout.handlers.slot_time import API_CALL, SlotTime


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Logged:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def info(self, message: str, extra: dict[str, Any]) -> None:
        self.lines.append({"message": message, **extra})


def _sqs() -> Any:
    return boto3.client(
        "sqs",
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
        aws_session_token="t",
    )


def test_requests_are_timed_by_operation_retries_and_errors_included() -> None:
    clock = _Clock()
    slots = SlotTime(clock)
    client = _sqs()
    slots.attach(client)
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/q"

    def advance(seconds: float) -> Any:
        def hook(**_: Any) -> None:
            clock.now += seconds

        return hook

    with Stubber(client) as stub:
        # Between the start event and the stubbed answer, as a request on the wire would take.
        client.meta.events.register("before-parameter-build.sqs.*", advance(0.02))
        stub.add_response("receive_message", {}, {"QueueUrl": url})
        stub.add_response("receive_message", {}, {"QueueUrl": url})
        stub.add_client_error("delete_message", "ReceiptHandleIsInvalid")
        slots.start()
        client.receive_message(QueueUrl=url)
        client.receive_message(QueueUrl=url)
        with contextlib.suppress(client.exceptions.ReceiptHandleIsInvalid):
            client.delete_message(QueueUrl=url, ReceiptHandle="x")
        with slots.timed(API_CALL):
            clock.now += 1.0
        log = _Logged()
        slots.log(log)  # type: ignore[arg-type]
    (line,) = log.lines
    assert line[contract.LOG_EVENT] == contract.EVENT_SLOT_TIME
    assert line["parts_ms"] == {"DeleteMessage": 20.0, "ReceiveMessage": 40.0, API_CALL: 1000.0}
    assert line["invocation_ms"] == 1060.0


def test_work_on_another_thread_is_off_the_slots_path() -> None:
    slots = SlotTime()
    slots.start()
    worker = threading.Thread(target=slots.add, args=("SendTaskSuccess", 5.0))
    worker.start()
    worker.join()
    slots.add("ReceiveMessage", 0.5)
    log = _Logged()
    slots.log(log)  # type: ignore[arg-type]
    assert log.lines[0]["parts_ms"] == {"ReceiveMessage": 500.0}


def test_each_invocation_starts_from_nothing() -> None:
    slots = SlotTime()
    slots.add("ReceiveMessage", 0.5)
    slots.start()
    log = _Logged()
    slots.log(log)  # type: ignore[arg-type]
    assert log.lines[0]["parts_ms"] == {}
