"""Where a worker invocation's time goes: its AWS requests by operation, the API calls and its
waits, logged once per invocation (the `slot_time` event) so idle time on a slot can be explained."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sluice_fanout.handlers import contract

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from aws_lambda_powertools import Logger

API_CALL = "api_call"
"""The target's own time (the legacy API)."""
RATE_WAIT = "rate_wait"
"""Sleeping until a calls-per-second slot."""
THROTTLE_HOLD = "throttle_hold"
"""Keeping the slot after a 429 (attempt._hold_slot)."""
_STARTED = "sluice_slot_time_started"


class SlotTime:
    """Seconds by part of an invocation, on the thread that works the items.

    AWS requests are timed through botocore's own events (from the call's parameters being
    checked to its parsed response, retries included), named by operation, so nothing that makes
    a request has to time itself. Requests made on another thread are off the slot's path
    (they run while it calls the API) and are not counted.
    """

    def __init__(self, timer: Callable[[], float] = time.perf_counter) -> None:
        self._timer = timer
        self._seconds: dict[str, float] = defaultdict(float)
        self._thread = threading.get_ident()
        self._started = timer()

    def attach(self, client: Any) -> None:
        """Time every request `client` (a boto3 client) makes."""
        events = client.meta.events
        events.register("provide-client-params.*.*", self._request_started)
        events.register("after-call.*.*", self._request_ended)
        events.register("after-call-error.*.*", self._request_ended)

    def _request_started(self, context: dict[str, Any], **_: Any) -> None:
        context[_STARTED] = self._timer()

    def _request_ended(self, context: dict[str, Any], event_name: str, **_: Any) -> None:
        started = context.pop(_STARTED, None)
        if started is not None and threading.get_ident() == self._thread:
            # "after-call.<service>.<Operation>": the operation names the part.
            self._seconds[event_name.rpartition(".")[2]] += self._timer() - started

    def add(self, name: str, seconds: float) -> None:
        if threading.get_ident() == self._thread:
            self._seconds[name] += seconds

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = self._timer()
        try:
            yield
        finally:
            self.add(name, self._timer() - started)

    def start(self) -> None:
        """A new invocation: forget the last one's times; its thread is the one timed."""
        self._seconds = defaultdict(float)
        self._thread = threading.get_ident()
        self._started = self._timer()

    def log(self, logger: Logger) -> None:
        """One line for the invocation: its length and its parts, in ms."""
        logger.info(
            "slot time",
            extra={
                contract.LOG_EVENT: contract.EVENT_SLOT_TIME,
                "invocation_ms": round((self._timer() - self._started) * 1000, 1),
                "parts_ms": {name: round(s * 1000, 1) for name, s in sorted(self._seconds.items())},
            },
        )
