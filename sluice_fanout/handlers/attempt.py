"""The attempt policy: one pulled or delivered message worked under the item's idempotency
record, the rate limit and the attempt budget; the target called; the outcome completed."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sluice_fanout.handlers import contract, priority, slot_time
from sluice_fanout.handlers.completion import complete, count_outcome, note_retry
from sluice_fanout.handlers.once import ItemInProgress, Outcome, task_output
from sluice_fanout.handlers.progress import Ended, Retry
from sluice_fanout.handlers.rate import RATE_LATE_S, RATE_LATE_TRIES, RATE_MAX_WAIT_SHARE, Denied
from sluice_fanout.handlers.target import PermanentFailure, RetryLater, TargetContext
from sluice_fanout.handlers.worker_config import logger

if TYPE_CHECKING:
    from sluice_fanout.handlers.messages import WorkMessage
    from sluice_fanout.handlers.worker_config import QueueRef, WorkerDeps

THROTTLE_HOLD_MAX_S = 2.0
"""Longest an invocation keeps its slot after a 429 (see _hold_slot): long enough to slow a
refused slot to about one call per hold, short enough that a Retry-After of minutes does not
bill minutes of sleep (the message's visibility carries the rest of the wait)."""


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


def item_keys(message: WorkMessage) -> dict[str, Any]:
    """On every log line about the item, the adapters' included; never its token or payload."""
    return {"index": message.index, "priority": message.priority, "execution": message.execution}


def work_item(
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
            with deps.slot_time.timed(slot_time.API_CALL):
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
        return task_output(result=result, spill=spill)

    def answered(started: float) -> None:
        latency_ms = (deps.timer() - started) * 1000
        metrics.count(contract.METRIC_API_CALLS, message.priority)
        metrics.milliseconds(contract.METRIC_API_LATENCY, message.priority, latency_ms)

    try:
        outcome, replayed = deps.once.run(
            execution=message.execution,
            index=message.index,
            remaining_ms=remaining_ms,
            attempt=attempt,
            number=receive_count,
        )
    except AttemptsSpent as exc:
        logger.warning("attempts exhausted before this delivery", extra=log)
        cause = f"{exc} (worker crash or timeout)"
        deps.tokens.fail(message.token, contract.ERROR_RETRIES_EXHAUSTED, cause)
        metrics.count(contract.METRIC_FAILED, message.priority)
        ended = Ended(message.index, deps.clock(), contract.ERROR_RETRIES_EXHAUSTED, cause, receive_count - 1)
        count_outcome(deps, message.execution, message.index, ok=False, ended=ended)
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
        complete(message, outcome, deps, log | {"replayed": replayed}, replayed=replayed)
        return None

    if exhausted:
        logger.warning("attempts exhausted", extra=log | {"cause": cause[:200]})
        deps.tokens.fail(message.token, contract.ERROR_RETRIES_EXHAUSTED, cause)
        metrics.count(contract.METRIC_FAILED, message.priority)
        ended = Ended(message.index, deps.clock(), contract.ERROR_RETRIES_EXHAUSTED, cause, receive_count)
        count_outcome(deps, message.execution, message.index, ok=False, ended=ended)
        return None
    deps.queues.change_visibility(queue.url, receipt_handle, delay)
    last = priority.last_attempt(force_after_receives=force, max_attempts=config.max_attempts)
    retry = Retry(message.index, deps.clock() + delay, receive_count, cause, last)
    note_retry(deps, message.execution, retry)
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
    budget = remaining_ms / 1000 * RATE_MAX_WAIT_SHARE
    wanted = max(min(retry_after_s, THROTTLE_HOLD_MAX_S), deps.config.throttle_hold_seconds or 0.0)
    hold = min(wanted, budget)
    if hold > 0:
        # EMF lines carry the time they are printed: printed after the hold, the refusal would
        # land in the controller's next window, and it would decrease twice for one refusal.
        deps.metrics.flush()
        with deps.slot_time.timed(slot_time.THROTTLE_HOLD):
            deps.sleep(hold)


def _wait_for_slot(deps: WorkerDeps, remaining_ms: int, log: dict[str, Any]) -> None:
    """Reserve this call's slot under the calls-per-second limit and sleep until it comes.

    A slot further away than half the remaining time is not reserved: the message goes back
    (RetryLater) to come again when the slot would be free. Validation keeps that from happening
    in a sound stack: at most `concurrency` slots are ever reserved ahead, and concurrency /
    calls_per_second must fit in half the worker timeout.

    A call that wakes later than RATE_LATE_S after its slot (a descheduled host, a slow
    reservation) does not go: started late, it would share a one-second window with `rate` calls
    after it, and the API would refuse one. It reserves the next free slot instead; the late
    slot goes unused, which costs throughput, never a refusal.
    """
    if deps.limiter is None:
        return
    for _ in range(RATE_LATE_TRIES):
        decision = deps.limiter.reserve(max_wait=remaining_ms / 1000 * RATE_MAX_WAIT_SHARE)
        if isinstance(decision, Denied):
            logger.warning("rate limit slot too far away", extra=log | {"wait_s": round(decision.wait, 3)})
            raise RetryLater(math.ceil(decision.wait), "calls-per-second limit: next slot too far away")
        # Until the slot itself, not for `wait`: the reservation's own round trip is already spent,
        # and a call that starts late crowds the next second's window.
        delay = decision.at - deps.clock()
        if delay > 0:
            with deps.slot_time.timed(slot_time.RATE_WAIT):
                deps.sleep(delay)
        late = deps.clock() - decision.at
        if late <= RATE_LATE_S:
            return
        logger.info("late for its rate-limit slot; reserving another", extra=log | {"late_s": round(late, 3)})
    raise RetryLater(1, f"calls-per-second limit: late for {RATE_LATE_TRIES} slots in a row")
