"""The embedded AWS: moto's backends behind an HTTP endpoint on 127.0.0.1 (localcloud/front.py),
Step Functions execution on, and moto's Docker-only Lambda invoke replaced by the sandbox runner."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from unittest import mock

import boto3
from botocore.config import Config
from moto.awslambda.models import LambdaFunction
from moto.core.responses import BaseResponse
from moto.moto_api._internal.models import moto_api_backend

from localcloud.front import FrontServer, InProcess, lean_request_path
from localcloud.lambda_runner import LambdaRunner
from localcloud.moto_dynamodb import (
    indexed_dynamodb_queries,
    lean_dynamodb_expressions,
    lean_dynamodb_transactions,
)
from localcloud.moto_fixes import (
    atomic_dynamodb_writes,
    aws_like_heartbeats,
    iso_execution_start_time,
    order_free_metric_dimensions,
    outcome_before_status,
    serialized_cloudwatch,
    untracked_model_instances,
)
from localcloud.moto_results import aws_results_and_limits
from localcloud.moto_sfn import fast_step_functions
from localcloud.moto_sqs import DirectSqs, safe_sqs_queues

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
    route: InProcess
    """Answers this process's clients without a socket (the sandboxes use `endpoint`)."""
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
        client = self.route.attach(
            factory(
                service,
                endpoint_url=self.endpoint,
                region_name=REGION,
                # Many threads share these clients during a run; a small pool would serialize them.
                config=Config(max_pool_connections=64, retries={"mode": "standard", "max_attempts": 5}),
                **{k.lower(): v for k, v in FAKE_CREDENTIALS.items()},
            )
        )
        # SQS's hot calls (the mappings' receives and deletes) skip the wire format.
        return DirectSqs(client, REGION, self.count) if service == "sqs" else client


@contextmanager
def embedded_aws() -> Iterator[EmbeddedAws]:
    """Start the embedded AWS on 127.0.0.1: moto's backends behind a lean HTTP front, Step
    Functions execution on, and in-process Lambda."""
    # moto's interpreter logs each Choice that reads a missing path (IsPresent false) as an
    # exception, and each ToleratedFailurePercentage it ignores; outcomes show in executions.
    logging.getLogger("moto.stepfunctions").setLevel(logging.CRITICAL)
    with ExitStack() as cleanup:
        # moto's backends live in this process and outlast a server: start every run from empty.
        moto_api_backend.reset()
        moto_api_backend.set_config({"stepfunctions": {"execute_state_machine": True}})
        route = InProcess(REGION)
        # Last out: a client that outlives the embedded AWS gets an error, never a request.
        cleanup.callback(setattr, route, "open", False)
        server = FrontServer(REGION).start()
        cleanup.callback(server.stop)
        endpoint = server.endpoint
        saved = {k: os.environ.get(k) for k in ("AWS_DEFAULT_REGION", *FAKE_CREDENTIALS)}
        cleanup.callback(_restore_environ, saved)
        os.environ.update({"AWS_DEFAULT_REGION": REGION, **FAKE_CREDENTIALS})

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

        cloud = EmbeddedAws(endpoint, runner, route)
        original_call_action = BaseResponse.call_action

        def counting_call_action(self: BaseResponse) -> Any:
            # Every request, whoever makes it (state machine, sandboxes, pollers): the
            # benchmark's requests per item come from here, not from estimates.
            cloud.count(f"{self.service_name}:{self._get_action()}")
            return original_call_action(self)

        cleanup.enter_context(aws_like_heartbeats())
        cleanup.enter_context(safe_sqs_queues())
        # Before the lock below, so that the lock wraps them too.
        cleanup.enter_context(indexed_dynamodb_queries())
        cleanup.enter_context(lean_dynamodb_transactions())
        cleanup.enter_context(atomic_dynamodb_writes())
        cleanup.enter_context(lean_dynamodb_expressions())
        cleanup.enter_context(order_free_metric_dimensions())
        cleanup.enter_context(serialized_cloudwatch())
        cleanup.enter_context(untracked_model_instances())
        cleanup.enter_context(outcome_before_status())
        cleanup.enter_context(iso_execution_start_time())
        cleanup.enter_context(lean_request_path())
        cleanup.enter_context(fast_step_functions(route, endpoint, cloud.count))
        cleanup.enter_context(aws_results_and_limits())
        cleanup.enter_context(mock.patch.object(LambdaFunction, "_invoke_lambda", invoke_in_sandbox))
        cleanup.enter_context(mock.patch.object(BaseResponse, "call_action", counting_call_action))
        yield cloud


def _restore_environ(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
