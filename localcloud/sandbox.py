"""One Lambda sandbox: a process serving a function's handler, imported from its extracted zip,
over a pipe, like a warm Lambda execution environment."""

# Kept free of Sluice imports: the handler's packages must come from the zip, not the repo.

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection


SANDBOX_NICENESS = 5


@dataclass
class SandboxContext:
    """The parts of Lambda's context object handlers use."""

    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str
    deadline: float
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def error_shape(exc: BaseException) -> dict[str, Any]:
    """Lambda's function-error payload, so Step Functions Retry/Catch match on errorType."""
    return {
        "errorType": type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_exception(exc)[-5:],
    }


def serve(conn: Connection, code_dir: str, handler: str, env: dict[str, str], meta: dict[str, Any]) -> None:
    """Child process entry point: load the handler, then answer (request_id, event, timeout_s)."""
    # Lambda runs each sandbox on hardware of its own; here sandboxes share two cores with the
    # emulated AWS itself, and 16 cold starts importing boto3 at once starved it for seconds.
    # Below the emulator's priority, a sandbox takes the CPU the emulator leaves.
    os.nice(SANDBOX_NICENESS)
    os.environ.clear()
    os.environ.update(env)
    # What the function prints goes to its log file, as Lambda sends it to CloudWatch Logs.
    log = open(meta["log_path"], "a", buffering=1)  # noqa: SIM115 - lives as long as the sandbox
    sys.stdout = sys.stderr = log
    sys.path.insert(0, code_dir)
    # Handlers must come from the zip: drop any copy the spawn bootstrap may have imported.
    for name in [m for m in sys.modules if m == "sluice_fanout" or m.startswith("sluice_fanout.")]:
        del sys.modules[name]
    module_name, _, function_name = handler.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except Exception as exc:  # noqa: BLE001 - an init error is reported on every invoke, as Lambda does
        init_error: dict[str, Any] | None = error_shape(exc)
    else:
        init_error = None
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        request_id, event, timeout_s = request
        if init_error is not None:
            conn.send((None, init_error))
            continue
        context = SandboxContext(
            function_name=meta["name"],
            memory_limit_in_mb=meta["memory"],
            invoked_function_arn=meta["arn"],
            aws_request_id=request_id,
            deadline=time.monotonic() + timeout_s,
        )
        try:
            result = function(event, context)
            conn.send((result, None))
        except BaseException as exc:  # noqa: BLE001 - even SystemExit is an invoke error to Lambda
            conn.send((None, error_shape(exc)))
