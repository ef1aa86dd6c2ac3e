"""The ticket worker's work-conserving loop, driven for real (`dispatch_ticket.handle_ticket`)
against in-memory queues: strict priority at every pick, one slot per invocation, one rate-limit
reservation per call, and tickets and payloads one to one. SQS's own semantics (visibility,
receive counts under concurrency) are tested against moto in tests/integration/test_worker_moto.py."""

from __future__ import annotations

import itertools
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice_fanout.handlers import contract
from sluice_fanout.handlers.attempt import MessageReturned
from sluice_fanout.handlers.dispatch_ticket import handle_ticket
from sluice_fanout.handlers.priority import ticket_slot
from sluice_fanout.handlers.rate import Grant
from sluice_fanout.handlers.target import RetryLater, TargetContext
from sluice_fanout.handlers.worker_config import QueueRef, WorkerConfig, WorkerDeps

PRIORITIES = ["HIGH", "NORMAL", "BATCH"]
PERIOD = 4
LIMIT = 3
TICKETS = "tickets"


@dataclass
class Queues:
    """SQS as the worker sees it: FIFO per queue, receive counts, in-flight messages."""

    world: World
    visible: dict[str, deque[dict[str, Any]]] = field(default_factory=dict)
    in_flight: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    handles: itertools.count[int] = field(default_factory=itertools.count)

    def send(self, url: str, body: dict[str, Any]) -> None:
        message = {
            "Body": json.dumps(body),
            "Attributes": {"ApproximateReceiveCount": "0", "SentTimestamp": "0"},
        }
        self.visible.setdefault(url, deque()).append(message)

    def receive_one(self, url: str, wait_seconds: int = 0) -> dict[str, Any] | None:
        waiting = self.visible.get(url)
        if not waiting:
            return None
        message = waiting.popleft()
        count = int(message["Attributes"]["ApproximateReceiveCount"]) + 1
        message["Attributes"]["ApproximateReceiveCount"] = str(count)
        message["ReceiptHandle"] = str(next(self.handles))
        self.in_flight[message["ReceiptHandle"]] = (url, message)
        if url == TICKETS:
            self.world.tickets_held.append(json.loads(message["Body"]) | {"receives": count})
        else:
            self.world.picked(url)
        return message

    def _settle(self, url: str, handle: str) -> dict[str, Any]:
        held_url, message = self.in_flight.pop(handle)
        assert held_url == url
        if url == TICKETS:
            self.world.tickets_held.pop()
        return message

    def delete(self, url: str, handle: str) -> None:
        self._settle(url, handle)

    def change_visibility(self, url: str, handle: str, seconds: int) -> None:
        self.visible.setdefault(url, deque()).append(self._settle(url, handle))

    def holds_anything(self, url: str) -> bool:
        return bool(self.visible.get(url)) or any(u == url for u, _ in self.in_flight.values())

    def dead_letter(self, dlq_url: str, body: str, reason: str) -> None:
        raise AssertionError(f"nothing here is malformed: {dlq_url} {body} {reason}")

    def count(self, url: str) -> int:
        return len(self.visible.get(url, ())) + sum(1 for u, _ in self.in_flight.values() if u == url)


class Tokens:
    def __init__(self) -> None:
        self.finished: list[int] = []

    def alive(self, token: str) -> bool:
        return True

    def succeed(self, token: str, output: str) -> None:
        self.finished.append(int(token))
        assert json.loads(output)["index"] == int(token)

    def fail(self, token: str, error: str, cause: str) -> None:
        self.finished.append(int(token))

    def logging_with(self, keys: dict[str, Any]) -> Tokens:
        return self


class Once:
    def run(
        self, *, execution: str, index: int, remaining_ms: int, attempt: Any, number: int = 0
    ) -> tuple[Any, bool]:
        return attempt(), False


class Metrics:
    def count(self, name: str, priority: str) -> None: ...

    def milliseconds(self, name: str, priority: str, value: float) -> None: ...

    def flush(self) -> None: ...


class Limiter:
    def __init__(self, world: World) -> None:
        self.world = world
        self.reserved = 0

    def reserve(self, max_wait: float) -> Grant:
        self.reserved += 1
        return Grant(at=self.world.now, wait=0.0, tat=self.world.now)


class Controller:
    """The adaptive controller: it lowers the limit during a drawn call, for good."""

    def __init__(self, withdraw_at_call: int | None) -> None:
        self.withdraw_at_call = withdraw_at_call
        self.withdrawn = False

    def start(self) -> None: ...

    def granted(self) -> bool:
        return not self.withdrawn


@dataclass
class World:
    outcomes: list[str]
    """What each call does: ok, refused (429) or error; then arrivals and invocations inside it."""
    arrivals: list[tuple[str, int]]
    nested: list[bool]
    now: float = 0.0
    next_index: int = 0
    active: int = 0
    invocations: itertools.count[int] = field(default_factory=itertools.count)
    running: list[int] = field(default_factory=list)
    """The invocations in progress, innermost last (each runs inside another's call)."""
    held_when_withdrawn: set[int] = field(default_factory=set)
    tickets_held: list[dict[str, Any]] = field(default_factory=list)
    calls: list[tuple[int, str]] = field(default_factory=list)
    queues: Queues = field(init=False)
    tokens: Tokens = field(default_factory=Tokens)
    limiter: Limiter = field(init=False)
    controller: Controller | None = None
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.queues = Queues(self)
        self.limiter = Limiter(self)

    def arrive(self, priority: str, count: int) -> None:
        for _ in range(count):
            index = self.next_index
            self.next_index += 1
            # The state machine sends the ticket first, then the payload.
            self.queues.send(TICKETS, {contract.FIELD_INDEX: index, contract.FIELD_PRIORITY: priority})
            self.queues.send(
                priority,
                {
                    contract.FIELD_TOKEN: str(index),
                    contract.FIELD_ITEM: {"n": index},
                    contract.FIELD_INDEX: index,
                    contract.FIELD_PRIORITY: priority,
                    contract.FIELD_EXECUTION: "arn:parent",
                },
            )

    def picked(self, queue: str) -> None:
        """A payload was taken from `queue`: nothing of a higher priority may be waiting, unless
        the ticket it was taken for is in a share slot."""
        ticket = self.tickets_held[-1]
        slot = ticket_slot(ticket[contract.FIELD_INDEX], PERIOD, ticket["receives"])
        if slot < len(PRIORITIES) - 1:
            return
        higher = PRIORITIES[: PRIORITIES.index(queue)]
        waiting = [p for p in higher if self.queues.visible.get(p)]
        if waiting:
            self.violations.append(f"took {queue} while {waiting} waited")

    def deps(self) -> WorkerDeps:
        config = WorkerConfig(
            queues=tuple(QueueRef(p, p, p, f"{p}-dlq") for p in PRIORITIES),
            dispatch=contract.DISPATCH_TICKET,
            ticket_queue_url=TICKETS,
            share_period=PERIOD,
            max_attempts=2,
            retry_base_seconds=0.0,
            retry_max_seconds=0.0,
            idempotency_table="table",
        )
        return WorkerDeps(
            config,
            self.queues,  # type: ignore[arg-type]
            self.tokens,  # type: ignore[arg-type]
            self.target,
            once=Once(),  # type: ignore[arg-type]
            clock=lambda: self.now,
            metrics=Metrics(),  # type: ignore[arg-type]
            timer=lambda: self.now,
            limiter=self.limiter,
            sleep=self.sleep,
            grant=self.controller,  # type: ignore[arg-type]
        )

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def target(self, item: Any, ctx: TargetContext) -> Any:
        step = len(self.calls)
        if self.running[-1] in self.held_when_withdrawn:
            self.violations.append(f"called for {ctx.index} after the controller took the slot away")
        if self.controller is not None and step == self.controller.withdraw_at_call:
            # Every invocation running now may finish its current item, and no more.
            self.controller.withdrawn = True
            self.held_when_withdrawn = set(self.running)
        self.calls.append((ctx.index, ctx.priority))
        if len(self.calls) > self.limiter.reserved:
            self.violations.append("a call without its rate-limit reservation")
        self.now += 1.0
        if step < len(self.arrivals):
            self.arrive(*self.arrivals[step])
        if step < len(self.nested) and self.nested[step]:
            self.invoke()  # another slot's invocation runs while this call is in flight
        outcome = self.outcomes[step % len(self.outcomes)] if self.outcomes else "ok"
        if outcome == "refused":
            raise RetryLater(0, "HTTP 429")
        if outcome == "error":
            raise ConnectionError("API down")
        return {"n": item["n"]}

    def invoke(self) -> bool:
        """What the event source mapping does when a slot is free: deliver one ticket."""
        if self.active >= LIMIT:
            return False
        message = self.queues.receive_one(TICKETS)
        if message is None:
            return False
        record = SQSRecord(
            {
                "body": message["Body"],
                "receiptHandle": message["ReceiptHandle"],
                "attributes": message["Attributes"],
            }
        )
        self.active += 1
        self.running.append(next(self.invocations))
        try:
            handle_ticket(record, self.deps(), 900_000)
        except MessageReturned:
            return True  # the mapping reports it failed; its visibility was already set
        finally:
            self.active -= 1
            self.running.pop()
        self.queues.delete(TICKETS, message["ReceiptHandle"])
        return True


arrivals = st.lists(st.tuples(st.sampled_from(PRIORITIES), st.integers(min_value=1, max_value=3)), max_size=8)


@settings(max_examples=150, deadline=None)
@given(
    first=arrivals.filter(bool),
    later=arrivals,
    outcomes=st.lists(st.sampled_from(["ok", "ok", "ok", "refused", "error"]), max_size=12),
    nested=st.lists(st.booleans(), max_size=12),
    withdraw_at=st.none() | st.integers(min_value=0, max_value=8),
)
def test_the_loop_keeps_priority_and_one_ticket_per_payload(
    first: list[tuple[str, int]],
    later: list[tuple[str, int]],
    outcomes: list[str],
    nested: list[bool],
    withdraw_at: int | None,
) -> None:
    world = World(outcomes=outcomes, arrivals=later, nested=nested)
    world.controller = Controller(withdraw_at)
    for priority, count in first:
        world.arrive(priority, count)
    # Bounded: every item ends within max_attempts calls, or retries out of them.
    for _ in range(1_000):
        if not world.invoke():
            break
        assert world.queues.count(TICKETS) == sum(world.queues.count(p) for p in PRIORITIES)
    assert world.violations == []
    items = world.next_index
    assert sorted(world.tokens.finished) == list(range(items))  # each finished exactly once
    assert world.queues.count(TICKETS) == 0
    assert all(world.queues.count(p) == 0 for p in PRIORITIES)
    assert world.limiter.reserved == len(world.calls)


def test_one_invocation_works_every_waiting_item_in_priority_order() -> None:
    world = World(outcomes=[], arrivals=[], nested=[])
    for priority in ("BATCH", "NORMAL", "HIGH"):
        world.arrive(priority, 2)
    assert world.invoke()
    # Tickets 0-5 in turn, share period 4: slots 0 and 1 (tickets 0, 1, 4, 5) give BATCH and
    # NORMAL first pick; slots 2 and 3 take the highest waiting, so both HIGH items go then.
    assert [p for _, p in world.calls] == ["BATCH", "NORMAL", "HIGH", "HIGH", "BATCH", "NORMAL"]
    assert world.active == 0
    assert world.queues.count(TICKETS) == 0
