"""A tiny real HTTP server on 127.0.0.1 whose answers a test scripts, one per request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Scripted:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class ScriptedApi:
    answers: list[Scripted] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


@contextmanager
def scripted_api(*answers: Scripted) -> Iterator[ScriptedApi]:
    api = ScriptedApi(answers=list(answers))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            api.requests.append({"headers": dict(self.headers), "body": json.loads(self.rfile.read(length))})
            answer = api.answers.pop(0) if api.answers else Scripted()
            time.sleep(min(answer.delay_s, 5.0))  # bounded: a test server never hangs a test
            self.send_response(answer.status)
            for key, value in answer.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api.url = f"http://127.0.0.1:{server.server_address[1]}/orders"
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
