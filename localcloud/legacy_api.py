"""A legacy-API simulator: a real HTTP server on 127.0.0.1 that enforces a concurrency limit and
an optional calls-per-second limit, answers 429 (with Retry-After) beyond them, injects faults,
and records every call."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_SERVICE_TIME_S = 30.0  # bound on any simulated delay: a test server never hangs a run


@dataclass(frozen=True)
class ApiProfile:
    """How the simulated API behaves."""

    concurrency_limit: int = 4
    calls_per_second: float | None = None
    service_time_s: float = 0.2
    """Median service time."""
    service_jitter: float = 0.25
    """Service time is uniform in median x [1 - jitter, 1 + jitter]."""
    error_rate: float = 0.0
    """Share of calls answered 500."""
    timeout_rate: float = 0.0
    """Share of calls that hang for `timeout_s` (longer than the client waits)."""
    throttle_rate: float = 0.0
    """Share of calls answered 429 even within the limits."""
    timeout_s: float = 15.0
    reject_field: str = "reject"
    """An item with this field set true is answered 400: a permanent failure on purpose."""
    retry_after_s: int = 1
    seed: int = 7


@dataclass
class Call:
    start: float
    end: float
    key: str
    """Idempotency-Key header: execution#index."""
    item_id: Any
    priority: Any
    in_flight: int
    """Calls in flight, this one included, when it was admitted (0 when refused)."""
    status: int


@dataclass
class LegacyApi:
    profile: ApiProfile
    url: str = ""
    calls: list[Call] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _in_flight: int = 0
    _window: list[float] = field(default_factory=list)
    _rng: random.Random = field(default_factory=random.Random)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> LegacyApi:
        self._rng.seed(self.profile.seed)
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                try:
                    item = json.loads(self.rfile.read(length) or b"null")
                except ValueError:
                    item = None
                status, body, headers = api.handle(item, self.headers.get("Idempotency-Key", ""))
                payload = json.dumps(body).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/api/items"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _admit(self, now: float) -> int:
        """Admit a call within the limits; return its in-flight count, or 0 when refused."""
        p = self.profile
        with self._lock:
            if self._in_flight >= p.concurrency_limit:
                return 0
            if p.calls_per_second is not None:
                self._window = [t for t in self._window if now - t < 1.0]
                if len(self._window) >= p.calls_per_second:
                    return 0
                self._window.append(now)
            self._in_flight += 1
            return self._in_flight

    def handle(self, item: Any, key: str) -> tuple[int, Any, dict[str, str]]:
        start = time.time()
        item_id = item.get("id") if isinstance(item, dict) else None
        # The class an item was submitted with (the fifo baseline sends no priority).
        priority = item.get("class", item.get("priority")) if isinstance(item, dict) else None
        in_flight = self._admit(start)
        body: dict[str, Any]
        if in_flight == 0:
            self._record(Call(start, time.time(), key, item_id, priority, 0, 429))
            return 429, {"error": "limit"}, {"Retry-After": str(self.profile.retry_after_s)}
        try:
            with self._lock:
                roll = self._rng.random()
                jitter = self._rng.uniform(1 - self.profile.service_jitter, 1 + self.profile.service_jitter)
            p = self.profile
            if isinstance(item, dict) and item.get(p.reject_field) is True:
                time.sleep(min(p.service_time_s, MAX_SERVICE_TIME_S))
                status, body = 400, {"error": f"item {item_id} rejected"}
            elif roll < p.timeout_rate:
                time.sleep(min(p.timeout_s, MAX_SERVICE_TIME_S))
                status, body = 504, {"error": "timeout"}
            else:
                time.sleep(min(p.service_time_s * jitter, MAX_SERVICE_TIME_S))
                if roll < p.timeout_rate + p.error_rate:
                    status, body = 500, {"error": "internal"}
                elif roll < p.timeout_rate + p.error_rate + p.throttle_rate:
                    status, body = 429, {"error": "busy"}
                else:
                    status, body = 200, {"accepted": item_id, "key": key}
        finally:
            with self._lock:
                self._in_flight -= 1
        self._record(Call(start, time.time(), key, item_id, priority, in_flight, status))
        headers = {"Retry-After": str(self.profile.retry_after_s)} if status == 429 else {}
        return status, body, headers

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)
