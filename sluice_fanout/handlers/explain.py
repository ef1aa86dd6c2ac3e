"""Why one item of a batch is where it is (`sluice explain`): a sentence an on-call engineer can
act on, from what Sluice already records about the item, its batch and the stack. Pure: plain
values in, text out; cli/explain.py reads the values (a fixed number of reads per question,
never a scan of the batch's records)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluice_fanout.handlers.once import StoredItem
    from sluice_fanout.handlers.progress import Ended, Retry

RUNNING = "RUNNING"


@dataclass(frozen=True)
class Slots:
    """The stack's API slots now, all batches together."""

    busy: int
    """Items in flight at the worker (received, not yet finished), all priorities."""
    limit: int | None
    """The worker's concurrency now (the operator's or the deployed); None: not known."""
    calls_per_second: float | None


@dataclass(frozen=True)
class Queue:
    """The item's place in the priority queues."""

    priority: str
    ahead: int
    """Items visible in its own queue and the queues above it, all batches."""
    above: tuple[str, ...]
    """The priorities counted in `ahead`, highest first, its own last."""


@dataclass(frozen=True)
class Breaker:
    opened_at: float
    until: float


@dataclass(frozen=True)
class KeyHold:
    """A keyed item's key (docs/keys.md), read from its key's ledger."""

    key: str
    priority: str
    waiting: bool
    """Its wait record is in the keyed table (not claimed by a worker yet)."""
    pending: int
    """The key's unfinished items of this priority, this one included."""
    busy: int
    """The key's items at the API now (live leases)."""
    cap: int | None
    ordered: bool


@dataclass(frozen=True)
class Evidence:
    index: int
    total: int
    state: str
    """The parent execution's status."""
    started_at: float
    now: float
    priority: str | None
    """The item's `priority` field (None: it names none)."""
    priorities: tuple[str, ...]
    throttled: bool
    """Whether the stack's throttle rule sends it to a queue (False: the direct path)."""
    stored: StoredItem | None = None
    ended: Ended | None = None
    retry: Retry | None = None
    not_started: bool = False
    """The Map has not started the item's child execution yet."""
    started: int = 0
    """Child executions the Map has started so far."""
    queue: Queue | None = None
    slots: Slots | None = None
    breaker: Breaker | None = None
    key: KeyHold | None = None
    rate_per_s: float | None = None
    """The batch's items finished per second since it started."""
    listed_failure: tuple[str, str] | None = None
    """The batch's output lists the item as failed with (error, cause)."""


def clock(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%H:%M:%S UTC")


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes}m {secs}s" if hours else (f"{minutes}m {secs}s" if minutes else f"{secs} s")


def _attempts(n: int | None) -> str:
    if not n:
        return ""
    return f" after {n} attempt{'s' if n != 1 else ''}"


def explain(e: Evidence) -> str:
    """One or two sentences: where the item is and why. The checks run from the most certain
    record to the least: a stored outcome, a recorded end, an attempt in progress, a retry, then
    what holds a waiting item back."""
    for sentence in (_finished, _ended, _in_progress, _retrying, _after_batch, _not_queued):
        if (text := sentence(e)) is not None:
            return text
    if e.breaker is not None:
        return _paused(e, e.breaker)
    if e.key is not None and e.key.waiting:
        return _keyed(e, e.key)
    if e.not_started:
        return (
            f"not started yet: the Map has started {e.started:,} of the batch's {e.total:,} items and "
            "opens more as earlier ones finish (highest priority first in a large batch)."
        )
    return _waiting(e)


def _finished(e: Evidence) -> str | None:
    stored = e.stored
    if stored is None or not stored.finished or stored.outcome is None:
        return None
    when = f" at {clock(stored.at)}" if stored.at is not None else ""
    if stored.outcome.output is not None:
        return f"succeeded{when}{_attempts(stored.attempt)}."
    return (
        f"failed{when}{_attempts(stored.attempt)}: {stored.outcome.error}: {stored.outcome.cause} "
        "(the API's answer, not retried; `sluice batch redrive` runs it again)."
    )


def _ended(e: Evidence) -> str | None:
    ended = e.ended
    if ended is None:
        return None
    if ended.dead_lettered:
        return (
            f"dead-lettered at {clock(ended.at)}: {ended.cause} (the message is in its priority's "
            "dead-letter queue: `sluice dlq inspect`; its execution waits until its callback times out)."
        )
    how = _attempts(ended.attempt) if ended.attempt else " without a call to the API"
    return (
        f"failed at {clock(ended.at)}{how}: {ended.error}: {ended.cause} "
        "(`sluice batch redrive` runs it again)."
    )


def _in_progress(e: Evidence) -> str | None:
    stored = e.stored
    if stored is None or stored.finished:
        return None
    if stored.lease_until is not None and stored.lease_until <= e.now:
        return (
            f"its last attempt did not finish: the worker holding it stopped (its lease ran out at "
            f"{clock(stored.lease_until)}); the item is tried again when its message comes back."
        )
    lease = f" (the worker holds it until {clock(stored.lease_until)})" if stored.lease_until else ""
    return f"at the API now: a worker is calling the API with it{lease}."


def _retrying(e: Evidence) -> str | None:
    retry = e.retry
    if retry is None:
        return None
    of = f" of {retry.last_attempt}" if retry.last_attempt is not None else ""
    if retry.next_at > e.now:
        when = f"next at {clock(retry.next_at)}, in {duration(retry.next_at - e.now)}"
    else:
        when = f"its next attempt was due at {clock(retry.next_at)} and waits for a free API slot"
    text = f"retrying after {retry.cause} (attempt {retry.attempt}{of} failed; {when})."
    if e.breaker is not None and e.breaker.until > max(e.now, retry.next_at):
        text += f" The breaker is open until about {clock(e.breaker.until)}, so it waits at least that long."
    return text


def _after_batch(e: Evidence) -> str | None:
    if e.state == RUNNING:
        return None
    if e.listed_failure is not None:
        error, cause = e.listed_failure
        return f"failed: {error}: {cause} (from the batch's output; `sluice batch redrive` runs it again)."
    if e.state != "SUCCEEDED":
        return f"did not finish: its batch ended {e.state} before the item had an outcome."
    if not e.throttled:
        return "succeeded on the direct path (not throttled, so it never waited for the API)."
    return (
        "ended with its batch, and no record of it remains: its records expired (the idempotency "
        "TTL), or it failed before the worker saw it; the batch's output has its result."
    )


def _not_queued(e: Evidence) -> str | None:
    if not e.throttled:
        return (
            "on the direct path: the stack's throttle rule does not select it, so it never waits for the API."
        )
    if e.priority is not None and e.priority not in e.priorities:
        return (
            f"fails without a call: its priority {e.priority!r} is not one of {', '.join(e.priorities)} "
            "(Sluice.UnknownPriority); fix the item's priority and redrive it."
        )
    return None


def _paused(e: Evidence, breaker: Breaker) -> str:
    return (
        f"paused: the breaker is open until about {clock(breaker.until)} (it opened at "
        f"{clock(breaker.opened_at)} when too many of the API's calls failed); the item waits in "
        f"{_priority(e)} meanwhile and nothing is sent to the API."
    )


def _priority(e: Evidence) -> str:
    return e.queue.priority if e.queue is not None else (e.priority or "its queue")


def _keyed(e: Evidence, hold: KeyHold) -> str:
    others = hold.pending - 1
    if hold.ordered:
        return (
            f"waiting its turn in ordered key {hold.key!r} ({hold.priority}): the key's items reach the "
            f"API one at a time, oldest first, and {others:,} other item{'s' if others != 1 else ''} of "
            f"the key {'are' if others != 1 else 'is'} unfinished ({hold.busy} at the API now)."
        )
    if hold.cap is not None and hold.busy >= hold.cap:
        return (
            f"held by its key {hold.key!r} ({hold.priority}): the key's cap of {hold.cap} call"
            f"{'s' if hold.cap != 1 else ''} at once is in use, and {hold.pending:,} of its items are "
            "unfinished, this one included."
        )
    return (
        f"waiting for its key {hold.key!r}'s turn ({hold.priority}): keys with waiting items share the "
        f"API's slots by weight; the key has {hold.busy} item{'s' if hold.busy != 1 else ''} at the API "
        f"and {hold.pending:,} unfinished; {_slots_clause(e)}."
    )


def _slots_clause(e: Evidence) -> str:
    slots = e.slots
    if slots is None:
        return "the API's slots are not known"
    if slots.limit is None:
        return f"{slots.busy:,} items are at the API now"
    if slots.busy >= slots.limit:
        return f"all {slots.limit} API slots are busy"
    return f"{slots.busy} of {slots.limit} API slots are busy"


def _waiting(e: Evidence) -> str:
    queue = e.queue
    since = f"since its batch started {duration(e.now - e.started_at)} ago"
    if queue is None:
        return f"waiting {since}: throttled, not yet at the API."
    names = " and ".join(
        [", ".join(queue.above[:-1]), queue.above[-1]] if len(queue.above) > 1 else queue.above
    )
    ahead = (
        f"{queue.ahead:,} {names} item{'s' if queue.ahead != 1 else ''} wait with or ahead of it"
        if queue.ahead
        else f"no {names} item waits ahead of it"
    )
    slots = e.slots
    if (
        slots is not None
        and slots.calls_per_second is not None
        and (slots.limit is None or slots.busy < slots.limit)
    ):
        held = (
            f"held by the calls-per-second limit ({slots.calls_per_second:g} calls a second): "
            f"{_slots_clause(e)}, and calls go out no faster than the limit"
        )
        return f"waiting in {queue.priority} {since}: {ahead}; {held}{_eta(e, queue.ahead)}."
    return f"waiting in {queue.priority} {since}: {ahead}, and {_slots_clause(e)}{_eta(e, queue.ahead)}."


def _eta(e: Evidence, ahead: int) -> str:
    if not ahead or not e.rate_per_s:
        return ""
    if ahead / e.rate_per_s < 1:
        return " (it should go within a second at the batch's rate)"
    return (
        f" (about {duration(ahead / e.rate_per_s)} more at the batch's {e.rate_per_s:.1f} items a second; "
        "an estimate)"
    )
