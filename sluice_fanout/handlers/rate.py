"""A calls-per-second limit shared by every invocation of the worker: GCRA without burst.

Decides only: adapters.DynamoRateLimiter keeps the TAT in DynamoDB, the worker sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

RATE_WINDOW_ALLOWANCE_S = 0.05
"""Slack added to every second of spacing: calls are spaced (1 s + 50 ms) / rate apart, so the
(rate+1)-th call starts at least 50 ms after the first one's one-second window closed. It absorbs
what happens between the granted slot and the API seeing the request (waking from sleep,
connecting, clocks of different hosts) and costs 5% of the published rate."""
RATE_RESERVATION_LEAD_S = 0.05
"""A slot that is due at once is granted this far ahead: the conditional write that reserves it
takes time, and a call that starts after its slot crowds the window of the ones after it. It
adds this much latency to a call the limit does not hold back, nothing to throughput."""
RATE_LATE_S = RATE_WINDOW_ALLOWANCE_S / 2
"""Latest a call may start after its slot: the other half of the allowance is for the request's
way to the API."""
RATE_LATE_TRIES = 3
"""Slots a call may wake late for before it goes back to its queue (a host too busy to keep time)."""
RATE_MAX_WAIT_SHARE = 0.5
"""The longest a call waits for its rate-limit slot, as a share of the invocation's remaining
time: the other half is for the call itself."""


def longest_rate_wait(concurrency: int, calls_per_second: float) -> float:
    """Longest a call waits for its slot: at most `concurrency` invocations hold a reserved slot,
    so a call waits at most that many intervals."""
    return concurrency * interval_for(calls_per_second)


def rate_wait_allowed(timeout_seconds: int) -> float:
    """Longest wait a worker of this timeout can afford: half its time (the rest is for the
    call), less a second for what comes before the reservation. Beyond it items would bounce."""
    return timeout_seconds * RATE_MAX_WAIT_SHARE - 1


def interval_for(calls_per_second: float) -> float:
    """Seconds between granted slots for a published rate."""
    if not calls_per_second > 0:
        raise ValueError(f"calls_per_second must be > 0, got {calls_per_second!r}")
    return (1.0 + RATE_WINDOW_ALLOWANCE_S) / calls_per_second


@dataclass(frozen=True)
class Grant:
    """A reserved slot: start the call `wait` seconds from `now`; the next slot is at `tat`."""

    at: float
    wait: float
    tat: float


@dataclass(frozen=True)
class Denied:
    """The next slot is `wait` seconds away, longer than the caller can wait: nothing reserved."""

    wait: float


def reserve(
    tat: float | None, now: float, interval: float, max_wait: float, lead: float = 0.0
) -> Grant | Denied:
    """Reserve the next slot at or after `now + lead`, unless it is more than `max_wait` away.

    The generic cell rate algorithm: `tat`, the theoretical arrival time, is the earliest moment
    the next call may start (None: never used, or expired). A call arriving at `now` is granted
    `max(tat, now)` and moves the TAT one interval past it, so granted slots are at least one
    interval apart whatever the arrival pattern; with no burst allowance, any window shorter than
    `rate` intervals holds at most `rate` slots. A slot in the
    past is not kept: idle time does not bank calls for a later burst. `lead` is how long the
    reservation itself may take: a slot that is due at once is set that far ahead, so the call
    does not start late against the slots after it.
    """
    soonest = now + lead
    slot = soonest if tat is None else max(tat, soonest)
    wait = slot - now
    if wait > max_wait:
        return Denied(wait)
    return Grant(at=slot, wait=wait, tat=slot + interval)


class RateLimiter(Protocol):
    """Where the worker reserves its slot; adapters.DynamoRateLimiter shares it across invocations."""

    def reserve(self, max_wait: float) -> Grant | Denied: ...


class RateLimiterContended(Exception):  # noqa: N818 - names the state, not a bug
    """Every try to move the TAT lost to another invocation; the call is retried later."""
