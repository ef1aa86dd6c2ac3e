"""Token completion: an item's outcome sent back to its waiting execution, and a message that
can never be worked failed (token known) or dead-lettered with the reason (no token)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from sluice_fanout.handlers import contract
from sluice_fanout.handlers.messages import execution_and_index
from sluice_fanout.handlers.progress import Ended
from sluice_fanout.handlers.worker_config import logger

if TYPE_CHECKING:
    from sluice_fanout.handlers.messages import MalformedMessage, WorkMessage
    from sluice_fanout.handlers.once import Outcome
    from sluice_fanout.handlers.progress import Retry
    from sluice_fanout.handlers.worker_config import QueueRef, WorkerDeps


def complete(
    message: WorkMessage, outcome: Outcome, deps: WorkerDeps, log: dict[str, Any], *, replayed: bool = False
) -> None:
    """Send the item's outcome; count it in its batch's progress unless it is a replay of an
    outcome counted when it was stored."""
    if outcome.output is None:
        deps.tokens.fail(message.token, outcome.error, outcome.cause)
        deps.metrics.count(contract.METRIC_FAILED, message.priority)
        logger.info("permanent failure", extra=log | {"error": outcome.error})
    else:
        deps.tokens.succeed(message.token, final_result(message, outcome.output))
        deps.metrics.count(contract.METRIC_PROCESSED, message.priority)
        logger.info("processed", extra=log)
    if not replayed:
        count_outcome(deps, message.execution, message.index, ok=outcome.output is not None)


def count_outcome(
    deps: WorkerDeps, execution: str, index: int, *, ok: bool, ended: Ended | None = None
) -> None:
    """The item's final outcome in its batch's progress record, and `ended` (why it failed, when
    no idempotency record stores that) beside it. Progress is for operators: a failed write is
    logged, never an item's failure."""
    if deps.progress is None:
        return
    try:
        deps.progress.finished(execution, index, ok=ok)
        if ended is not None:
            deps.progress.ended(execution, ended)
    except ClientError:
        logger.warning(
            "batch progress not counted", extra={"execution": execution, "index": index}, exc_info=True
        )


def note_retry(deps: WorkerDeps, execution: str, retry: Retry) -> None:
    """The item's next attempt in its batch's progress record (same rule as `count_outcome`)."""
    if deps.progress is None:
        return
    try:
        deps.progress.retrying(execution, retry)
    except ClientError:
        logger.warning(
            "batch retry not noted", extra={"execution": execution, "index": retry.index}, exc_info=True
        )


def final_result(message: WorkMessage, output: str) -> str:
    """The item's structured result around the target's output (JSON text): the wait state ends
    the child execution with it, so no state after it has to shape it (one transition less)."""
    # Composed as text: the output may be up to 256 KiB, and parsing it only to write it again
    # would cost the worker time on every item.
    head = json.dumps(
        {"status": contract.STATUS_SUCCEEDED, "index": message.index, "priority": message.priority}
    )
    return f'{head[:-1]}, "result": {output}}}'


def handle_malformed(
    exc: MalformedMessage, body: str, queue: QueueRef, deps: WorkerDeps, log: dict[str, Any]
) -> None:
    where = execution_and_index(body)
    if exc.token is None:
        # Nobody is waiting on this message and retrying cannot fix it: straight to the DLQ.
        deps.queues.dead_letter(queue.dlq_url, body, exc.reason)
        logger.error("malformed message dead-lettered", extra=log | {"reason": exc.reason})
        if where is not None and deps.progress is not None:
            # Not counted as an outcome: its execution still waits, and ends by timing out.
            ended = Ended(where[1], deps.clock(), exc.error, exc.reason, 0, dead_lettered=True)
            try:
                deps.progress.ended(where[0], ended)
            except ClientError:
                logger.warning("dead-lettering not recorded", extra=log, exc_info=True)
        return
    deps.tokens.fail(exc.token, exc.error, exc.reason)
    # Its own priority is unknown or untrusted: counted under the queue it came from.
    deps.metrics.count(contract.METRIC_FAILED, queue.priority)
    logger.error("malformed message failed", extra=log | {"reason": exc.reason, "error": exc.error})
    if where is not None:
        count_outcome(deps, *where, ok=False, ended=Ended(where[1], deps.clock(), exc.error, exc.reason, 0))
