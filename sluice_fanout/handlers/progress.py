"""How far one batch is: what the worker counts per parent execution, and what an operator reads
from it (`sluice batch status`, docs/operations.md). Pure: plain values in and out."""

from __future__ import annotations

from dataclasses import dataclass

RETRY_FIELD_PREFIX = "r"
"""A retrying item's field in its batch's progress record: prefix + index."""
MAX_RETRY_CAUSE_CHARS = 120
"""A retry's cause kept in the record: enough to name the error, small enough for thousands."""
MAX_ENDED_CAUSE_CHARS = 500
"""An ended item's cause, as long as the aggregate lists a failure's."""


@dataclass(frozen=True)
class Retry:
    """An item waiting for its next attempt."""

    index: int
    next_at: float
    """Epoch seconds of the next attempt (the message's visibility ends)."""
    attempt: int
    """The attempt that failed (1 for the first)."""
    cause: str
    last_attempt: int | None = None
    """The attempt after which the item fails for good (None: not recorded)."""

    def encode(self) -> str:
        of = f"/{self.last_attempt}" if self.last_attempt is not None else ""
        return f"{self.next_at:.3f}|{self.attempt}{of}|{self.cause[:MAX_RETRY_CAUSE_CHARS]}"

    @classmethod
    def decode(cls, index: int, text: str) -> Retry:
        next_at, attempts, cause = text.split("|", 2)
        attempt, _, last = attempts.partition("/")
        return cls(index, float(next_at), int(attempt), cause, int(last) if last else None)


@dataclass(frozen=True)
class Ended:
    """An item that ended without an outcome stored under its idempotency record: it failed for
    good without a call's verdict (attempts used up, its key's order broken, a malformed
    message) or was dead-lettered. Kept as its own small record for `sluice explain`."""

    index: int
    at: float
    error: str
    cause: str
    attempt: int
    """Attempts made (0: none)."""
    dead_lettered: bool = False

    def encode(self) -> str:
        fate = "dlq" if self.dead_lettered else "failed"
        return f"{self.at:.3f}|{self.attempt}|{fate}|{self.error}|{self.cause[:MAX_ENDED_CAUSE_CHARS]}"

    @classmethod
    def decode(cls, index: int, text: str) -> Ended:
        at, attempt, fate, error, cause = text.split("|", 4)
        return cls(index, float(at), error, cause, int(attempt), dead_lettered=fate == "dlq")


@dataclass(frozen=True)
class Progress:
    """What the worker counted for one batch so far."""

    succeeded: int = 0
    failed: int = 0
    retries: tuple[Retry, ...] = ()


@dataclass(frozen=True)
class Status:
    """One batch as `sluice batch status` shows it."""

    execution: str
    state: str
    """The parent execution's status: RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED."""
    started_at: float
    now: float
    total: int
    succeeded: int
    failed: int
    retrying: int
    next_retry_at: float | None
    not_started: int
    """Items whose child execution the Map has not started yet."""
    waiting_or_in_flight: int
    """Started, not finished and not retrying: in a queue, or at the API."""
    rate_per_s: float | None
    """Items finished per second since the batch started; None before the first."""
    eta_s: float | None
    """Seconds to finish at that rate (an estimate: items left / throughput)."""

    @property
    def done(self) -> int:
        return self.succeeded + self.failed


def status(
    *,
    execution: str,
    state: str,
    started_at: float,
    now: float,
    total: int,
    not_started: int,
    progress: Progress,
    final: tuple[int, int] | None = None,
) -> Status:
    """The batch's status from the Map run's counts and the worker's; `final`, the aggregate's
    (succeeded, failed) once the execution has ended, wins over the worker's running counts."""
    succeeded, failed = final if final is not None else (progress.succeeded, progress.failed)
    retrying = 0 if final is not None else len(progress.retries)
    # Counts come from different reads a moment apart: never show a negative remainder.
    done = min(total, succeeded + failed)
    not_started = max(0, min(not_started, total - done))
    in_queue = max(0, total - done - retrying - not_started)
    elapsed = now - started_at
    rate = done / elapsed if done and elapsed > 0 else None
    left = total - done
    eta = (left / rate if rate else None) if state == "RUNNING" else 0.0
    return Status(
        execution=execution,
        state=state,
        started_at=started_at,
        now=now,
        total=total,
        succeeded=succeeded,
        failed=failed,
        retrying=retrying,
        next_retry_at=min((r.next_at for r in progress.retries), default=None) if retrying else None,
        not_started=not_started,
        waiting_or_in_flight=in_queue,
        rate_per_s=rate,
        eta_s=eta,
    )
