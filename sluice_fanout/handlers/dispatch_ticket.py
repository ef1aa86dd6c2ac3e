"""Ticket dispatch: a ticket is a slot; the worker pulls the highest-priority waiting payload.
Which queue comes first for a ticket is `priority.ticket_order`."""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from sluice_fanout.handlers import contract, fair, priority
from sluice_fanout.handlers.attempt import MessageReturned, PayloadDropped, item_keys, work_item
from sluice_fanout.handlers.completion import count_outcome, handle_malformed
from sluice_fanout.handlers.deferred import Completer, DeferredDeletes, DeferredProgress, DeferredTokens
from sluice_fanout.handlers.messages import MalformedMessage, execution_and_index, parse_message
from sluice_fanout.handlers.progress import Ended
from sluice_fanout.handlers.worker_config import logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    from sluice_fanout.handlers.adapters import BatchCounts, Claimed, KeyedItems, SqsQueues, TaskTokens
    from sluice_fanout.handlers.worker_config import QueueRef, WorkerDeps

MAX_EMPTY_TICKET_DELAY_S = 60
# Dropping a message that is not work is quick, but an invocation must not spend its time on a
# flood of junk: after this many in one queue the ticket moves on.
MAX_DROPPED_PER_QUEUE = 10
TICKET_PAYLOAD_WAIT_S = 1
"""How long a ticket that found nothing waits for its own payload (SQS long polling, whole s)."""
NEXT_ITEM_ALLOWANCE = 2.0
"""A further item is started only with this many times the slowest item so far still left."""
KEYED_WAIT_STEP_S = 0.1
"""How often a keyed ticket that beat its record asks the keyed table again (a few reads each;
no long polling there)."""
RETURN_MARGIN_S = 2.0
"""Time kept to return the batch response after the last item."""


@dataclass(frozen=True)
class Ticket:
    body: str
    receipt_handle: str
    receive_count: int
    sent_timestamp_ms: int

    @classmethod
    def of_record(cls, record: SQSRecord) -> Ticket:
        """A ticket the event source mapping delivered."""
        return cls(
            record.body,
            record.receipt_handle,
            int(record.attributes.approximate_receive_count),
            int(record.attributes.sent_timestamp),
        )

    @classmethod
    def of_message(cls, message: dict[str, Any]) -> Ticket:
        """A ticket the worker received itself (SqsQueues.receive_one)."""
        attributes = message.get("Attributes", {})
        return cls(
            message["Body"],
            message["ReceiptHandle"],
            int(attributes.get("ApproximateReceiveCount", "1")),
            int(attributes.get("SentTimestamp", "0")),
        )


class TicketEnd(Enum):
    WORKED = "worked"
    """Its payload is finished: the ticket is used up (deleted)."""
    ORPHAN = "orphan"
    """No payload will ever need it: deleted."""
    RETURNED = "returned"
    """It goes back to the queue, visibility already set (its payload retries, or none waited)."""


def record_handler(deps: WorkerDeps) -> Callable[[SQSRecord, int], None]:
    """How one invocation works each ticket of its batch."""
    return lambda record, remaining_ms: handle_ticket(record, deps, remaining_ms)


def handle_ticket(record: SQSRecord, deps: WorkerDeps, remaining_ms: int) -> None:
    """Work the delivered ticket, then keep the slot busy with the next ones (`keep_working`)."""
    deadline = deps.timer() + remaining_ms / 1000
    report_backlog(deps)
    if deps.grant is not None:
        deps.grant.start()
    started = deps.timer()
    end = work_ticket(Ticket.of_record(record), deps, remaining_ms)
    if end is TicketEnd.RETURNED:
        raise MessageReturned("ticket returned to its queue")
    if end is TicketEnd.WORKED:
        worked_s = deps.timer() - started
        # Its metrics now, not at the end of a long invocation: the controller reads them in
        # windows of seconds.
        deps.metrics.flush()
        keep_working(deps, deadline, worked_s)


def report_backlog(deps: WorkerDeps) -> None:
    """Once a minute per worker function: keys with items waiting, by priority, as metrics (the
    dashboard's top keys). A report that fails is logged and skipped; it never costs a ticket."""
    keyed = deps.keyed
    if keyed is None:
        return
    try:
        if not keyed.report_turn(contract.KEY_BACKLOG_INTERVAL_S):
            return
        for name in deps.config.priorities:
            counts, complete = keyed.waiting(name)
            deps.metrics.backlog(name, fair.backlog(counts, contract.KEY_BACKLOG_TOP))
            if not complete:
                logger.warning(
                    "more keys waiting than one report reads", extra={"priority": name, "read": len(counts)}
                )
    except ClientError:
        logger.exception("keys backlog report failed; the next turn tries again")
        return
    deps.metrics.flush()


def keep_working(deps: WorkerDeps, deadline: float, longest_s: float) -> None:
    """Work further tickets while one waits, the slot is still granted and time is left.

    Each item otherwise costs a whole event source mapping round (poll, invoke, delete) of idle
    slot; here the next call is one ticket receive and its payload pull away, and the finished
    item's token completion and deletes go out on a background thread meanwhile (`Completer`).
    A ticket is taken for each payload, so tickets and payloads stay one to one, and each pick
    follows the same priority order as a delivered ticket's. It stops at the first item that
    does not finish (a 429, a retry, an empty ticket): a refused slot is not sent straight back
    into a full API.
    """
    config = deps.config
    completer = Completer()
    progress = DeferredProgress(deps.progress, completer) if deps.progress is not None else None
    item_deps = dataclasses.replace(
        deps,
        tokens=cast("TaskTokens", DeferredTokens(deps.tokens, completer)),
        queues=cast("SqsQueues", DeferredDeletes(deps.queues, completer)),
        progress=cast("BatchCounts", progress) if progress is not None else None,
    )
    try:
        while not completer.failed:
            remaining_s = deadline - deps.timer()
            # The next item may take longer than the slowest so far; the rest returns the batch.
            if remaining_s < NEXT_ITEM_ALLOWANCE * longest_s + RETURN_MARGIN_S:
                break
            if deps.grant is not None and not deps.grant.granted():
                logger.info(
                    "slot no longer granted", extra={contract.LOG_EVENT: contract.EVENT_SLOT_RETURNED}
                )
                break
            message = deps.queues.receive_one(config.ticket_queue_url)
            if message is None:
                break
            ticket = Ticket.of_message(message)
            started = deps.timer()
            try:
                end = work_ticket(ticket, item_deps, int(remaining_s * 1000))
            except Exception:  # noqa: BLE001 - a further item's failure ends the loop, never the delivered ticket's success
                # The delivered ticket's item is done; this one comes back after its visibility
                # timeout, as it would from a crashed invocation, and its payload with it.
                logger.exception("further ticket failed; slot returned")
                end = TicketEnd.RETURNED
            finally:
                # Per item, as a one-item invocation would: the controller reads these in windows
                # of seconds, and a line printed at the end of a long loop lands in the wrong one.
                deps.metrics.flush()
            if end is not TicketEnd.RETURNED:
                # Bound now: the step runs after `ticket` names the next one.
                completer.add(
                    functools.partial(deps.queues.delete, config.ticket_queue_url, ticket.receipt_handle)
                )
            completer.send()
            if end is not TicketEnd.WORKED:
                break
            longest_s = max(longest_s, deps.timer() - started)
    finally:
        if progress is not None:
            progress.flush()
            completer.send()
        completer.drain()


def work_ticket(ticket: Ticket, deps: WorkerDeps, remaining_ms: int) -> TicketEnd:  # noqa: PLR0911 - one per way a ticket ends
    """Pull the highest-priority waiting payload for `ticket` and work it.

    The ticket is used up only with a finished payload, so tickets and payloads stay one to
    one; when the payload goes back for a retry, its ticket goes back with the same delay.
    """
    config = deps.config
    index = _ticket_index(ticket.body)
    order = priority.ticket_order(
        config.priorities, priority.ticket_slot(index, config.share_period, ticket.receive_count)
    )
    # The state machine sends the ticket just before its payload, so a ticket that finds every
    # queue empty usually beat its own payload by milliseconds: it waits briefly on its own
    # priority's queue rather than going back for a second or more of back-off.
    own = _ticket_priority(ticket.body)
    pulls = [(name, 0) for name in order]
    waits = own in order and remaining_ms > (TICKET_PAYLOAD_WAIT_S + 1) * 1000
    if waits and own is not None:
        # A keyed item's record is written just after its ticket: such a ticket waits for it
        # in the keyed table (a negative wait), any other on its priority's queue.
        keyed_ticket = _ticket_field(ticket.body, contract.FIELD_KEYED) is True
        pulls.append((own, -TICKET_PAYLOAD_WAIT_S if keyed_ticket else TICKET_PAYLOAD_WAIT_S))
    # Within a priority, keyed items and unkeyed ones take turns by ticket: while both wait,
    # each gets about half the slots of that priority (docs/keys.md).
    keyed_first = index % 2 == 0
    for name, wait_s in pulls:
        queue = next(q for q in config.queues if q.priority == name)
        if wait_s < 0:
            if end := _work_keyed(name, queue, ticket, deps, remaining_ms, wait_s=-wait_s):
                return end
            continue
        if keyed_first and wait_s == 0 and (end := _work_keyed(name, queue, ticket, deps, remaining_ms)):
            return end
        # A malformed payload has no ticket of its own (the state machine never sent it), and one
        # whose task has ended may be a duplicate SQS delivery of a payload already worked: the
        # ticket may belong to a real payload, so keep pulling. A surplus ticket is dropped as
        # an orphan later; a missing one would strand a payload until its callback timeout.
        for _ in range(MAX_DROPPED_PER_QUEUE):
            payload = deps.queues.receive_one(queue.url, wait_seconds=wait_s)
            if payload is None:
                break
            try:
                delay = work_payload(payload, queue, deps, remaining_ms)
            except PayloadDropped:
                deps.queues.delete(queue.url, payload["ReceiptHandle"])
                continue
            if delay is None:
                deps.queues.delete(queue.url, payload["ReceiptHandle"])
                return TicketEnd.WORKED
            deps.queues.change_visibility(config.ticket_queue_url, ticket.receipt_handle, delay)
            return TicketEnd.RETURNED
        if not keyed_first and wait_s == 0 and (end := _work_keyed(name, queue, ticket, deps, remaining_ms)):
            return end
    age_s = deps.clock() - ticket.sent_timestamp_ms / 1000
    if (
        ticket.receive_count >= config.orphan_ticket_receives
        and age_s >= config.orphan_ticket_age_seconds
        and not any(deps.queues.holds_anything(q.url) for q in config.queues)
        and not (deps.keyed is not None and any(deps.keyed.holds_anything(p) for p in config.priorities))
    ):
        # Its payload never arrived (or was dead-lettered) and nothing anywhere could need it.
        # The state machine sends the ticket first and retries the payload's send for up to
        # ~15 s, so a ticket is only dropped well after that; and a short-poll receive can miss
        # a message, so only when every payload queue, in flight and delayed included, is empty.
        logger.warning(
            "orphan ticket dropped",
            extra={
                contract.LOG_EVENT: contract.EVENT_ORPHAN_TICKET,
                "ticket_receives": ticket.receive_count,
                "index": index,
            },
        )
        return TicketEnd.ORPHAN
    # Doubling: a ticket that came just ahead of its payload finds it at the next try, while a
    # surplus one (its payload's task ended, a duplicate delivery) slows down instead of
    # burning through the ticket queue's receive limit into its DLQ while other work is slow.
    delay = min(
        config.empty_ticket_delay_seconds * 2 ** min(ticket.receive_count - 1, 16), MAX_EMPTY_TICKET_DELAY_S
    )
    deps.queues.change_visibility(config.ticket_queue_url, ticket.receipt_handle, delay)
    logger.info(
        "empty ticket returned",
        extra={
            contract.LOG_EVENT: contract.EVENT_EMPTY_TICKET,
            "ticket_receives": ticket.receive_count,
            "delay_s": delay,
        },
    )
    return TicketEnd.RETURNED


def _work_keyed(
    name: str, queue: QueueRef, ticket: Ticket, deps: WorkerDeps, remaining_ms: int, *, wait_s: float = 0
) -> TicketEnd | None:
    """Work the fair key's next item of priority `name` for `ticket`; None when none can go
    (no keys, nothing waiting, every waiting key at its cap), also after `wait_s` of asking."""
    keyed = deps.keyed
    if keyed is None:
        return None
    asks = 1 + int(wait_s / KEYED_WAIT_STEP_S)
    for _ in range(MAX_DROPPED_PER_QUEUE):
        claimed = keyed.pick(name, lease_s=remaining_ms / 1000)
        while claimed is None and asks > 1:
            asks -= 1
            deps.sleep(KEYED_WAIT_STEP_S)
            claimed = keyed.pick(name, lease_s=remaining_ms / 1000)
        if claimed is None:
            return None
        queues = _keyed_queues(deps.queues, keyed, claimed)
        if claimed.order_broken is not None:
            # One ticket per item: this one is used up by failing its item, with no call.
            deps.tokens.fail(claimed.token, contract.ERROR_ORDER_BROKEN, claimed.order_broken)
            deps.metrics.count(contract.METRIC_FAILED, name)
            if (where := execution_and_index(claimed.body)) is not None:
                execution, index = where
                ended = Ended(index, deps.clock(), contract.ERROR_ORDER_BROKEN, claimed.order_broken, 0)
                count_outcome(deps, execution, index, ok=False, ended=ended)
            logger.warning(
                "ordered item failed behind a failed one",
                extra={"key": claimed.key, "item": claimed.item_id, "cause": claimed.order_broken},
            )
            queues.delete(queue.url, claimed.item_id)
            return TicketEnd.WORKED
        tokens = _FailureNoted(deps.tokens, claimed.token)
        item_deps = dataclasses.replace(deps, queues=queues, tokens=cast("TaskTokens", tokens))
        payload = {
            "Body": claimed.body,
            "MessageId": claimed.item_id,
            "ReceiptHandle": claimed.item_id,
            # Each claim is a real attempt, as each receive of a ticket-dispatch payload is.
            "Attributes": {"ApproximateReceiveCount": str(claimed.attempts)},
        }
        try:
            delay = work_payload(payload, queue, item_deps, remaining_ms)
        except PayloadDropped:
            queues.delete(queue.url, claimed.item_id)
            continue
        if delay is None:
            if claimed.ordered and tokens.error is not None:
                keyed.break_order(claimed, tokens.error)  # before the delete releases its lease
            queues.delete(queue.url, claimed.item_id)
            return TicketEnd.WORKED
        deps.queues.change_visibility(deps.config.ticket_queue_url, ticket.receipt_handle, delay)
        return TicketEnd.RETURNED
    return None


class _FailureNoted:
    """TaskTokens that note the error a claimed item's token was failed with."""

    def __init__(self, tokens: TaskTokens, token: str) -> None:
        self._tokens = tokens
        self._token = token
        self.error: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokens, name)

    def fail(self, token: str, error: str, cause: str) -> bool:
        if token == self._token:
            self.error = error
        return self._tokens.fail(token, error, cause)


class _KeyedQueues:
    """SqsQueues for one claimed keyed item: its retry and its removal go to the keyed store,
    everything else (the ticket, dead letters) to the queues as usual."""

    def __init__(self, queues: SqsQueues, keyed: KeyedItems, claimed: Claimed) -> None:
        self._queues = queues
        self._keyed = keyed
        self._claimed = claimed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queues, name)

    def change_visibility(self, queue_url: str, receipt_handle: str, seconds: int) -> None:
        if receipt_handle == self._claimed.item_id:
            self._keyed.retry(self._claimed, seconds)
        else:
            self._queues.change_visibility(queue_url, receipt_handle, seconds)

    def delete(self, queue_url: str, receipt_handle: str) -> None:
        if receipt_handle == self._claimed.item_id:
            self._keyed.done(self._claimed)
        else:
            self._queues.delete(queue_url, receipt_handle)


def _keyed_queues(queues: SqsQueues, keyed: KeyedItems, claimed: Claimed) -> SqsQueues:
    """Inside the Completer's deferral when there is one: a further item's record must leave
    only after its token was completed, as its payload would."""
    if isinstance(queues, DeferredDeletes):
        return cast("SqsQueues", queues.wrapping(lambda inner: _KeyedQueues(inner, keyed, claimed)))
    return cast("SqsQueues", _KeyedQueues(queues, keyed, claimed))


def _ticket_priority(body: str) -> str | None:
    value = _ticket_field(body, contract.FIELD_PRIORITY)
    return value if isinstance(value, str) else None


def _ticket_field(body: str, name: str) -> Any:
    try:
        return json.loads(body).get(name)
    except (ValueError, AttributeError):
        return None


def _ticket_index(body: str) -> int:
    try:
        index = json.loads(body).get(contract.FIELD_INDEX, 0)
    except (ValueError, AttributeError):
        return 0
    return index if isinstance(index, int) and not isinstance(index, bool) else 0


def work_payload(payload: dict[str, Any], queue: QueueRef, deps: WorkerDeps, remaining_ms: int) -> int | None:
    """Work one pulled payload; None when it is finished, else the delay before its retry.

    Raises PayloadDropped when it was not a real payload (malformed, or its task has ended).
    """
    attributes = payload.get("Attributes", {})
    receive_count = int(attributes.get("ApproximateReceiveCount", "1"))
    log: dict[str, Any] = {
        "message_id": payload.get("MessageId"),
        "queue_priority": queue.priority,
        "receive_count": receive_count,
    }
    try:
        message = parse_message(payload["Body"], deps.config.priorities)
    except MalformedMessage as exc:
        handle_malformed(exc, payload["Body"], queue, deps, log)
        raise PayloadDropped(exc.reason) from exc
    with logger.append_context_keys(**item_keys(message)):
        return work_item(
            message=message,
            receive_count=receive_count,
            remaining_ms=remaining_ms,
            queue=queue,
            receipt_handle=payload["ReceiptHandle"],
            # Requested by SqsQueues.receive_one; a payload without it reports no wait.
            sent_timestamp_ms=int(attributes["SentTimestamp"]) if "SentTimestamp" in attributes else None,
            deps=deps,
            log=log,
        )
