"""The priority worker: SQS records in, legacy-API calls out, task tokens completed.

Each record ends in exactly one of:
- processed: the target ran and the token got SendTaskSuccess or SendTaskFailure; the
  message is deleted (reported as a success to the event source mapping);
- returned: a yield, a RetryLater or a retryable error; the message's visibility is set to the
  wanted delay and it is reported in batchItemFailures, so SQS delivers it again;
- malformed: failed with a reason (token known) or moved to the DLQ (no token); deleted.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Self

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)

from sluice_fanout.handlers import contract, priority
from sluice_fanout.handlers.adapters import DynamoRateLimiter, SqsQueues, TaskTokens
from sluice_fanout.handlers.messages import MalformedMessage, WorkMessage, parse_message
from sluice_fanout.handlers.metrics import WorkerMetrics
from sluice_fanout.handlers.once import ItemInProgress, OncePerItem, Outcome, ResultSpill, task_output
from sluice_fanout.handlers.rate import Denied, RateLimiter, interval_for
from sluice_fanout.handlers.settings import SettingsError, WorkerSettings
from sluice_fanout.handlers.target import PermanentFailure, RetryLater, Target, TargetContext, load_target

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger(service="sluice-worker")

MAX_EMPTY_TICKET_DELAY_S = 60
EMPTY_TICKET_DELAY_SECONDS = 1
"""First delay of a ticket that found nothing; it doubles per receive up to the maximum."""
ORPHAN_TICKET_RECEIVES = 10
ORPHAN_TICKET_AGE_SECONDS = 60
"""A ticket is an orphan (dropped) after this many receives and this age with nothing waiting."""
# Dropping a message that is not work is quick, but an invocation must not spend its time on a
# flood of junk: after this many in one queue the ticket moves on.
MAX_DROPPED_PER_QUEUE = 10
TICKET_PAYLOAD_WAIT_S = 1
"""How long a ticket that found nothing waits for its own payload (SQS long polling, whole s)."""
# When no Lambda context is given (tests, local runs), assume a generous deadline.
NO_CONTEXT_REMAINING_MS = 900_000
# The FunctionName dimension when the worker runs outside Lambda (no AWS_LAMBDA_FUNCTION_NAME).
LOCAL_FUNCTION_NAME = "local"
THROTTLE_HOLD_MAX_S = 2.0
"""Longest an invocation keeps its slot after a 429 (see _hold_slot): long enough to slow a
refused slot to about one call per hold, short enough that a Retry-After of minutes does not
bill minutes of sleep (the message's visibility carries the rest of the wait)."""


class WorkerConfigError(SettingsError):
    """The worker's environment is wrong; the deploy, not the message, needs fixing."""


class PayloadDropped(Exception):  # noqa: N818 - a control signal, not an error
    """The message was not (or is no longer) work: malformed, or its task has ended. It has been
    dealt with and may be deleted; a ticket that pulled it is still unused."""


class AttemptsSpent(Exception):  # noqa: N818 - a control signal, not an error
    """Every allowed attempt was used up by deliveries that never reported back."""


class ApiRefused(RetryLater):
    """The target itself refused the call (HTTP 429): unlike the rate limiter's own RetryLater,
    a call was made and the API is full."""


class MessageReturned(Exception):  # noqa: N818 - a control signal, not an error
    """The message goes back to its queue (visibility already set); report it as failed."""


@dataclass(frozen=True)
class QueueRef:
    priority: str
    url: str
    arn: str
    dlq_url: str


@dataclass(frozen=True, kw_only=True)
class WorkerConfig(WorkerSettings):
    """The worker's settings (`WorkerSettings`) and what the deploy wires in beside them."""

    queues: tuple[QueueRef, ...]
    """Highest priority first."""
    idempotency_table: str = ""
    ticket_queue_url: str = ""
    results_bucket: str = ""
    """Bucket for results too large for Step Functions; empty: such results fail the item."""
    # Not settings: fixed behaviour of the ticket dispatch, fields so that tests can shorten them.
    orphan_ticket_receives: int = ORPHAN_TICKET_RECEIVES
    orphan_ticket_age_seconds: int = ORPHAN_TICKET_AGE_SECONDS
    empty_ticket_delay_seconds: int = EMPTY_TICKET_DELAY_SECONDS

    @property
    def priorities(self) -> list[str]:
        return [q.priority for q in self.queues]

    def queue_for_arn(self, arn: str) -> QueueRef:
        for queue in self.queues:
            if queue.arn == arn:
                return queue
        raise WorkerConfigError(
            f"record from {arn!r}, which is not one of this worker's queues "
            f"({[q.arn for q in self.queues]!r}); check {contract.ENV_QUEUES}"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str], error: type[Exception] = WorkerConfigError) -> Self:
        raw = env.get(contract.ENV_QUEUES)
        if not raw:
            raise error(f"{contract.ENV_QUEUES} is not set")
        try:
            queues = tuple(QueueRef(q["priority"], q["url"], q["arn"], q["dlq_url"]) for q in json.loads(raw))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise error(
                f"{contract.ENV_QUEUES} must be a JSON list of objects with priority, url, arn "
                f"and dlq_url, got {raw!r}"
            ) from exc
        settings = WorkerSettings.from_env(env, error)
        if settings.dispatch == contract.DISPATCH_TICKET and not env.get(contract.ENV_TICKET_QUEUE_URL):
            raise error(f"{contract.ENV_TICKET_QUEUE_URL} is required with the ticket dispatch")
        table = env.get(contract.ENV_IDEMPOTENCY_TABLE, "")
        if not table:
            # Without the table a redelivered message would call the legacy API a second time.
            raise error(
                f"{contract.ENV_IDEMPOTENCY_TABLE} is not set; the worker needs its idempotency table"
            )
        return cls(
            **settings.values(),
            queues=queues,
            idempotency_table=table,
            ticket_queue_url=env.get(contract.ENV_TICKET_QUEUE_URL, ""),
            results_bucket=env.get(contract.ENV_RESULTS_BUCKET, ""),
        )


@dataclass(frozen=True)
class WorkerDeps:
    config: WorkerConfig
    queues: SqsQueues
    tokens: TaskTokens
    target: Target
    once: OncePerItem
    spill: ResultSpill | None = None
    """Where results too large for Step Functions go; None fails them with the reason."""
    clock: Callable[[], float] = time.time
    """Wall-clock seconds, to compare with SQS's SentTimestamp."""
    metrics: WorkerMetrics = field(default_factory=lambda: WorkerMetrics(LOCAL_FUNCTION_NAME))
    """Where item counts and timings go; flushed at the end of every batch."""
    timer: Callable[[], float] = time.perf_counter
    """Monotonic seconds, to time the target call."""
    limiter: RateLimiter | None = None
    """Where each real call reserves its slot under the calls-per-second limit; None: no limit."""
    sleep: Callable[[float], None] = time.sleep
    """How the worker waits for its slot."""


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


def handle_batch(event: dict[str, Any], context: LambdaContext | None, deps: WorkerDeps) -> dict[str, Any]:
    """Work one SQS batch; return the partial batch response."""
    depths = VisibleDepths(deps.config, deps.queues)
    remaining_ms = context.get_remaining_time_in_millis if context else (lambda: NO_CONTEXT_REMAINING_MS)

    def record_handler(record: SQSRecord) -> None:
        if deps.config.dispatch == contract.DISPATCH_TICKET:
            handle_ticket(record, deps, remaining_ms())
        else:
            handle_record(record, deps, depths, remaining_ms())

    # Returning every record is normal here (a batch may all yield), so the processor must not
    # raise for it: that would make the whole batch, including any successes, come back.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    try:
        return dict(process_partial_response(event, record_handler, processor, context))
    finally:
        # Here rather than @log_metrics on lambda_handler: a batch run directly (tests, the
        # local runner) emits what Lambda would, and the sandbox carries nothing over.
        deps.metrics.flush()


def handle_record(record: SQSRecord, deps: WorkerDeps, depths: Mapping[str, int], remaining_ms: int) -> None:
    """Work one record. Returns normally when the message may be deleted."""
    config = deps.config
    queue = config.queue_for_arn(record.event_source_arn)
    receive_count = int(record.attributes.approximate_receive_count)
    log = {"message_id": record.message_id, "queue_priority": queue.priority, "receive_count": receive_count}
    try:
        message = parse_message(record.body, config.priorities)
    except MalformedMessage as exc:
        _handle_malformed(exc, record.body, queue, deps, log)
        return
    with logger.append_context_keys(**_item_keys(message)):
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
            logger.info("yielded to higher priority work", extra=log | {"delay_s": decision.delay_seconds})
            raise MessageReturned("yielded")
        if decision.forced:
            deps.metrics.count(contract.METRIC_FORCED, message.priority)
            logger.info("forced past waiting higher priority work", extra=log)

        try:
            delay = _call_target(
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
                delay = _work_payload(payload, queue, deps, remaining_ms)
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
        logger.warning("orphan ticket dropped", extra={"ticket_receives": ticket_receives, "index": index})
        return
    # Doubling: a ticket that came just ahead of its payload finds it at the next try, while a
    # surplus one (its payload's task ended, a duplicate delivery) slows down instead of
    # burning through the ticket queue's receive limit into its DLQ while other work is slow.
    delay = min(
        config.empty_ticket_delay_seconds * 2 ** min(ticket_receives - 1, 16), MAX_EMPTY_TICKET_DELAY_S
    )
    deps.queues.change_visibility(config.ticket_queue_url, record.receipt_handle, delay)
    logger.info("empty ticket returned", extra={"ticket_receives": ticket_receives, "delay_s": delay})
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


def _work_payload(
    payload: dict[str, Any], queue: QueueRef, deps: WorkerDeps, remaining_ms: int
) -> int | None:
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
        _handle_malformed(exc, payload["Body"], queue, deps, log)
        raise PayloadDropped(exc.reason) from exc
    with logger.append_context_keys(**_item_keys(message)):
        return _call_target(
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


def _item_keys(message: WorkMessage) -> dict[str, Any]:
    """On every log line about the item, the adapters' included; never its token or payload."""
    return {"index": message.index, "priority": message.priority, "execution": message.execution}


def _call_target(
    *,
    message: WorkMessage,
    receive_count: int,
    remaining_ms: int,
    queue: QueueRef,
    receipt_handle: str,
    sent_timestamp_ms: int | None,
    deps: WorkerDeps,
    log: dict[str, Any],
) -> int | None:
    """Call the target and complete the token; None when done, else the retry delay (visibility
    already set)."""
    config = deps.config
    ctx = TargetContext(
        index=message.index,
        priority=message.priority,
        execution=message.execution,
        receive_count=receive_count,
        remaining_ms=remaining_ms,
    )
    # Ticket payloads are received only to be worked: every receive is an attempt.
    force = 1 if config.dispatch == contract.DISPATCH_TICKET else config.force_after_receives

    def exhausted_at(n: int) -> bool:
        return priority.attempts_exhausted(
            receive_count=n, force_after_receives=force, max_attempts=config.max_attempts
        )

    entered = deps.timer()
    if not deps.tokens.alive(message.token):
        # The callback timed out or the execution stopped: nobody will read this result, and
        # calling the API now would be work the aggregate already reports as failed.
        logger.warning("task already ended; item not worked", extra=log)
        raise PayloadDropped("task already ended")
    metrics = deps.metrics
    if sent_timestamp_ms is not None:
        # SentTimestamp is the first send: a redelivery reports the whole wait so far.
        wait_ms = max(0.0, deps.clock() * 1000 - sent_timestamp_ms)
        metrics.milliseconds(contract.METRIC_QUEUE_WAIT, message.priority, wait_ms)
    # The last allowed attempt never reported back (the worker crashed or timed out): no new
    # call. Its outcome may still be stored (it died after the API answered), else the item
    # ends now instead of SQS dead-lettering it with its execution still waiting.
    spent = exhausted_at(receive_count - 1)
    exhausted = exhausted_at(receive_count)
    spill = deps.spill.writer(message.execution, message.index) if deps.spill else None

    def attempt() -> Outcome:
        if spent:
            raise AttemptsSpent(f"{receive_count - 1} deliveries without a finished attempt")
        # Here, inside the idempotent attempt: a replay of a stored outcome calls nothing and
        # takes no slot.
        _wait_for_slot(deps, remaining_ms, log)
        # Nothing between the slot and the call: a call that starts late crowds the next
        # second's window of the calls-per-second limit. The call is counted after it.
        started = deps.timer()
        try:
            result = deps.target(message.item, ctx)
        except PermanentFailure as exc:
            answered(started)
            return Outcome(error=contract.ERROR_PERMANENT, cause=str(exc) or type(exc).__name__)
        except RetryLater as exc:
            metrics.count(contract.METRIC_API_CALLS, message.priority)
            metrics.count(contract.METRIC_API_THROTTLED, message.priority)
            raise ApiRefused(exc.seconds, str(exc)) from exc
        except Exception:
            answered(started)
            metrics.count(contract.METRIC_API_ERRORS, message.priority)
            raise
        answered(started)
        return task_output(result=result, item=message.item, spill=spill)

    def answered(started: float) -> None:
        latency_ms = (deps.timer() - started) * 1000
        metrics.count(contract.METRIC_API_CALLS, message.priority)
        metrics.milliseconds(contract.METRIC_API_LATENCY, message.priority, latency_ms)

    try:
        outcome, replayed = deps.once.run(
            execution=message.execution, index=message.index, remaining_ms=remaining_ms, attempt=attempt
        )
    except AttemptsSpent as exc:
        logger.warning("attempts exhausted before this delivery", extra=log)
        deps.tokens.fail(message.token, contract.ERROR_RETRIES_EXHAUSTED, f"{exc} (worker crash or timeout)")
        metrics.count(contract.METRIC_FAILED, message.priority)
        return None
    except ItemInProgress as exc:
        # Never fail the token here, even out of attempts: the holder will complete it.
        delay = priority.clamp_visibility(exc.retry_after_s)
        deps.queues.change_visibility(queue.url, receipt_handle, delay)
        metrics.count(contract.METRIC_RETRIED, message.priority)
        logger.info("item in progress elsewhere", extra=log | {"delay_s": delay})
        return delay
    except RetryLater as exc:
        delay = priority.clamp_visibility(exc.seconds)
        cause = f"RetryLater after {delay}s: {exc}"
        if isinstance(exc, ApiRefused):
            # What is left now: a rate-limit wait and the call itself took part of it.
            _hold_slot(deps, delay, remaining_ms - (deps.timer() - entered) * 1000)
    except Exception as exc:  # noqa: BLE001 - any target error (or a store outage) is retried by contract
        delay = priority.retry_delay(
            receive_count=ctx.receive_count,
            base_seconds=config.retry_base_seconds,
            max_seconds=config.retry_max_seconds,
        )
        cause = f"{type(exc).__name__}: {exc}"
    else:
        _complete(message, outcome, deps, log | {"replayed": replayed})
        return None

    if exhausted:
        logger.warning("attempts exhausted", extra=log | {"cause": cause[:200]})
        deps.tokens.fail(message.token, contract.ERROR_RETRIES_EXHAUSTED, cause)
        metrics.count(contract.METRIC_FAILED, message.priority)
        return None
    deps.queues.change_visibility(queue.url, receipt_handle, delay)
    metrics.count(contract.METRIC_RETRIED, message.priority)
    logger.info("will retry", extra=log | {"delay_s": delay, "cause": cause[:200]})
    return delay


def _hold_slot(deps: WorkerDeps, retry_after_s: float, remaining_ms: float) -> None:
    """After the API refused a call, keep this invocation (its concurrency slot) a moment.

    A freed slot would take the next ticket at once and send another call into the same full
    API: the refusals would come as fast as the queue can deliver, and the 429 share the
    controller sees would depend on SQS round trips, not on how far the limit is over the API's
    capacity. Held for the Retry-After (at most THROTTLE_HOLD_MAX_S, and never into the time the
    invocation needs to return), a refused slot makes about one call per hold. With the adaptive
    controller on, the hold is at least its reaction time (interval + signal delay): an excess
    slot then refuses about once before the controller removes it, instead of once per
    Retry-After, which keeps the 429 share of a capacity drop low. It costs billed time only
    while the API is refusing.
    """
    budget = remaining_ms / 1000 * contract.RATE_MAX_WAIT_SHARE
    wanted = max(min(retry_after_s, THROTTLE_HOLD_MAX_S), deps.config.throttle_hold_seconds or 0.0)
    hold = min(wanted, budget)
    if hold > 0:
        # EMF lines carry the time they are printed: printed after the hold, the refusal would
        # land in the controller's next window, and it would decrease twice for one refusal.
        deps.metrics.flush()
        deps.sleep(hold)


def _wait_for_slot(deps: WorkerDeps, remaining_ms: int, log: dict[str, Any]) -> None:
    """Reserve this call's slot under the calls-per-second limit and sleep until it comes.

    A slot further away than half the remaining time is not reserved: the message goes back
    (RetryLater) to come again when the slot would be free. Validation keeps that from happening
    in a sound stack: at most `concurrency` slots are ever reserved ahead, and concurrency /
    calls_per_second must fit in half the worker timeout.
    """
    if deps.limiter is None:
        return
    decision = deps.limiter.reserve(max_wait=remaining_ms / 1000 * contract.RATE_MAX_WAIT_SHARE)
    if isinstance(decision, Denied):
        logger.warning("rate limit slot too far away", extra=log | {"wait_s": round(decision.wait, 3)})
        raise RetryLater(math.ceil(decision.wait), "calls-per-second limit: next slot too far away")
    # Until the slot itself, not for `wait`: the reservation's own round trip is already spent,
    # and a call that starts late crowds the next second's window.
    delay = decision.at - deps.clock()
    if delay > 0:
        deps.sleep(delay)


def _complete(message: WorkMessage, outcome: Outcome, deps: WorkerDeps, log: dict[str, Any]) -> None:
    if outcome.output is None:
        deps.tokens.fail(message.token, outcome.error, outcome.cause)
        deps.metrics.count(contract.METRIC_FAILED, message.priority)
        logger.info("permanent failure", extra=log | {"error": outcome.error})
        return
    deps.tokens.succeed(message.token, outcome.output)
    deps.metrics.count(contract.METRIC_PROCESSED, message.priority)
    logger.info("processed", extra=log)


def _handle_malformed(
    exc: MalformedMessage, body: str, queue: QueueRef, deps: WorkerDeps, log: dict[str, Any]
) -> None:
    if exc.token is None:
        # Nobody is waiting on this message and retrying cannot fix it: straight to the DLQ.
        deps.queues.dead_letter(queue.dlq_url, body, exc.reason)
        logger.error("malformed message dead-lettered", extra=log | {"reason": exc.reason})
        return
    deps.tokens.fail(exc.token, exc.error, exc.reason)
    # Its own priority is unknown or untrusted: counted under the queue it came from.
    deps.metrics.count(contract.METRIC_FAILED, queue.priority)
    logger.error("malformed message failed", extra=log | {"reason": exc.reason, "error": exc.error})


@lru_cache(maxsize=1)
def _deps() -> WorkerDeps:
    """Built on the first invocation, not at import, and reused while the sandbox lives."""
    import boto3  # noqa: PLC0415 - deferred so importing this module stays free of AWS set-up
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer  # noqa: PLC0415 - same reason
    from botocore.config import Config  # noqa: PLC0415 - same reason

    config = WorkerConfig.from_env(os.environ)
    # Standard retry mode backs off on throttling and transient errors, so a throttled
    # SendTaskSuccess is retried by botocore rather than lost.
    client_config = Config(retries={"mode": "standard", "max_attempts": 5})
    ddb = boto3.client("dynamodb", config=client_config)
    persistence = DynamoDBPersistenceLayer(
        table_name=config.idempotency_table,
        key_attr=contract.IDEMPOTENCY_KEY_ATTRIBUTE,
        expiry_attr=contract.IDEMPOTENCY_EXPIRY_ATTRIBUTE,
        boto3_client=ddb,
    )
    function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", LOCAL_FUNCTION_NAME)
    return WorkerDeps(
        config=config,
        queues=SqsQueues(boto3.client("sqs", config=client_config)),
        tokens=TaskTokens(boto3.client("stepfunctions", config=client_config), logger),
        target=load_target(config.target),
        once=OncePerItem(persistence, config.idempotency_ttl_seconds),
        # Lambda sets it; the dashboard and alarms query the same name (the function's).
        metrics=WorkerMetrics(function_name),
        spill=ResultSpill(boto3.client("s3", config=client_config), config.results_bucket)
        if config.results_bucket
        else None,
        # One limiter per function: every invocation of it shares the item `rate#<function>`.
        limiter=DynamoRateLimiter(
            ddb, config.idempotency_table, function_name, interval_for(config.calls_per_second)
        )
        if config.calls_per_second
        else None,
    )


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle_batch(event, context, _deps())
