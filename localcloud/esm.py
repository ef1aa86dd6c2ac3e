"""SQS event source mappings with AWS semantics, driven by real ReceiveMessage calls."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from localcloud.cloud import REGION

if TYPE_CHECKING:
    from collections.abc import Callable

    from localcloud.lambda_runner import LambdaRunner
    from localcloud.specs import MappingSpec

THROTTLE_RETRY_FIRST_S = 0.05
THROTTLE_RETRY_MAX_S = 0.5
VISIBILITY_MARGIN_S = 1.0  # give up a throttled batch this long before its visibility lapses
LONG_POLL_S = 1  # short, so stop() and configure() take effect promptly
IDLE_CHECK_S = 0.25  # how often a poller that may not receive re-checks (besides being woken)


@dataclass(frozen=True)
class MappingState:
    """A mapping's run-time settings."""

    maximum_concurrency: int
    """Pollers allowed to receive; beyond the pollers started, the extra has no effect."""
    enabled: bool


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
    """Runs every deployed mapping until stopped: up to MaximumConcurrency pollers per mapping,
    each receiving a batch and invoking the function.

    - Success: the poller deletes the batch, except the messages listed in batchItemFailures
      (with ReportBatchItemFailures), which SQS delivers again when their visibility lapses.
    - Function error: nothing is deleted; the batch comes back after its visibility timeout.
    - Throttled (the function's reserved concurrency is busy): like Lambda's poller, the mapping
      keeps the batch and retries the invoke with backoff while the batch's visibility lasts. If
      it cannot get a slot in time the batch simply reappears in the queue and its next receive
      raises its receive count: the overpull AWS users meet. Meanwhile the held messages are
      invisible, so a worker checking for higher-priority work does not see them.

    What this cannot prove: AWS's poller scaling (it adds pollers gradually, up to 5 at first,
    and may run fewer than MaximumConcurrency).
    """

    def __init__(
        self,
        mappings: list[MappingSpec],
        runner: LambdaRunner,
        sqs: Any,
        on_receive: Callable[[dict[str, Any]], None] | None = None,
        max_pollers: dict[str, int] | None = None,
    ) -> None:
        """`max_pollers`: pollers to start per mapping uuid, the most its MaximumConcurrency may
        reach at run time (default: the deployed MaximumConcurrency)."""
        self._mappings = mappings
        self._runner = runner
        self._sqs = sqs
        self._on_receive = on_receive
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.stats: dict[str, MappingStats] = {m.uuid: MappingStats() for m in mappings}
        self._pollers = {m.uuid: (max_pollers or {}).get(m.uuid, m.maximum_concurrency) for m in mappings}
        for uuid, count in self._pollers.items():
            if count < 1:
                raise ValueError(f"EventSourceMappings '{uuid}': max_pollers must be >= 1, got {count}")
        self._state = {m.uuid: MappingState(m.maximum_concurrency, enabled=True) for m in mappings}
        # Pollers that may not receive sleep on this; configure() and stop() wake them.
        self._changed = threading.Condition()
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

    def configure(
        self, uuid: str, *, maximum_concurrency: int | None = None, enabled: bool | None = None
    ) -> MappingState:
        """Change a mapping's MaximumConcurrency and/or Enabled (None: unchanged), as
        UpdateEventSourceMapping; returns the new state.

        A mapping starts `max_pollers` pollers (default its deployed MaximumConcurrency); poller n
        receives only while n < the current MaximumConcurrency and the mapping is enabled, so a
        higher value caps at `max_pollers`. A change reaches a poller before its next
        ReceiveMessage, so a receive already waiting (up to LONG_POLL_S) may still deliver one
        batch, as AWS's pollers finish theirs while a mapping is Disabling; a batch in flight
        always finishes normally. What this cannot prove: the delay before AWS applies an update,
        or its Enabling/Disabling states (here a change is applied at once).
        """
        if maximum_concurrency is not None and maximum_concurrency < 1:
            raise ValueError(
                f"EventSourceMappings '{uuid}': maximum_concurrency must be >= 1, got {maximum_concurrency}"
            )
        with self._changed:
            old = self._state[uuid]
            new = MappingState(
                old.maximum_concurrency if maximum_concurrency is None else maximum_concurrency,
                old.enabled if enabled is None else enabled,
            )
            self._state[uuid] = new
            self._changed.notify_all()
        return new

    def state(self, uuid: str) -> MappingState:
        """A mapping's current settings."""
        with self._changed:
            return self._state[uuid]

    def pollers(self, uuid: str) -> int:
        """Pollers started for a mapping: the most that can ever receive at once."""
        return self._pollers[uuid]

    def start(self) -> None:
        for mapping in self._mappings:
            for n in range(self._pollers[mapping.uuid]):
                thread = threading.Thread(
                    target=self._poll, args=(mapping, n), name=f"esm-{mapping.uuid}-{n}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=LONG_POLL_S + 35)
        self._threads.clear()

    def _may_receive(self, uuid: str, n: int) -> bool:
        """Wait (briefly) until poller n may receive; False if it still may not."""
        with self._changed:
            state = self._state[uuid]
            if state.enabled and n < state.maximum_concurrency:
                return True
            self._changed.wait(IDLE_CHECK_S)
            return False

    def _poll(self, mapping: MappingSpec, n: int) -> None:
        url = self._urls[mapping.queue_arn]
        stats = self.stats[mapping.uuid]
        while not self._stop.is_set():
            if not self._may_receive(mapping.uuid, n):
                continue
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
