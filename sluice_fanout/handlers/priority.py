"""The `yield` dispatch rule: should this worker slot work this message now, or give it back?

Pure: plain values in, plain values out. No boto3, no clock, no environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sluice_fanout.handlers.limits import SQS_MAX_VISIBILITY_SECONDS

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


@dataclass(frozen=True)
class Process:
    """Work the message now."""

    forced: bool
    """True when higher work was waiting but the message reached its force threshold."""


@dataclass(frozen=True)
class Yield:
    """Return the message to its queue, visible again after `delay_seconds`."""

    delay_seconds: int


Decision = Process | Yield


def higher_priorities(priority: str, priorities: Sequence[str]) -> list[str]:
    """The priorities strictly above `priority` (the list is highest first)."""
    return list(priorities[: priorities.index(priority)])


def decide(
    *,
    priority: str,
    priorities: Sequence[str],
    receive_count: int,
    force_after_receives: int,
    visible_depths: Mapping[str, int],
    yield_delay_seconds: int,
) -> Decision:
    """Decide process or yield for one message of priority P received for the n-th time.

    n = ApproximateReceiveCount (`receive_count`). The rule:
    1. P is the highest priority: process.
    2. n >= force_after_receives: process ("forced" when higher work was waiting), so a message
       yields at most `force_after_receives - 1` times and never starves into the DLQ.
    3. Some strictly higher queue has visible messages: yield, i.e. make the message visible again
       after `yield_delay_seconds` and free the slot for the higher work.
    4. Otherwise: process.

    `visible_depths` maps priority name to the queue's visible message count; only strictly
    higher priorities are consulted, and a missing entry counts as empty.
    """
    higher = higher_priorities(priority, priorities)
    higher_has_work = any(visible_depths.get(p, 0) > 0 for p in higher)
    if not higher_has_work:
        return Process(forced=False)
    if receive_count >= force_after_receives:
        return Process(forced=True)
    return Yield(delay_seconds=clamp_visibility(yield_delay_seconds))


def clamp_visibility(seconds: float) -> int:
    """A visibility timeout SQS accepts: whole seconds in 0..12 h."""
    return max(0, min(SQS_MAX_VISIBILITY_SECONDS, round(seconds)))


def attempts_exhausted(*, receive_count: int, force_after_receives: int, max_attempts: int) -> bool:
    """Whether a failed attempt at this receive count was the last one allowed.

    Receive counts include yields, and a message yields at most `force_after_receives - 1`
    times, so at this threshold the item has had at least `max_attempts` real attempts.
    """
    return receive_count >= last_attempt(force_after_receives=force_after_receives, max_attempts=max_attempts)


def last_attempt(*, force_after_receives: int, max_attempts: int) -> int:
    """The receive count whose failed attempt is the item's last (see attempts_exhausted)."""
    return force_after_receives - 1 + max_attempts


def retry_delay(*, receive_count: int, base_seconds: float, max_seconds: float) -> int:
    """Exponential backoff before the next attempt: base * 2^(n-1), capped."""
    exponent = max(0, receive_count - 1)
    # Cap the exponent first so a huge receive count cannot overflow the float.
    delay = base_seconds * (2 ** min(exponent, 32))
    return clamp_visibility(min(delay, max_seconds))


# ---- ticket dispatch -------------------------------------------------------------------------


def ticket_slot(index: int, share_period: int, receive_count: int = 1) -> int:
    """Which share slot a ticket falls in.

    Consecutive items cycle through all slots, and so does one ticket that comes back again and
    again (a retried or empty ticket): a recycled ticket cannot stay on a strict slot forever.
    """
    return (index + receive_count - 1) % share_period if share_period > 0 else share_period


def ticket_order(priorities: Sequence[str], slot: int) -> list[str]:
    """The order in which a ticket looks for waiting work.

    Minimum-share rule: slot s < len(priorities) - 1 starts at the (s+1)-th lowest priority, then
    goes highest first; every other slot goes strictly highest first. With tickets spread over
    `share_period` slots, every priority below the highest is looked at first by at least one
    ticket in every `share_period` consecutive items (or deliveries of one ticket), so no queue
    starves behind a busy HIGH.
    """
    ordered = list(priorities)
    lower = len(ordered) - 1
    if 0 <= slot < lower:
        favoured = ordered[lower - slot]
        return [favoured, *(p for p in ordered if p != favoured)]
    return ordered
