"""A legacy-API simulator: an HTTP server on 127.0.0.1 with a concurrency limit, an optional
calls-per-second limit (429 with Retry-After beyond them), injected faults, and a record of every call."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, astuple, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_SERVICE_TIME_S = 30.0  # bound on any simulated delay: a test server never hangs a run
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANSWER_TIMEOUT_S = 30.0  # how long the handle waits for the server process to answer a question


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
    replayed: bool = False
    """Answered from the stored result of an earlier call with the same key: no new effect."""


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 dropped connections in bursts, each retried by the
    # kernel a second later: a stall the simulated API would not have.
    request_queue_size = 1024


@dataclass
class _Simulator:
    """The API itself, run by the server process."""

    profile: ApiProfile
    on_call: Callable[[Call], None]
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _in_flight: int = 0
    _window: list[float] = field(default_factory=list)
    _rng: random.Random = field(default_factory=random.Random)
    _attempts: Counter[str] = field(default_factory=Counter)
    _done: dict[str, Any] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _limit: int = field(default=-1, init=False)

    def __post_init__(self) -> None:
        # The profile stays frozen (scenarios share it); the live limit is the simulator's own.
        self._limit = self.profile.concurrency_limit

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def set_concurrency_limit(self, limit: int) -> None:
        with self._lock:
            self._limit = limit

    def start(self) -> _Simulator:
        self._rng.seed(self.profile.seed)
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle's algorithm the body waited for
            # the client's delayed ACK (40 ms), after the call's recorded end, on every call.
            disable_nagle_algorithm = True

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

        self._server = _Server(("127.0.0.1", 0), Handler)
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
            if self._in_flight >= self._limit:
                return 0
            if p.calls_per_second is not None:
                self._window = [t for t in self._window if now - t < 1.0]
                if len(self._window) >= p.calls_per_second:
                    return 0
                self._window.append(now)
            self._in_flight += 1
            return self._in_flight

    def handle(self, item: Any, key: str) -> tuple[int, Any, dict[str, str]]:
        """Answer one call: the profile's random faults, plus those the item asks for itself.

        An item's own faults are counted per Idempotency-Key, so they are deterministic whatever
        the order of calls:
        - `fail_first: n`: its first n calls answer 500 (nothing done);
        - `hang_first: n`: its first n calls hang for `timeout_s`, then answer 504 (nothing done);
        - `throttle_first: n`: its first n calls answer 429 with Retry-After `retry_after`
          (default the profile's);
        - `result_bytes: n`: the success body carries n bytes of padding;
        - `reject: true` (the profile's `reject_field`): answered 400.
        Like an API that honours Idempotency-Key, a key that already succeeded gets its stored
        answer back without the work being done again; such calls are recorded as `replayed`.
        """
        start = time.time()
        item_id = item.get("id") if isinstance(item, dict) else None
        # The class an item was submitted with (the fifo baseline sends no priority).
        priority = item.get("class", item.get("priority")) if isinstance(item, dict) else None
        in_flight = self._admit(start)
        body: dict[str, Any]
        if in_flight == 0:
            self._record(Call(start, time.time(), key, item_id, priority, 0, 429))
            return 429, {"error": "limit"}, {"Retry-After": str(self.profile.retry_after_s)}
        replayed = False
        try:
            with self._lock:
                roll = self._rng.random()
                jitter = self._rng.uniform(1 - self.profile.service_jitter, 1 + self.profile.service_jitter)
                self._attempts[key] += 1
                attempt = self._attempts[key]
                stored = self._done.get(key) if key else None
            p = self.profile
            asked = item if isinstance(item, dict) else {}

            def first(field_name: str) -> bool:
                count = asked.get(field_name, 0)
                return isinstance(count, int) and attempt <= count

            retry_after = str(asked.get("retry_after", p.retry_after_s))
            headers: dict[str, str] = {}
            if stored is not None:
                status, body, replayed = 200, stored, True
            elif asked.get(p.reject_field) is True:
                time.sleep(min(p.service_time_s, MAX_SERVICE_TIME_S))
                status, body = 400, {"error": f"item {item_id} rejected"}
            elif first("hang_first") or roll < p.timeout_rate:
                time.sleep(min(p.timeout_s, MAX_SERVICE_TIME_S))
                status, body = 504, {"error": "timeout"}
            elif first("throttle_first"):
                status, body, headers = 429, {"error": "slow down"}, {"Retry-After": retry_after}
            else:
                time.sleep(min(p.service_time_s * jitter, MAX_SERVICE_TIME_S))
                if first("fail_first") or roll < p.timeout_rate + p.error_rate:
                    status, body = 500, {"error": "internal"}
                elif roll < p.timeout_rate + p.error_rate + p.throttle_rate:
                    status, body = 429, {"error": "busy"}
                    headers = {"Retry-After": str(p.retry_after_s)}
                else:
                    status, body = 200, {"accepted": item_id, "key": key}
                    padding = asked.get("result_bytes", 0)
                    if isinstance(padding, int) and padding > 0:
                        body["padding"] = "x" * padding
                    if key:
                        with self._lock:
                            self._done[key] = body
        finally:
            with self._lock:
                self._in_flight -= 1
        self._record(Call(start, time.time(), key, item_id, priority, in_flight, status, replayed))
        return status, body, headers

    def _record(self, call: Call) -> None:
        self.on_call(call)


class LegacyApi:
    """The simulator, started in a process of its own; its calls are kept here as they end.

    The server runs as `python -m localcloud.legacy_api`, as a legacy API runs on machines of its
    own: in the embedded AWS's process its answers waited for that process's busy interpreter (a
    5 ms call took about 150 ms at 2,000 items) and its work took CPU from the emulator. This handle
    streams the calls back, and forwards limit changes and questions over the child's stdin and
    stdout, one JSON line each.
    """

    def __init__(self, profile: ApiProfile) -> None:
        self.profile = profile
        self.url = ""
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._limit = profile.concurrency_limit
        self.capacity: list[tuple[float, int]] = [(time.time(), self._limit)]
        """(time.time(), concurrency limit) at start and at each change: the clock of `Call.start`,
        so a report can draw capacity under the calls."""
        self._process: subprocess.Popen[str] | None = None
        self._answered = threading.Condition(self._lock)
        self._writing = threading.Lock()
        self._answers: dict[int, Any] = {}
        self._asked = 0
        self._reader: threading.Thread | None = None

    def start(self) -> LegacyApi:
        self._process = subprocess.Popen(  # noqa: S603 - this interpreter, this module
            [sys.executable, "-m", "localcloud.legacy_api", json.dumps(asdict(self.profile))],
            # Wherever this process found localcloud, the server process finds it too.
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([_PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")]),
            },
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        stdout = self._process.stdout
        assert stdout is not None  # noqa: S101 - asked for above
        first = stdout.readline()
        if not first:
            self._process.wait(timeout=5)
            raise RuntimeError(f"the legacy API process exited at start (exit {self._process.returncode})")
        self.url = json.loads(first)["url"]
        self._reader = threading.Thread(target=self._read, args=(stdout,), name="legacy-api", daemon=True)
        self._reader.start()
        return self

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return self._process.pid if self._process is not None else None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()  # the server process ends when its stdin does
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            message = json.loads(line)
            with self._lock:
                if "call" in message:
                    self.calls.append(Call(*message["call"]))
                else:
                    self._answers[message["answer"]] = message.get("value")
                    self._answered.notify_all()

    def _ask(self, question: str, value: Any = None) -> Any:
        """Ask the server process; its answer comes after every call it recorded before."""
        process = self._process
        if process is None or process.stdin is None:
            raise RuntimeError("the legacy API is not running: call start() first")
        with self._lock:
            self._asked += 1
            number = self._asked
        with self._writing:
            process.stdin.write(json.dumps({"ask": question, "id": number, "value": value}) + "\n")
            process.stdin.flush()
        with self._lock:
            if not self._answered.wait_for(lambda: number in self._answers, ANSWER_TIMEOUT_S):
                raise RuntimeError(
                    f"the legacy API process did not answer '{question}' in {ANSWER_TIMEOUT_S} s"
                )
            return self._answers.pop(number)

    @property
    def concurrency_limit(self) -> int:
        with self._lock:
            return self._limit

    @property
    def in_flight(self) -> int:
        """Calls the API is working on now (none once stopped)."""
        return int(self._ask("in_flight")) if self._process is not None else 0

    def set_concurrency_limit(self, limit: int) -> None:
        """Change how many calls may be in flight at once (the API's capacity, starting at the
        profile's), like a backend losing or gaining servers: calls already admitted finish
        normally, new calls see the new limit. Each change is kept in `capacity`."""
        if limit < 0:
            raise ValueError(f"LegacyApi: concurrency limit must be >= 0, got {limit}")
        self._ask("limit", limit)
        with self._lock:
            self._limit = limit
            self.capacity.append((time.time(), limit))

    def capacity_snapshot(self) -> list[tuple[float, int]]:
        with self._lock:
            return list(self.capacity)

    def snapshot(self) -> list[Call]:
        """Every call the API has answered so far (those in flight are not calls yet)."""
        if self._process is not None:
            self._ask("flush")
        # Once stopped, every call the server recorded has been read (stop waits for its end).
        with self._lock:
            return list(self.calls)


def _serve(profile: ApiProfile) -> None:
    """The server process: calls and answers go to stdout; questions come on stdin."""
    out = threading.Lock()

    def emit(message: dict[str, Any]) -> None:
        line = json.dumps(message) + "\n"
        with out:
            sys.stdout.write(line)
            sys.stdout.flush()

    simulator = _Simulator(profile, lambda call: emit({"call": astuple(call)})).start()
    emit({"url": simulator.url})
    for line in sys.stdin:
        question = json.loads(line)
        if question["ask"] == "limit":
            simulator.set_concurrency_limit(int(question["value"]))
        value = simulator.in_flight if question["ask"] == "in_flight" else None
        emit({"answer": question["id"], "value": value})
    simulator.stop()


if __name__ == "__main__":
    _serve(ApiProfile(**json.loads(sys.argv[1])))
