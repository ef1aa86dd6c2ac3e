"""Faults the embedded AWS injects when the worker completes a task token."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from unittest import mock

from moto.core.exceptions import AWSError
from moto.stepfunctions.parser.models import StepFunctionsParserBackend

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping


class ThrottlingError(AWSError):
    TYPE = "ThrottlingException"
    STATUS = 400


class ServiceUnavailableError(AWSError):
    TYPE = "ServiceUnavailable"
    STATUS = 503


def _item_id(output: Any) -> Any:
    """The item a SendTaskSuccess is for: the legacy API's answer is the worker's `result`."""
    try:
        return json.loads(output)["result"].get("accepted")
    except (TypeError, ValueError, AttributeError, KeyError):
        return None


class CompletionFaults:
    """A plan of item id -> fault, recognised from the SendTaskSuccess output (the item's result is
    the legacy API's answer, `{"accepted": <item id>, ...}`).

    - `throttle:N`: the first N SendTaskSuccess calls for the item answer ThrottlingException, as
      a busy Step Functions API does; botocore's retry mode must absorb them.
    - `hang`: the first call is held past the worker's timeout, so the sandbox is killed mid-item
      after the API did the work, then it fails. The message comes back after its visibility
      timeout and only the idempotency record stops a second call.
    """

    def __init__(self, plan: Mapping[str, str], hang_s: float) -> None:
        self.plan = dict(plan)
        self.hang_s = hang_s
        self.calls: Counter[str] = Counter()
        """SendTaskSuccess calls seen per planned item, failed ones included."""
        self._lock = threading.Lock()

    def _fault(self, output: Any) -> str | None:
        item_id = _item_id(output)
        if item_id not in self.plan:
            return None
        with self._lock:
            self.calls[item_id] += 1
            n = self.calls[item_id]
        kind = self.plan[item_id]
        if kind == "hang":
            return "hang" if n == 1 else None
        return "throttle" if n <= int(kind.removeprefix("throttle:")) else None

    @contextmanager
    def installed(self) -> Iterator[CompletionFaults]:
        original: Any = StepFunctionsParserBackend.send_task_success
        faults = self

        def send_task_success(backend: StepFunctionsParserBackend, task_token: str, outcome: str) -> Any:
            fault = faults._fault(outcome)
            if fault == "throttle":
                raise ThrottlingError("Rate exceeded")
            if fault == "hang":
                time.sleep(faults.hang_s)
                raise ServiceUnavailableError("the caller was gone before this answered")
            return original(backend, task_token, outcome)

        with mock.patch.object(StepFunctionsParserBackend, "send_task_success", send_task_success):
            yield self
