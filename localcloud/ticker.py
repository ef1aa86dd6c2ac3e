"""A background thread of the embedded AWS that repeats a chore until stopped."""

from __future__ import annotations

import threading
from typing import Self

STOP_JOIN_S = 10.0  # a chore is a few local requests; a join never waits longer than this


class Ticker:
    """Owns one daemon thread running `_run`; `stop()` sets `_stop` and joins it, bounded."""

    def __init__(self, name: str, interval_s: float) -> None:
        self._name = name
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_JOIN_S)
            self._thread = None

    def _run(self) -> None:
        raise NotImplementedError
