"""Ticket dispatch: a ticket is a slot; the worker pulls the highest-priority waiting payload.
Which queue comes first for a ticket is `priority.ticket_order`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sluice_fanout.handlers import contract, priority
from sluice_fanout.handlers.attempt import MessageReturned, PayloadDropped, item_keys, work_item
from sluice_fanout.handlers.completion import handle_malformed
from sluice_fanout.handlers.messages import MalformedMessage, parse_message
from sluice_fanout.handlers.worker_config import logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    from sluice_fanout.handlers.worker_config import QueueRef, WorkerDeps

MAX_EMPTY_TICKET_DELAY_S = 60
# Dropping a message that is not work is quick, but an invocation must not spend its time on a
# flood of junk: after this many in one queue the ticket moves on.
MAX_DROPPED_PER_QUEUE = 10
TICKET_PAYLOAD_WAIT_S = 1
"""How long a ticket that found nothing waits for its own payload (SQS long polling, whole s)."""


def record_handler(deps: WorkerDeps) -> Callable[[SQSRecord, int], None]:
    """How one invocation works each ticket of its batch."""
    return lambda record, remaining_ms: handle_ticket(record, deps, remaining_ms)


def handle_ticket(record: SQSRecord, deps: WorkerDeps, remaining_ms: int) -> None:
    """Ticket dispatch: a ticket is a slot; pull the highest-priority waiting payload and work it.

    The ticket is consumed only with a finished payload, so tickets and payloads stay one to
    one; when the payload goes back for a retry, its ticket goes back with the same delay.
    """
    config = deps.config
    ticket_receives = int(record.attributes.approximate_receive_count)
    index = _ticket_index(record.body)
    order = priority.ticket_order(
        config.priorities, priority.ticket_slot(index, config.share_period, ticket_receives)
    )
    # The state machine sends the ticket just before its payload, so a ticket that finds every
    # queue empty usually beat its own payload by milliseconds: it waits briefly on its own
    # priority's queue rather than going back for a second or more of back-off.
    own = _ticket_priority(record.body)
    pulls = [(name, 0) for name in order]
    if own in order and remaining_ms > (TICKET_PAYLOAD_WAIT_S + 1) * 1000:
        pulls.append((own, TICKET_PAYLOAD_WAIT_S))
    for name, wait_s in pulls:
        queue = next(q for q in config.queues if q.priority == name)
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
                return
            deps.queues.change_visibility(config.ticket_queue_url, record.receipt_handle, delay)
            raise MessageReturned(f"payload retries in {delay}s")
    age_s = deps.clock() - int(record.attributes.sent_timestamp) / 1000
    if (
        ticket_receives >= config.orphan_ticket_receives
        and age_s >= config.orphan_ticket_age_seconds
        and not any(deps.queues.holds_anything(q.url) for q in config.queues)
    ):
        # Its payload never arrived (or was dead-lettered) and nothing anywhere could need it.
        # The state machine sends the ticket first and retries the payload's send for up to
        # ~15 s, so a ticket is only dropped well after that; and a short-poll receive can miss
        # a message, so only when every payload queue, in flight and delayed included, is empty.
        logger.warning(
            "orphan ticket dropped",
            extra={
                contract.LOG_EVENT: contract.EVENT_ORPHAN_TICKET,
                "ticket_receives": ticket_receives,
                "index": index,
            },
        )
        return
    # Doubling: a ticket that came just ahead of its payload finds it at the next try, while a
    # surplus one (its payload's task ended, a duplicate delivery) slows down instead of
    # burning through the ticket queue's receive limit into its DLQ while other work is slow.
    delay = min(
        config.empty_ticket_delay_seconds * 2 ** min(ticket_receives - 1, 16), MAX_EMPTY_TICKET_DELAY_S
    )
    deps.queues.change_visibility(config.ticket_queue_url, record.receipt_handle, delay)
    logger.info(
        "empty ticket returned",
        extra={
            contract.LOG_EVENT: contract.EVENT_EMPTY_TICKET,
            "ticket_receives": ticket_receives,
            "delay_s": delay,
        },
    )
    raise MessageReturned("no waiting payload")


def _ticket_priority(body: str) -> str | None:
    try:
        value = json.loads(body).get(contract.FIELD_PRIORITY)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


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
