"""An item's token completion and deletes, sent on a background thread while the slot's next
item is picked and called (the work-conserving ticket loop)."""

from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from sluice_fanout.handlers.worker_config import logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from sluice_fanout.handlers.adapters import BatchCounts, SqsQueues, TaskTokens
    from sluice_fanout.handlers.progress import Ended, Retry


class Completer:
    """Runs each item's finishing requests in order on one thread, off the slot's path.

    An item's steps (SendTaskSuccess or SendTaskFailure, then its deletes) run in the order they
    were asked for and stop at the first that fails: a payload is never deleted when its token
    was not completed, so it comes back after its visibility timeout and the stored outcome is
    sent again, as after a crashed invocation. Items run one after another, in the order they
    finished. `drain` waits for all of them; the invocation must call it before it returns
    (Lambda freezes a sandbox's threads).
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-complete")
        self._steps: list[Callable[[], object]] = []
        self._keys: dict[str, Any] = {}
        # The logger's own keys (level, message...) as they are between items: an item's keys
        # are what its context adds to them.
        self._base = set(logger.get_current_keys())
        self.failed = False
        """An item's completion failed: its payload and ticket come back; the slot should stop."""

    def add(self, step: Callable[[], object]) -> None:
        """One more step of the current item (in the item's log context, which is kept)."""
        if not self._steps:
            self._keys = self.item_keys()
        self._steps.append(step)

    def item_keys(self) -> dict[str, Any]:
        """The keys the current item's log context adds (index, priority, execution)."""
        return {k: v for k, v in logger.get_current_keys().items() if k not in self._base}

    def send(self) -> None:
        """The current item's steps are all known: start them."""
        steps, keys, self._steps = self._steps, self._keys, []
        if steps:
            self._pool.submit(self._run, steps, keys)

    def _run(self, steps: list[Callable[[], object]], keys: dict[str, Any]) -> None:
        try:
            for step in steps:
                step()
        except Exception:  # noqa: BLE001 - the item comes back by its visibility timeout; the slot stops
            self.failed = True
            # `extra`, not the logger's context: that belongs to the item the slot works now.
            logger.exception("item completion failed; it comes back after its visibility timeout", extra=keys)

    def drain(self) -> None:
        """Wait for every item's completion; no thread is left running."""
        self._pool.shutdown(wait=True)


class DeferredTokens:
    """TaskTokens whose completions go to the Completer; the liveness check stays on the path
    (an item must not be called for a task that has ended)."""

    def __init__(self, tokens: TaskTokens, completer: Completer) -> None:
        self._tokens = tokens
        self._completer = completer

    def alive(self, token: str) -> bool:
        return self._tokens.alive(token)

    def succeed(self, token: str, output: str) -> bool:
        tokens = self._tokens.logging_with(self._completer.item_keys())
        self._completer.add(lambda: tokens.succeed(token, output))
        return True

    def fail(self, token: str, error: str, cause: str) -> bool:
        tokens = self._tokens.logging_with(self._completer.item_keys())
        self._completer.add(lambda: tokens.fail(token, error, cause))
        return True


class DeferredDeletes:
    """SqsQueues whose deletes go to the Completer, after the item's completion."""

    def __init__(self, queues: SqsQueues, completer: Completer) -> None:
        self._queues = queues
        self._completer = completer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queues, name)

    def delete(self, queue_url: str, receipt_handle: str) -> None:
        self._completer.add(lambda: self._queues.delete(queue_url, receipt_handle))

    def wrapping(self, wrap: Callable[[SqsQueues], Any]) -> DeferredDeletes:
        """The same deferral around `wrap(queues)`: deletes still wait for the completion."""
        return DeferredDeletes(cast("SqsQueues", wrap(self._queues)), self._completer)


FLUSH_ITEMS = 25
FLUSH_S = 1.0
"""A kept slot counts its items' outcomes in one write per this many items or this long,
whichever comes first, and at its end: the batch's record is written about once a second
per slot, not once per item."""


@dataclass
class _Tally:
    succeeded: int = 0
    failed: int = 0
    indexes: list[int] = field(default_factory=list)


class DeferredProgress:
    """BatchCounts whose writes go to the Completer after the items' completions, outcomes
    gathered per batch (`flush`). A failed write is logged there and ends nothing: progress must
    never keep an item's deletes from running."""

    def __init__(
        self, progress: BatchCounts, completer: Completer, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._progress = progress
        self._completer = completer
        self._clock = clock
        self._tallies: dict[str, _Tally] = {}
        self._held = 0
        self._since = clock()

    def finished(self, execution: str, index: int, *, ok: bool) -> None:
        tally = self._tallies.setdefault(execution, _Tally())
        tally.succeeded += ok
        tally.failed += not ok
        tally.indexes.append(index)
        self._held += 1
        if self._held >= FLUSH_ITEMS or self._clock() - self._since >= FLUSH_S:
            self.flush()

    def retrying(self, execution: str, retry: Retry) -> None:
        self._completer.add(lambda: _quietly(lambda: self._progress.retrying(execution, retry)))

    def ended(self, execution: str, ended: Ended) -> None:
        self._completer.add(lambda: _quietly(lambda: self._progress.ended(execution, ended)))

    def flush(self) -> None:
        """The outcomes gathered so far, one write per batch, after the completions before them."""
        tallies, self._tallies, self._held, self._since = self._tallies, {}, 0, self._clock()
        for execution, tally in tallies.items():
            self._completer.add(functools.partial(_write_tally, self._progress, execution, tally))


def _write_tally(progress: BatchCounts, execution: str, tally: _Tally) -> None:
    _quietly(
        lambda: progress.finished_many(
            execution, succeeded=tally.succeeded, failed=tally.failed, indexes=tally.indexes
        )
    )


def _quietly(write: Callable[[], None]) -> None:
    try:
        write()
    except ClientError:
        logger.warning("batch progress not written", exc_info=True)
