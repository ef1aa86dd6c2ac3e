"""The real worker (handle_batch, ticket dispatch) under a hypothesis stateful model of SQS, the
event source mapping, Step Functions tokens, the legacy API and the faults each can inject.

Only the I/O is faked; everything Sluice decides runs as deployed: handle_batch with
Powertools' BatchProcessor, handle_ticket, work_item, OncePerItem on Powertools'
idempotency (an in-memory persistence layer with DynamoDB's conditional put), and the rules in
sluice_fanout/handlers/priority.py.

Each worker invocation runs in its own thread and parks inside the API call, so up to LIMIT
invocations are in flight at once while rules advance time, inject faults or answer calls in
any order. Only one thread runs at a time (a strict hand-over), so every example replays.

Time: one integer model clock drives SQS visibility, task deadlines, Lambda timeouts and
Powertools' record expiry. Powertools reads `datetime.now()` for expiry and for the in-progress
lease, so its `dt` module references are patched to read the model clock; real short leases
would need real sleeps and would make examples slow and flaky. OncePerItem measures the lease
with `time.monotonic()` from the moment it is handed `remaining_ms` to Powertools' read, a few
microseconds of real time in which the model clock does not move, so that part stays real.

What the model cannot prove: SQS ordering (the fake serves the oldest visible message first),
Lambda's poller batching and scaling (one ticket per invocation, like batch_size 1), IAM, and
Step Functions retrying a whole child (a second token for one business key).

It found four things the worker now handles: an orphan ticket dropped while Step Functions was
still retrying its payload's send (orphans are now dropped only when old), a surplus ticket
cycling into the ticket DLQ (empty tickets now back off), SQS duplicate deliveries breaking the
one-ticket-per-payload count (a payload whose task has ended no longer uses up its ticket), and
an item whose success was stored failed as RetriesExhausted (the stored outcome answers first).

`effect_before_crash` stays off: a worker that dies inside the API call leaves the outcome
unknown and the redelivery calls again (RELIABILITY.md); only an API that honours the
Idempotency-Key header makes that a single effect.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import queue
import sys
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar, cast
from unittest import mock

import pytest
from aws_lambda_powertools.utilities.idempotency import base as idempotency_base
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.persistence import base as persistence_base
from aws_lambda_powertools.utilities.idempotency.persistence import datarecord
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import STATUS_CONSTANTS, DataRecord
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from localcloud.esm import to_record
from sluice_fanout.handlers import contract
from sluice_fanout.handlers.once import OncePerItem
from sluice_fanout.handlers.priority import ticket_order, ticket_slot
from sluice_fanout.handlers.target import PermanentFailure, RetryLater, TargetContext
from sluice_fanout.handlers.worker import handle_batch
from sluice_fanout.handlers.worker_config import QueueRef, WorkerConfig, WorkerDeps

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aws_lambda_powertools.utilities.typing import LambdaContext

    from sluice_fanout.handlers.adapters import SqsQueues, TaskTokens

PRIORITIES = ("HIGH", "NORMAL", "BATCH")
LIMIT = 2
SHARE_PERIOD = 4
WORKER_TIMEOUT_S = 30
VISIBILITY_S = 6 * WORKER_TIMEOUT_S  # what the component sets by default: 6x the worker timeout
MAX_RECEIVE_COUNT = 10  # the component's default payload redrive
TICKET_MAX_RECEIVE_COUNT = 100  # components/priority_queues.py TICKET_MAX_RECEIVE_COUNT
MAX_ATTEMPTS = 3
CALLBACK_TIMEOUT_S = 86_400  # the component's default callback_timeout_seconds
SFN_RETRY_WINDOW_S = 14  # the Enqueue state's Retry: 2 s, x2 backoff, 3 attempts
EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:fan-out:run"
TICKET_URL = "https://sqs.local/tickets"
TICKET_ARN = "arn:aws:sqs:us-east-1:123456789012:tickets"
EPOCH_S = 1_700_000_000
"""Model time 0 as a Unix time: Powertools stores expiries as Unix seconds and milliseconds."""
HAND_OVER_S = 10.0
"""How long the model waits for a worker thread to park or finish before calling it hung."""
DRAIN_STEPS = 5_000

# The starvation bound, in two parts. Every pull whose slot favours a lower priority that has a
# payload visible serves it. And within any window of this many consecutive first deliveries of
# tickets (consecutive items cover every slot), such a priority is served at least once.
# Returned tickets (retries, crashes, timeouts) each cycle through every slot on their own, but
# mixed together they can keep missing one priority's slot for a while (up to about the tickets
# in circulation x SHARE_PERIOD pulls), so they only count through the first part.
STARVATION_WINDOW = 2 * SHARE_PERIOD


@dataclass(frozen=True)
class Pull:
    """A ticket delivery that pulled a payload: which priority, what was visible, its slot."""

    served: str
    seen: dict[str, int]
    slot: int
    receives: int


class SandboxDied(BaseException):
    """Lambda ended the sandbox (a crash or its timeout): not an Exception, so nothing in the
    worker, BatchProcessor or Powertools handles it, and nothing after it runs."""


class SfnThrottled(Exception):  # noqa: N818 - named like the AWS error it stands for
    """SendTaskSuccess failed after botocore's own retries (a transient Step Functions error)."""


class ReceiptHandleIsInvalid(Exception):  # noqa: N818 - named like the AWS error it stands for
    """ChangeMessageVisibility with a receipt handle that is not the message's latest."""


@dataclass
class Clock:
    now: int = 0


def model_dt(clock: Clock) -> SimpleNamespace:
    """Stands in for the `datetime` module in Powertools' idempotency code."""

    def now(tz: dt.tzinfo | None = None) -> dt.datetime:
        return dt.datetime.fromtimestamp(EPOCH_S + clock.now, tz)

    return SimpleNamespace(
        datetime=SimpleNamespace(now=now, fromtimestamp=dt.datetime.fromtimestamp),
        timedelta=dt.timedelta,
    )


# ---- SQS ------------------------------------------------------------------------------------


@dataclass
class Message:
    id: str
    body: str
    sent: int
    visible_at: int
    receives: int = 0
    handle: str = ""


@dataclass
class FakeSqs:
    """The calls SqsQueues offers, with visibility, receive counts, receipt handles and redrive."""

    clock: Clock
    redrive: dict[str, tuple[str, int]]
    """Queue URL -> (DLQ URL, maxReceiveCount)."""
    queues: dict[str, list[Message]] = field(default_factory=dict)
    pulled: list[str] = field(default_factory=list)
    """Payload queue URLs in the order the worker received from them."""
    duplicate_next: set[str] = field(default_factory=set)
    """Queues whose next receive returns a message already in flight (at-least-once delivery)."""
    _ids: int = 0

    def send(self, url: str, body: str, delay_s: int = 0) -> None:
        self._ids += 1
        message = Message(f"m-{self._ids}", body, self.clock.now, self.clock.now + delay_s)
        self.queues.setdefault(url, []).append(message)

    def messages(self, url: str) -> list[Message]:
        return self.queues.setdefault(url, [])

    def visible(self, url: str) -> list[Message]:
        return [m for m in self.messages(url) if m.visible_at <= self.clock.now]

    def visible_depth(self, queue_url: str) -> int:
        return len(self.visible(queue_url))

    def holds_anything(self, queue_url: str) -> bool:
        return bool(self.messages(queue_url))

    def _current(self, url: str, handle: str) -> Message | None:
        return next((m for m in self.messages(url) if m.handle == handle), None)

    def change_visibility(self, queue_url: str, receipt_handle: str, seconds: int) -> None:
        message = self._current(queue_url, receipt_handle)
        if message is None:
            raise ReceiptHandleIsInvalid(receipt_handle)
        message.visible_at = self.clock.now + seconds

    def receive_one(self, queue_url: str, wait_seconds: int = 0) -> dict[str, Any] | None:
        candidates = self.visible(queue_url)
        if queue_url in self.duplicate_next:
            self.duplicate_next.discard(queue_url)
            candidates = self.messages(queue_url)
        for message in sorted(candidates, key=lambda m: (m.sent, m.id)):
            dlq_url, max_receives = self.redrive[queue_url]
            if message.receives >= max_receives:
                # SQS moves the message instead of handing out a receive beyond maxReceiveCount.
                self.messages(queue_url).remove(message)
                self.messages(dlq_url).append(message)
                continue
            message.receives += 1
            message.handle = f"{message.id}/{message.receives}"
            message.visible_at = self.clock.now + VISIBILITY_S
            if queue_url != TICKET_URL:
                self.pulled.append(queue_url)
            return {
                "MessageId": message.id,
                "ReceiptHandle": message.handle,
                "Body": message.body,
                "MD5OfBody": hashlib.md5(message.body.encode(), usedforsecurity=False).hexdigest(),
                "Attributes": {
                    "ApproximateReceiveCount": str(message.receives),
                    "SentTimestamp": str((EPOCH_S + message.sent) * 1000),
                },
            }
        return None

    def delete(self, queue_url: str, receipt_handle: str) -> None:
        # AWS: a stale receipt handle "succeeds, but the message will not be deleted".
        message = self._current(queue_url, receipt_handle)
        if message is not None:
            self.messages(queue_url).remove(message)

    def dead_letter(self, dlq_url: str, body: str, reason: str) -> None:
        self.send(dlq_url, body)

    def next_visible_at(self) -> int | None:
        future = [m.visible_at for ms in self.queues.values() for m in ms if m.visible_at > self.clock.now]
        return min(future, default=None)


# ---- Step Functions task tokens -------------------------------------------------------------


@dataclass
class Task:
    key: tuple[str, int]
    deadline: int
    completion: tuple[str, str] | None = None
    """("success", output) or ("failure", error), the one completion Step Functions accepted."""


@dataclass
class FakeTokens:
    """TaskTokens' contract: a finished or timed-out token is refused with False, not raised."""

    clock: Clock
    tasks: dict[str, Task] = field(default_factory=dict)
    throttle_next_success: bool = False
    die_at_next_completion: bool = False

    def waiting(self, token: str) -> bool:
        task = self.tasks[token]
        return task.completion is None and self.clock.now < task.deadline

    def timed_out(self, token: str) -> bool:
        task = self.tasks[token]
        return task.completion is None and self.clock.now >= task.deadline

    def alive(self, token: str) -> bool:
        return self.waiting(token)

    def _complete(self, token: str, completion: tuple[str, str]) -> bool:
        if self.die_at_next_completion:
            # The API answered and the outcome is stored, then the sandbox died before
            # SendTask*: the redelivery must replay the stored outcome, not call again.
            self.die_at_next_completion = False
            raise SandboxDied
        if not self.waiting(token):
            return False
        self.tasks[token].completion = completion
        return True

    def succeed(self, token: str, output: str) -> bool:
        if self.throttle_next_success:
            self.throttle_next_success = False
            raise SfnThrottled(token)
        return self._complete(token, ("success", output))

    def fail(self, token: str, error: str, cause: str) -> bool:
        return self._complete(token, ("failure", error))


# ---- the idempotency table ------------------------------------------------------------------


@dataclass
class StoredRecord:
    status: str
    expiry: int | None
    in_progress_expiry: int | None
    response_data: str
    payload_hash: str


class InMemoryPersistence(BasePersistenceLayer):
    """Powertools' DynamoDB layer's semantics, in a dict: the same conditional put, an
    unconditional update and delete (a holder whose lease was taken over still writes)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Powertools leaves its base layer unannotated
        self._clock = clock
        self.records: dict[str, StoredRecord] = {}

    def _get_record(self, idempotency_key: str) -> DataRecord:
        stored = self.records.get(idempotency_key)
        if stored is None:
            raise IdempotencyItemNotFoundError
        return DataRecord(
            idempotency_key=idempotency_key,
            status=stored.status,
            expiry_timestamp=stored.expiry,
            in_progress_expiry_timestamp=stored.in_progress_expiry,
            response_data=stored.response_data,
            payload_hash=stored.payload_hash,
        )

    def _put_record(self, data_record: DataRecord) -> None:
        now_s = EPOCH_S + self._clock.now
        existing = self.records.get(data_record.idempotency_key)
        # dynamodb.py: attribute_not_exists(#id) OR #expiry < :now OR (#status = :inprogress AND
        # attribute_exists(#in_progress_expiry) AND #in_progress_expiry < :now_in_millis)
        if not (
            existing is None
            or (existing.expiry is not None and existing.expiry < now_s)
            or (
                existing.status == STATUS_CONSTANTS["INPROGRESS"]
                and existing.in_progress_expiry is not None
                and existing.in_progress_expiry < now_s * 1000
            )
        ):
            raise IdempotencyItemAlreadyExistsError(
                old_data_record=self._get_record(data_record.idempotency_key)
            )
        self.records[data_record.idempotency_key] = StoredRecord(
            status=data_record.status,
            expiry=data_record.expiry_timestamp,
            in_progress_expiry=data_record.in_progress_expiry_timestamp,
            response_data=data_record.response_data,
            payload_hash=data_record.payload_hash,
        )

    def _update_record(self, data_record: DataRecord) -> None:
        # SET response_data, expiry, status; the in-progress expiry attribute stays as it was.
        existing = self.records.get(data_record.idempotency_key)
        self.records[data_record.idempotency_key] = StoredRecord(
            status=data_record.status,
            expiry=data_record.expiry_timestamp,
            in_progress_expiry=existing.in_progress_expiry if existing else None,
            response_data=data_record.response_data,
            payload_hash=data_record.payload_hash,
        )

    def _delete_record(self, data_record: DataRecord) -> None:
        self.records.pop(data_record.idempotency_key, None)


# ---- worker invocations ---------------------------------------------------------------------


@dataclass
class Invocation:
    """One worker invocation on its own thread; it parks while its API call is outstanding."""

    ticket: dict[str, Any]
    deadline: int
    seen: dict[str, int]
    """Visible payload depths just before the worker pulled."""
    orders: queue.Queue[str] = field(default_factory=queue.Queue)
    calling: tuple[str, int] | None = None

    def get_remaining_time_in_millis(self, clock: Clock) -> int:
        return max(0, (self.deadline - clock.now) * 1000)


@dataclass
class RemainingTime:
    """The one part of a Lambda context handle_batch reads."""

    invocation: Invocation
    clock: Clock

    def get_remaining_time_in_millis(self) -> int:
        return self.invocation.get_remaining_time_in_millis(self.clock)


ANSWER = "answer"
RETRY_LATER = "retry-later"
FAIL_BEFORE = "fail-before-work"
PERMANENT = "permanent-failure"
CRASH_BEFORE = "crash-before-work"
CRASH_AFTER = "crash-after-work"
TIMEOUT = "lambda-timeout"


class FaultModel(RuleBasedStateMachine):
    """Queues, visibility, the event source mapping, the worker, the API and their faults."""

    payload_late_max_s: ClassVar[int] = SFN_RETRY_WINDOW_S
    """How long after its ticket an item's payload may reach its queue."""
    sqs_duplicates: ClassVar[bool] = True
    """Whether SQS may hand out a message that is already in flight (at-least-once delivery)."""
    effect_before_crash: ClassVar[bool] = False
    """Whether a call the sandbox dies in (crash or Lambda timeout) had its effect on the API."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self._patches = [
            mock.patch.object(module, "dt", model_dt(self.clock))
            for module in (idempotency_base, persistence_base, datarecord)
        ]
        for patch in self._patches:
            patch.start()
        self.queues = {
            p: QueueRef(
                p, f"https://sqs.local/{p}", f"arn:aws:sqs:us-east-1:1:{p}", f"https://sqs.local/{p}-dlq"
            )
            for p in PRIORITIES
        }
        redrive = {q.url: (q.dlq_url, MAX_RECEIVE_COUNT) for q in self.queues.values()}
        redrive[TICKET_URL] = (f"{TICKET_URL}-dlq", TICKET_MAX_RECEIVE_COUNT)
        self.sqs = FakeSqs(self.clock, redrive)
        self.tokens = FakeTokens(self.clock)
        self.store = InMemoryPersistence(self.clock)
        self.deps = WorkerDeps(
            config=WorkerConfig(
                queues=tuple(self.queues[p] for p in PRIORITIES),
                force_after_receives=3,
                max_attempts=MAX_ATTEMPTS,
                yield_delay_seconds=2,
                retry_base_seconds=2.0,
                retry_max_seconds=60.0,
                dispatch=contract.DISPATCH_TICKET,
                ticket_queue_url=TICKET_URL,
                share_period=SHARE_PERIOD,
                idempotency_table="in-memory",
            ),
            queues=cast("SqsQueues", self.sqs),
            tokens=cast("TaskTokens", self.tokens),
            target=self.api,
            once=OncePerItem(self.store, 345_600),
            clock=lambda: EPOCH_S + self.clock.now,
        )
        self.next_index = 0
        self.token_of: dict[int, str] = {}
        self.late: list[tuple[int, str, str]] = []
        """Payloads the state machine has yet to send: (due time, queue URL, body)."""
        self.effects: dict[tuple[str, int], int] = {}
        self.api_in_flight = 0
        self.api_in_flight_peak = 0
        self.running: list[Invocation] = []
        self.running_peak = 0
        self.pulls: list[Pull] = []
        self.draining = False
        self._events: queue.Queue[tuple[str, Invocation, BaseException | None]] = queue.Queue()
        self._local = threading.local()

    # ---- the legacy API, called by the worker on an invocation's thread ----

    def api(self, item: Any, ctx: TargetContext) -> Any:
        invocation: Invocation = self._local.invocation
        key = (ctx.execution, ctx.index)
        self.api_in_flight += 1
        self.api_in_flight_peak = max(self.api_in_flight_peak, self.api_in_flight)
        try:
            if self.draining:
                order = ANSWER
            else:
                invocation.calling = key
                self._events.put(("parked", invocation, None))
                order = invocation.orders.get(timeout=HAND_OVER_S)
                invocation.calling = None
        finally:
            self.api_in_flight -= 1
        if order in (CRASH_AFTER, TIMEOUT) and self.effect_before_crash:
            self.effects[key] = self.effects.get(key, 0) + 1
            raise SandboxDied
        if order in (CRASH_BEFORE, CRASH_AFTER, TIMEOUT):
            raise SandboxDied
        if order == RETRY_LATER:
            raise RetryLater(5)
        if order == FAIL_BEFORE:
            raise ConnectionError("the API refused the connection")
        if order == PERMANENT:
            raise PermanentFailure("HTTP 400: rejected")
        self.effects[key] = self.effects.get(key, 0) + 1
        return {"done": ctx.index}

    # ---- the event source mapping ----

    def _run(self, invocation: Invocation) -> None:
        self._local.invocation = invocation
        event = {"Records": [invocation.ticket]}
        context = cast("LambdaContext", RemainingTime(invocation, self.clock))
        try:
            response = handle_batch(event, context, self.deps)
        except SandboxDied as exc:
            self._events.put(("died", invocation, exc))
            return
        except BaseException as exc:  # noqa: BLE001 - reported to the model thread, which fails the example
            self._events.put(("escaped", invocation, exc))
            return
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        if invocation.ticket["messageId"] not in failed:
            # The mapping deletes what the function reported done; a returned ticket stays.
            self.sqs.delete(TICKET_URL, invocation.ticket["receiptHandle"])
        self._events.put(("finished", invocation, None))

    def _await(self, invocation: Invocation) -> None:
        """Block until the invocation parks in the API or ends; only one thread runs at a time."""
        try:
            kind, who, exc = self._events.get(timeout=HAND_OVER_S)
        except queue.Empty:
            pytest.fail(f"worker thread neither parked nor finished within {HAND_OVER_S}s")
        assert who is invocation
        if kind == "escaped":
            raise AssertionError(f"the worker raised out of handle_batch: {exc!r}") from exc
        if kind in ("died", "finished"):
            self.running.remove(invocation)

    def _deliver(self) -> bool:
        message = self.sqs.receive_one(TICKET_URL)
        if message is None:
            return False
        seen = {p: self.sqs.visible_depth(q.url) for p, q in self.queues.items()}
        invocation = Invocation(to_record(message, TICKET_ARN), self.clock.now + WORKER_TIMEOUT_S, seen)
        self.running.append(invocation)
        self.running_peak = max(self.running_peak, len(self.running))
        pulled_before = len(self.sqs.pulled)
        threading.Thread(target=self._run, args=(invocation,), daemon=True).start()
        self._await(invocation)
        if len(self.sqs.pulled) > pulled_before:
            served = next(p for p, q in self.queues.items() if q.url == self.sqs.pulled[pulled_before])
            receives = int(message["Attributes"]["ApproximateReceiveCount"])
            index = int(json.loads(message["Body"])["index"])
            self.pulls.append(Pull(served, seen, ticket_slot(index, SHARE_PERIOD, receives), receives))
        return True

    def _release(self, invocation: Invocation, order: str) -> None:
        invocation.orders.put(order)
        self._await(invocation)

    def _advance(self, seconds: int) -> None:
        self.clock.now += seconds
        for invocation in [i for i in self.running if i.deadline <= self.clock.now]:
            self._release(invocation, TIMEOUT)  # Lambda ends the invocation at its timeout
        for due, url, body in [p for p in self.late if p[0] <= self.clock.now]:
            self.late.remove((due, url, body))
            self.sqs.send(url, body)
        # The mapping keeps polling: a visible ticket does not wait while a slot is free.
        for _ in range(DRAIN_STEPS):
            if self.draining or len(self.running) >= LIMIT or not self._deliver():
                break

    # ---- rules ----

    @rule(
        priority=st.sampled_from(PRIORITIES),
        count=st.integers(min_value=1, max_value=4),
        late_s=st.one_of(st.just(0), st.integers(min_value=1, max_value=SFN_RETRY_WINDOW_S)),
    )
    def items_arrive(self, priority: str, count: int, late_s: int) -> None:
        """Like the Map: Ticket then Enqueue per item; a transient sendMessage error retried by
        Step Functions sends the payload up to the retry window after its ticket."""
        for _ in range(count):
            index = self.next_index
            self.next_index += 1
            token = f"token-{index}"
            self.token_of[index] = token
            self.tokens.tasks[token] = Task((EXECUTION, index), self.clock.now + CALLBACK_TIMEOUT_S)
            self.sqs.send(
                TICKET_URL,
                json.dumps(
                    {contract.FIELD_INDEX: index, contract.FIELD_EXECUTION: EXECUTION, "priority": priority}
                ),
            )
            body = json.dumps(
                {
                    contract.FIELD_TOKEN: token,
                    contract.FIELD_ITEM: {"n": index},
                    contract.FIELD_INDEX: index,
                    contract.FIELD_PRIORITY: priority,
                    contract.FIELD_EXECUTION: EXECUTION,
                }
            )
            if late_s := min(late_s, self.payload_late_max_s):
                self.late.append((self.clock.now + late_s, self.queues[priority].url, body))
            else:
                self.sqs.send(self.queues[priority].url, body)

    @precondition(lambda self: len(self.running) < LIMIT and self.sqs.visible(TICKET_URL))
    @rule()
    def a_ticket_wakes_a_worker(self) -> None:
        self._deliver()

    @precondition(lambda self: self.running)
    @rule(
        data=st.data(),
        order=st.sampled_from([ANSWER, RETRY_LATER, FAIL_BEFORE, PERMANENT, CRASH_BEFORE, CRASH_AFTER]),
    )
    def the_api_responds(self, data: st.DataObject, order: str) -> None:
        invocation = data.draw(st.sampled_from(self.running))
        self._release(invocation, order)

    @rule()
    def step_functions_throttles_the_next_success(self) -> None:
        self.tokens.throttle_next_success = True

    @rule()
    def the_sandbox_dies_at_the_next_completion(self) -> None:
        self.tokens.die_at_next_completion = True

    @precondition(lambda self: self.sqs_duplicates)
    @rule(priority=st.sampled_from(PRIORITIES))
    def sqs_delivers_a_message_twice(self, priority: str) -> None:
        self.sqs.duplicate_next.add(self.queues[priority].url)

    @precondition(lambda self: any(self.tokens.waiting(t) for t in self.token_of.values()))
    @rule(data=st.data())
    def a_task_ends(self, data: st.DataObject) -> None:
        """The callback times out early or the execution is stopped."""
        waiting = [t for t in self.token_of.values() if self.tokens.waiting(t)]
        self.tokens.tasks[data.draw(st.sampled_from(waiting))].deadline = self.clock.now

    @rule(seconds=st.one_of(st.integers(min_value=1, max_value=3), st.integers(min_value=1, max_value=240)))
    def time_passes(self, seconds: int) -> None:
        self._advance(seconds)

    # ---- invariants ----

    @invariant()
    def at_most_one_api_effect_per_item(self) -> None:
        assert all(n <= 1 for n in self.effects.values()), self.effects

    @invariant()
    def in_flight_never_above_the_limit(self) -> None:
        assert self.running_peak <= LIMIT
        assert self.api_in_flight_peak <= LIMIT

    @invariant()
    def what_the_api_did_is_reported_as_done(self) -> None:
        for token, task in self.tokens.tasks.items():
            if task.completion is not None and self.effects.get(task.key):
                assert task.completion[0] == "success", (token, task)

    @invariant()
    def no_waiting_priority_starves_past_the_bound(self) -> None:
        if self.pulls:
            last = self.pulls[-1]
            favoured = ticket_order(PRIORITIES, last.slot)[0]
            if last.seen[favoured] > 0:
                assert last.served == favoured, last
        fresh = [pull for pull in self.pulls if pull.receives == 1][-STARVATION_WINDOW:]
        if len(fresh) < STARVATION_WINDOW:
            return
        for priority in PRIORITIES[1:]:
            if all(pull.seen[priority] > 0 for pull in fresh):
                assert any(pull.served == priority for pull in fresh), (priority, fresh)

    # ---- the drain: no new faults, every item must end ----

    def teardown(self) -> None:
        try:
            if sys.exc_info()[1] is None:
                self._drain_and_check()
        finally:
            self.draining = True
            for invocation in list(self.running):
                self._release(invocation, CRASH_BEFORE)
            for patch in self._patches:
                patch.stop()

    def _drain_and_check(self) -> None:
        self.draining = True
        self.tokens.throttle_next_success = False
        self.tokens.die_at_next_completion = False
        self.sqs.duplicate_next.clear()
        for invocation in list(self.running):
            self._release(invocation, ANSWER)
        for _ in range(DRAIN_STEPS):
            if self._deliver():
                continue
            wake = min(
                [t for t in (self.sqs.next_visible_at(),) if t is not None]
                + [due for due, _, _ in self.late],
                default=None,
            )
            if wake is None:
                break
            self._advance(max(1, wake - self.clock.now))
        else:
            pytest.fail(f"still working after {DRAIN_STEPS} drain steps: {self.sqs.queues}")
        self.at_most_one_api_effect_per_item()
        self.what_the_api_did_is_reported_as_done()
        leftovers = {url: [m.body for m in ms] for url, ms in self.sqs.queues.items() if ms}
        assert not leftovers, f"messages left after the drain (dead-lettered or stranded): {leftovers}"
        lost = [
            (index, token)
            for index, token in self.token_of.items()
            if self.tokens.tasks[token].completion is None and not self.tokens.timed_out(token)
        ]
        assert not lost, f"items whose execution still waits with nothing left to work them: {lost}"


def slots_cover_every_lower_priority() -> Iterator[str]:
    """The bound above assumes every lower priority owns a slot; checked here, not assumed."""
    for slot in range(SHARE_PERIOD):
        yield ticket_order(PRIORITIES, slot)[0]


def test_every_lower_priority_owns_a_share_slot() -> None:
    assert set(PRIORITIES[1:]) <= set(slots_cover_every_lower_priority())


FaultModel.TestCase.settings = settings(max_examples=50, stateful_step_count=40, deadline=None)
test_fault_model = FaultModel.TestCase
