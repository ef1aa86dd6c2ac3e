"""SQS event source mappings with AWS semantics, driven by real ReceiveMessage calls.

Per mapping, up to MaximumConcurrency pollers each receive a batch and invoke the function.
- Success: the poller deletes the batch, except the messages listed in batchItemFailures
  (with ReportBatchItemFailures), which SQS delivers again when their visibility lapses.
- Function error: nothing is deleted; the batch comes back after its visibility timeout.
- Throttled (the function's reserved concurrency is busy): like Lambda's poller, the mapping
  keeps the batch and retries the invoke with backoff while the batch's visibility lasts. If it
  cannot get a slot in time the batch simply reappears in the queue and its next receive raises
  its receive count: the overpull AWS users meet. Meanwhile the held messages are invisible, so
  a worker checking for higher-priority work does not see them.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from localcloud.cloud import REGION

if TYPE_CHECKING:
    from collections.abc import Callable

    from localcloud.deploy import MappingSpec
    from localcloud.lambda_runner import LambdaRunner

THROTTLE_RETRY_FIRST_S = 0.05
THROTTLE_RETRY_MAX_S = 0.5
VISIBILITY_MARGIN_S = 1.0  # give up a throttled batch this long before its visibility lapses
LONG_POLL_S = 1  # short, so stop() is prompt


@dataclass
class MappingStats:
    receives: int = 0
    empty_receives: int = 0
    batches: int = 0
    messages: int = 0
    throttled_invokes: int = 0
    throttled_messages: int = 0
    abandoned_batches: int = 0
    function_errors: int = 0
    returned: int = 0
    deleted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        with self.lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)


def to_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """A received SQS message in the shape Lambda's SQS event uses."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": message.get("MessageAttributes", {}),
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


class EventSourceMappings:
    """Runs every deployed mapping until stopped."""

    def __init__(
        self,
        mappings: list[MappingSpec],
        runner: LambdaRunner,
        sqs: Any,
        on_receive: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._mappings = mappings
        self._runner = runner
        self._sqs = sqs
        self._on_receive = on_receive
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.stats: dict[str, MappingStats] = {m.uuid: MappingStats() for m in mappings}
        self._urls = {m.queue_arn: self._queue_url(m.queue_arn) for m in mappings}
        self._visibility = {
            arn: int(
                sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])["Attributes"][
                    "VisibilityTimeout"
                ]
            )
            for arn, url in self._urls.items()
        }

    def _queue_url(self, arn: str) -> str:
        name = arn.rsplit(":", 1)[-1]
        return str(self._sqs.get_queue_url(QueueName=name)["QueueUrl"])

    def start(self) -> None:
        for mapping in self._mappings:
            for n in range(mapping.maximum_concurrency):
                thread = threading.Thread(
                    target=self._poll, args=(mapping,), name=f"esm-{mapping.uuid}-{n}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=LONG_POLL_S + 35)
        self._threads.clear()

    def _poll(self, mapping: MappingSpec) -> None:
        url = self._urls[mapping.queue_arn]
        stats = self.stats[mapping.uuid]
        while not self._stop.is_set():
            try:
                received = self._sqs.receive_message(
                    QueueUrl=url,
                    MaxNumberOfMessages=mapping.batch_size,
                    WaitTimeSeconds=LONG_POLL_S,
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                ).get("Messages", [])
            except Exception:  # noqa: BLE001 - the server is going away at shutdown
                if self._stop.is_set():
                    return
                time.sleep(0.2)
                continue
            stats.add(receives=1, empty_receives=0 if received else 1)
            if not received:
                continue
            received_at = time.monotonic()
            if self._on_receive is not None:
                for message in received:
                    self._on_receive(message)
            try:
                self._deliver(mapping, url, received, stats, received_at)
            except Exception:  # noqa: BLE001 - a poller must outlive one bad batch, as Lambda's does
                stats.add(function_errors=1)

    def _deliver(
        self,
        mapping: MappingSpec,
        url: str,
        received: list[dict[str, Any]],
        stats: MappingStats,
        received_at: float,
    ) -> None:
        event = {"Records": [to_record(m, mapping.queue_arn) for m in received]}
        stats.add(batches=1, messages=len(received))
        give_up_at = received_at + self._visibility[mapping.queue_arn] - VISIBILITY_MARGIN_S
        backoff = THROTTLE_RETRY_FIRST_S
        while True:
            result = self._runner.invoke(mapping.function_name, event, wait_for_slot=False)
            if not result.throttled:
                break
            stats.add(throttled_invokes=1, throttled_messages=len(received))
            if time.monotonic() + backoff > give_up_at or self._stop.wait(backoff):
                # Left to reappear when their visibility lapses; the next receive raises counts.
                stats.add(abandoned_batches=1)
                return
            backoff = min(THROTTLE_RETRY_MAX_S, backoff * 2)
        if result.error is not None:
            stats.add(function_errors=1, returned=len(received))
            return
        failed = set()
        if mapping.report_batch_item_failures and isinstance(result.payload, dict):
            failed = {f.get("itemIdentifier") for f in result.payload.get("batchItemFailures") or []}
        done = [m for m in received if m["MessageId"] not in failed]
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(done)],
            )
        stats.add(deleted=len(done), returned=len(received) - len(done))


def message_key(body: str) -> tuple[str, int, str] | None:
    """(execution, index, priority) of a Sluice work message, for wait-time measurement."""
    try:
        data = json.loads(body)
        return str(data["execution"]), int(data["index"]), str(data["priority"])
    except (ValueError, KeyError, TypeError):
        return None
