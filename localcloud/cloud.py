"""The embedded AWS: moto in server mode on 127.0.0.1, Step Functions execution on, and
moto's Docker-only Lambda invoke replaced by the sandbox runner."""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.request
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from unittest import mock

import boto3
from botocore.config import Config
from moto.awslambda.models import LambdaFunction
from moto.core.responses import BaseResponse
from moto.server import ThreadedMotoServer

from localcloud.lambda_runner import LambdaRunner
from localcloud.moto_fixes import atomic_dynamodb_writes, aws_like_heartbeats, order_free_metric_dimensions

if TYPE_CHECKING:
    from collections.abc import Iterator

REGION = "us-east-1"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


@dataclass
class EmbeddedAws:
    endpoint: str
    runner: LambdaRunner
    requests: Counter[str] = field(default_factory=Counter)
    """API requests the embedded AWS served, by `service:Action`."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, key: str) -> None:
        with self._lock:
            self.requests[key] += 1

    def snapshot(self) -> dict[str, int]:
        """A copy of the request counts, safe while moto's threads keep counting."""
        with self._lock:
            return dict(self.requests)

    def client(self, service: str) -> Any:
        # boto3's stubs type clients per literal service name; this factory takes any name.
        factory: Any = boto3.client
        return factory(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            # Many threads share these clients during a run; a small pool would serialize them.
            config=Config(max_pool_connections=64, retries={"mode": "standard", "max_attempts": 5}),
            **{k.lower(): v for k, v in FAKE_CREDENTIALS.items()},
        )


def _post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")  # noqa: S310 - loopback
    urllib.request.urlopen(request, timeout=10).close()  # noqa: S310 - our own server on loopback


@contextmanager
def embedded_aws() -> Iterator[EmbeddedAws]:
    """Start moto on 127.0.0.1 with Step Functions execution and in-process Lambda."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    # moto's interpreter logs each Choice that reads a missing path (IsPresent false) as an
    # exception, and each ToleratedFailurePercentage it ignores; outcomes show in executions.
    logging.getLogger("moto.stepfunctions").setLevel(logging.CRITICAL)
    with ExitStack() as cleanup:
        # Port 0: the OS picks a free port at bind time, so no other process can take it first.
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        cleanup.callback(server.stop)
        _, port = server.get_host_and_port()
        endpoint = f"http://127.0.0.1:{port}"
        saved = {k: os.environ.get(k) for k in ("MOTO_PORT", "AWS_DEFAULT_REGION", *FAKE_CREDENTIALS)}
        cleanup.callback(_restore_environ, saved)
        # moto's Step Functions integrations call back into the server at localhost:$MOTO_PORT.
        os.environ.update({"MOTO_PORT": str(port), "AWS_DEFAULT_REGION": REGION, **FAKE_CREDENTIALS})
        # moto's backends live in this process and outlast a server: start every run from empty.
        _post(f"{endpoint}/moto-api/reset", {})
        _post(f"{endpoint}/moto-api/config", {"stepfunctions": {"execute_state_machine": True}})

        runner = LambdaRunner(
            {
                **FAKE_CREDENTIALS,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                "AWS_ENDPOINT_URL": endpoint,
            }
        )
        cleanup.callback(runner.close)

        def invoke_in_sandbox(self: LambdaFunction, event: Any = None) -> tuple[str, bool, str]:
            payload = json.loads(event) if isinstance(event, str) else (event or {})
            result = runner.invoke(self.function_name, payload, wait_for_slot=True)
            if result.error is not None:
                return json.dumps(result.error), True, ""
            return json.dumps(result.payload), False, ""

        cloud = EmbeddedAws(endpoint, runner)
        original_call_action = BaseResponse.call_action

        def counting_call_action(self: BaseResponse) -> Any:
            # Every request, whoever makes it (state machine, sandboxes, pollers): the
            # benchmark's requests per item come from here, not from estimates.
            cloud.count(f"{self.service_name}:{self._get_action()}")
            return original_call_action(self)

        cleanup.enter_context(aws_like_heartbeats())
        cleanup.enter_context(atomic_dynamodb_writes())
        cleanup.enter_context(order_free_metric_dimensions())
        cleanup.enter_context(mock.patch.object(LambdaFunction, "_invoke_lambda", invoke_in_sandbox))
        cleanup.enter_context(mock.patch.object(BaseResponse, "call_action", counting_call_action))
        yield cloud


def _restore_environ(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
