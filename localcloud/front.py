"""The embedded AWS's HTTP endpoint: a lean server on 127.0.0.1 in front of moto's backends."""

from __future__ import annotations

import functools
import re
import threading
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from unittest import mock

from botocore.awsrequest import AWSPreparedRequest, AWSResponse, HTTPHeaders
from moto.core import responses as moto_responses
from moto.core import utils as moto_utils
from moto.core.base_backend import BackendDict
from moto.core.botocore_stubber import MockRawResponse
from moto.core.models import botocore_stubber

if TYPE_CHECKING:
    from collections.abc import Iterator

# Credential=AKID/20240101/us-east-1/sqs/aws4_request
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")
_GLOBAL_SERVICES = frozenset({"iam", "sts", "route53", "cloudfront", "organizations"})
MAX_BODY_BYTES = 64 * 1024 * 1024  # far above any AWS request payload; a bound, not a quota


class UnroutableRequestError(ValueError):
    """A request this endpoint cannot map to a service (unsigned, or a service moto lacks)."""


def aws_url(authorization: str, path: str, default_region: str) -> str:
    """The AWS URL a signed request to this endpoint stands for."""
    match = _SCOPE.search(authorization)
    if match is None:
        raise UnroutableRequestError(
            "the embedded AWS routes requests by their SigV4 credential scope; this one is "
            "unsigned (use a boto3/botocore client with any credentials)"
        )
    region, service = match.groups()
    if service in _GLOBAL_SERVICES:
        return f"https://{service}.amazonaws.com{path}"
    return f"https://{service}.{region or default_region}.amazonaws.com{path}"


def dispatch(request: AWSPreparedRequest, region: str) -> tuple[int, Any, Any]:
    """Hand one request to the backend moto would answer it with: (status, headers, body).

    moto's in-process request router (the one `mock_aws` uses) finds the backend from the host
    name: the service and region come from the request's SigV4 credential scope, as AWS's
    endpoints know them from the host. Backends, wire formats and errors are moto's.
    """
    path = request.url.split("://", 1)[-1]
    path = path[path.index("/") :] if "/" in path else "/"
    try:
        url = aws_url(str(request.headers.get("Authorization", "")), path, region)
    except UnroutableRequestError as exc:
        return 400, {}, str(exc)
    routed = AWSPreparedRequest(
        method=request.method, url=url, headers=request.headers, body=request.body, stream_output=False
    )
    response = botocore_stubber.process_request(routed)
    if response is None:
        return 404, {}, f"no emulated service answers {url}"
    return response


class InProcess:
    """A botocore hook that answers a client's requests from moto's backends in this process,
    skipping the socket but not the wire format; once closed it refuses, so a client that
    outlives the embedded AWS can never reach anything else."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.open = True

    def __call__(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        if not self.open:
            raise EmbeddedAwsClosedError(f"the embedded AWS is closed; {request.url} was not sent")
        body = request.body
        if body is not None and not isinstance(body, str | bytes | bytearray):
            body = body.read()  # a file-like body (S3 uploads)
        status, headers, answer = dispatch(
            AWSPreparedRequest(request.method, request.url, request.headers, body, False), self.region
        )
        return AWSResponse(request.url, status, headers, MockRawResponse(answer))

    def attach(self, client: Any) -> Any:
        client.meta.events.register("before-send", self)
        return client


class EmbeddedAwsClosedError(RuntimeError):
    """A client of the embedded AWS was used after it stopped."""


def _known_account_first(original: Any) -> Any:
    def create(self: BackendDict[Any], account_id: str) -> None:
        # moto took a global lock and scanned every backend ever used (a list of ~150, compared
        # in Python) on each request: 14% of the emulator's time. An account already present
        # was registered on the way in (reset clears both together), so there is nothing to do.
        if dict.__contains__(self, account_id):
            return
        original(self, account_id)

    return create


@contextmanager
def lean_request_path() -> Iterator[None]:
    """moto's per-request bookkeeping without its scans: backend lookup, action lookup."""
    with ExitStack() as patches:
        patches.enter_context(
            mock.patch.object(
                BackendDict,
                "_create_account_specific_backend",
                _known_account_first(BackendDict._create_account_specific_backend),
            )
        )
        # moto listed a response class's methods with inspect.getmembers on every request;
        # classes do not change while the emulator runs.
        patches.enter_context(
            mock.patch.object(
                moto_responses,
                "method_names_from_class",
                functools.cache(moto_utils.method_names_from_class),
            )
        )
        yield


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: each sandbox reuses its connections
    # The answer goes out as headers, then body: with Nagle's algorithm on, the body waited for
    # the client's delayed ACK of the headers, 40 ms on Linux, on every request a sandbox made.
    disable_nagle_algorithm = True
    server: FrontServer

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._reply(413, {}, f"request body over {MAX_BODY_BYTES} bytes")
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        headers = HTTPHeaders()
        for key, value in self.headers.items():
            headers[key] = value
        request = AWSPreparedRequest(
            method=self.command, url=self.path, headers=headers, body=body, stream_output=False
        )
        self._reply(*dispatch(request, self.server.region))

    def _reply(self, status: int, headers: Any, body: Any) -> None:
        payload = body.encode() if isinstance(body, str) else bytes(body or b"")
        headers = dict(headers or {})
        length = str(len(payload))
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() == "content-length":
                # A HEAD answer has no body but tells the length of the one GET would send.
                length = str(value) if self.command == "HEAD" else length
            elif key.lower() not in ("transfer-encoding", "connection"):
                self.send_header(key, str(value))
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve  # noqa: N815 - http.server's names

    def log_message(self, *args: Any) -> None:
        pass


LISTEN_BACKLOG = 1024


class FrontServer(ThreadingHTTPServer):
    """Reads each request once and hands it to `dispatch`: only the front door is new.

    moto's own server (werkzeug, Flask and a dispatcher that lists moto's modules on disk for
    each request) spent about 60% of the emulator's time on the way to the backends at 1,000
    items, and the Lambda sandboxes' requests (heartbeat, idempotency, SendTaskSuccess, SQS)
    queued behind it. What this cannot prove: AWS's endpoints, TLS, signature checks (moto
    checks none either way).
    """

    daemon_threads = True
    # socketserver's default backlog is 5: a burst of new connections (sandboxes starting, an
    # operator command's parallel reads) overflowed it, and each dropped SYN came back a second
    # later (the kernel's retry), a stall no AWS endpoint has.
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, region: str) -> None:
        self.region = region
        # Port 0: the OS picks a free port at bind time, so no other process can take it first.
        super().__init__(("127.0.0.1", 0), _Handler)
        self._thread = threading.Thread(target=self.serve_forever, name="embedded-aws", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> FrontServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
