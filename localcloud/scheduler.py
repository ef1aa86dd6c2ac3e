"""EventBridge schedules for the embedded AWS: each deployed `rate(...)` rule invokes its function."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localcloud.lambda_runner import LambdaRunner

RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
UNIT_S = {"minute": 60, "hour": 3_600, "day": 86_400}
THROTTLE_RETRY_S = 1.0


class ScheduleError(ValueError):
    """A schedule expression the embedded AWS does not run."""


def period_seconds(expression: str) -> int:
    """Seconds between runs of a `rate(...)` expression (cron is not needed by Sluice)."""
    match = RATE.fullmatch(expression)
    if match is None:
        raise ScheduleError(f"only rate(N minute(s)|hour(s)|day(s)) runs locally, got {expression!r}")
    return int(match.group(1)) * UNIT_S[match.group(2).rstrip("s")]


@dataclass
class Fired:
    function: str
    at: float
    outcome: str
    """`ok`, `error: <type>` or `throttled` (gave up after one period of retries)."""
    payload: Any = None


class Schedules:
    """Runs every schedule until stopped; `fired` records each invocation's outcome.

    Like EventBridge, the first run comes one period after the rule exists; the harness can ask
    for it at once (`fire_now`) so a short run does not wait a minute for the first control step.
    An invocation throttled by the function's reserved concurrency is retried every second for up
    to one period, as Lambda's asynchronous queue would retry it (for much longer, there).
    """

    def __init__(
        self,
        schedules: list[tuple[str, str]],
        runner: LambdaRunner,
        *,
        fire_now: bool = False,
        period_override_s: float | None = None,
    ) -> None:
        """`schedules`: (function name, expression). `period_override_s` runs them faster than
        their expression (tests); None keeps the deployed period."""
        self._specs = [(name, period_override_s or period_seconds(expr)) for name, expr in schedules]
        self._runner = runner
        self._fire_now = fire_now
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.fired: list[Fired] = []
        self._lock = threading.Lock()

    def start(self) -> Schedules:
        for name, period in self._specs:
            thread = threading.Thread(
                target=self._tick, args=(name, period), name=f"schedule-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop firing; an invocation already running finishes in its sandbox (not waited for
        beyond `timeout_s`)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout_s)

    def _tick(self, name: str, period: float) -> None:
        next_at = time.monotonic() + (0 if self._fire_now else period)
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            threading.Thread(target=self._invoke, args=(name, period), daemon=True).start()
            next_at += period

    def _invoke(self, name: str, period: float) -> None:
        event = {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
        give_up = time.monotonic() + period
        while True:
            result = self._runner.invoke(name, event, wait_for_slot=False)
            if not result.throttled:
                outcome = "ok" if result.error is None else f"error: {result.error.get('errorType')}"
                break
            if time.monotonic() + THROTTLE_RETRY_S > give_up or self._stop.wait(THROTTLE_RETRY_S):
                outcome = "throttled"
                break
        with self._lock:
            self.fired.append(Fired(name, time.time(), outcome, result.payload))
