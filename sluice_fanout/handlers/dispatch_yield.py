"""Yield dispatch: a message delivered from its priority's queue is worked, or gives its slot
back while a higher queue has visible work (`priority.decide`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from sluice_fanout.handlers import contract, priority
from sluice_fanout.handlers.attempt import MessageReturned, PayloadDropped, item_keys, work_item
from sluice_fanout.handlers.completion import handle_malformed
from sluice_fanout.handlers.messages import MalformedMessage, parse_message
from sluice_fanout.handlers.worker_config import logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    from sluice_fanout.handlers.adapters import SqsQueues
    from sluice_fanout.handlers.worker_config import WorkerConfig, WorkerDeps


def record_handler(deps: WorkerDeps) -> Callable[[SQSRecord, int], None]:
    """How one invocation works each message of its batch; queue depths are read once per batch."""
    depths = VisibleDepths(deps.config, deps.queues)
    return lambda record, remaining_ms: handle_record(record, deps, depths, remaining_ms)


class VisibleDepths(Mapping[str, int]):
    """Queue depths by priority, each fetched at most once per invocation and only if asked.

    The decision asks only for strictly higher queues, so a HIGH batch makes no extra calls.
    """

    def __init__(self, config: WorkerConfig, queues: SqsQueues) -> None:
        self._urls = {q.priority: q.url for q in config.queues}
        self._queues = queues
        self._seen: dict[str, int] = {}

    def __getitem__(self, key: str) -> int:
        if key not in self._seen:
            self._seen[key] = self._queues.visible_depth(self._urls[key])
        return self._seen[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._urls)

    def __len__(self) -> int:
        return len(self._urls)


def handle_record(record: SQSRecord, deps: WorkerDeps, depths: Mapping[str, int], remaining_ms: int) -> None:
    """Work one record. Returns normally when the message may be deleted."""
    config = deps.config
    queue = config.queue_for_arn(record.event_source_arn)
    receive_count = int(record.attributes.approximate_receive_count)
    log = {"message_id": record.message_id, "queue_priority": queue.priority, "receive_count": receive_count}
    try:
        message = parse_message(record.body, config.priorities)
    except MalformedMessage as exc:
        handle_malformed(exc, record.body, queue, deps, log)
        return
    with logger.append_context_keys(**item_keys(message)):
        decision = priority.decide(
            priority=queue.priority,
            priorities=config.priorities,
            receive_count=receive_count,
            force_after_receives=config.force_after_receives,
            visible_depths=depths,
            yield_delay_seconds=config.yield_delay_seconds,
        )
        if isinstance(decision, priority.Yield):
            deps.queues.change_visibility(queue.url, record.receipt_handle, decision.delay_seconds)
            deps.metrics.count(contract.METRIC_YIELDED, message.priority)
            logger.info(
                "yielded to higher priority work",
                extra=log | {contract.LOG_EVENT: contract.EVENT_YIELDED, "delay_s": decision.delay_seconds},
            )
            raise MessageReturned("yielded")
        if decision.forced:
            deps.metrics.count(contract.METRIC_FORCED, message.priority)
            logger.info(
                "forced past waiting higher priority work",
                extra=log | {contract.LOG_EVENT: contract.EVENT_FORCED},
            )

        try:
            delay = work_item(
                message=message,
                receive_count=receive_count,
                remaining_ms=remaining_ms,
                queue=queue,
                receipt_handle=record.receipt_handle,
                sent_timestamp_ms=int(record.attributes.sent_timestamp),
                deps=deps,
                log=log,
            )
        except PayloadDropped:
            return
        if delay is not None:
            raise MessageReturned(f"retry in {delay}s")
