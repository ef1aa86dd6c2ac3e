"""Runs deployed Lambda functions in-process-tree: each from its own zip, in warm sandboxes."""

from __future__ import annotations

import compileall
import importlib.util
import io
import json
import multiprocessing
import shutil
import tempfile
import threading
import time
import uuid
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localcloud.sandbox import serve

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection

COLD_START_ALLOWANCE_S = 30.0
# A synchronous invoke waits for a slot at most this long, then counts as throttled. Lambda's
# maximum timeout: any invoke holding a slot ends within it, unless the limit was lowered to 0.
SLOT_WAIT_MAX_S = 900.0
SLOT_WAIT_TICK_S = 0.5  # re-check period of a waiting invoke, so no wake-up can be missed for long
DEAD_SANDBOX_ERRORS = ("Sandbox.Timedout", "Sandbox.Exited")
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")
"""What Lambda's Python runtime provides beside the function's zip (boto3 and what it imports)."""


@dataclass
class FunctionSpec:
    name: str
    arn: str
    handler: str
    env: dict[str, str]
    timeout_s: float
    memory_mb: int
    reserved: int | None
    code_dir: str


@dataclass
class Invocation:
    payload: Any = None
    error: dict[str, Any] | None = None
    throttled: bool = False


@dataclass
class _Sandbox:
    process: Any
    conn: Connection


def admits(in_flight: int, reserved: int | None) -> bool:
    """Whether one more invoke may start: unreserved functions are not limited here."""
    return reserved is None or in_flight < reserved


@dataclass
class _Function:
    spec: FunctionSpec
    reserved: int | None
    """The current limit; `spec.reserved` keeps the deployed one."""
    idle: list[_Sandbox] = field(default_factory=list)
    # A condition, not a Semaphore: a semaphore's count cannot be lowered below the number of
    # permits already out, and a limit that moves at run time needs exactly that.
    lock: threading.Condition = field(default_factory=threading.Condition)
    invocations: int = 0
    throttles: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    busy_s: float = 0.0
    pids: list[int] = field(default_factory=list)
    """Every sandbox started for the function, live or ended: one per cold start."""


# The runners not yet closed, so a benchmark's sampler can find the sandboxes of a run it does
# not hold (run_scenario owns its embedded AWS); weak, so a forgotten runner is not kept alive.
_OPEN: weakref.WeakSet[LambdaRunner] = weakref.WeakSet()
_compiled = threading.Event()
_compiling = threading.Lock()


def precompile_runtime() -> None:
    """Byte-compile the runtime's packages where they are installed, once per process.

    Lambda's runtime image ships boto3 compiled; an install made with `pip --no-compile` (or
    PYTHONDONTWRITEBYTECODE, which stops Python writing what it compiles) does not, and every
    sandbox compiled boto3 and botocore from source: about a CPU-second more per cold start
    than Lambda pays. What is already compiled is only checked (a stat per file). The
    function's own zip is not compiled: Lambda compiles its code at each cold start too.
    """
    with _compiling:
        if not _compiled.is_set():
            byte_compile(RUNTIME_PACKAGES)
            _compiled.set()


def byte_compile(names: tuple[str, ...]) -> None:
    """Write the bytecode of these installed packages or modules next to their sources."""
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        # A read-only install simply stays as it is: sandboxes then compile as before.
        if origin.name == "__init__.py":
            compileall.compile_dir(origin.parent, quiet=2)
        else:
            compileall.compile_file(origin, quiet=2)


def open_runners() -> list[LambdaRunner]:
    """The runners of this process that are not closed."""
    return list(_OPEN)


class LambdaRunner:
    """Registry and executor of deployed functions."""

    def __init__(self, base_env: dict[str, str]) -> None:
        self._base_env = base_env
        self._functions: dict[str, _Function] = {}
        self._workdir = Path(tempfile.mkdtemp(prefix="sluice-lambda-"))
        self._ctx = multiprocessing.get_context("spawn")
        self._processes: list[Any] = []
        """Every sandbox started, busy ones included, so close() leaves none running."""
        _OPEN.add(self)

    def register(
        self,
        *,
        name: str,
        arn: str,
        zip_bytes: bytes,
        handler: str,
        env: dict[str, str],
        timeout_s: float,
        memory_mb: int,
        reserved: int | None,
    ) -> None:
        code_dir = self._workdir / name
        with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
            archive.extractall(code_dir)
        spec = FunctionSpec(name, arn, handler, env, timeout_s, memory_mb, reserved, str(code_dir))
        # pulumi-aws writes "unreserved" as -1; 0 is a real limit (the function is switched off).
        self._functions[name] = _Function(spec, reserved if reserved is not None and reserved >= 0 else None)

    def set_reserved(self, name: str, reserved: int | None) -> None:
        """Change the function's reserved concurrency (None: unreserved), as PutFunctionConcurrency
        does, without stopping any invoke in flight: a lower limit admits nothing new until
        in-flight is below it; a higher one admits waiting synchronous invokes at once.

        What this cannot prove: how quickly the real Lambda service applies a new limit (here: at
        once), and account-level concurrency, which is not modelled.
        """
        if reserved is not None and reserved < 0:
            raise ValueError(
                f"LambdaRunner '{name}': reserved concurrency must be >= 0 or None, got {reserved}"
            )
        fn = self._functions[name]
        with fn.lock:
            fn.reserved = reserved
            fn.lock.notify_all()

    def reserved(self, name: str) -> int | None:
        """The function's current reserved concurrency (None: unreserved)."""
        fn = self._functions[name]
        with fn.lock:
            return fn.reserved

    def in_flight(self, name: str) -> int:
        fn = self._functions[name]
        with fn.lock:
            return fn.in_flight

    def stats(self, name: str) -> dict[str, int]:
        fn = self._functions[name]
        return {
            "invocations": fn.invocations,
            "throttles": fn.throttles,
            "max_in_flight": fn.max_in_flight,
            "busy_ms": round(fn.busy_s * 1000),
            "memory_mb": fn.spec.memory_mb,
            "cold_starts": len(fn.pids),
        }

    def function_names(self) -> list[str]:
        return list(self._functions)

    def sandbox_pids(self, name: str) -> list[int]:
        """Process ids of every sandbox started for the function, in start order (ended ones
        included: their ids may be reused by then, so a reader checks the process's start time)."""
        fn = self._functions[name]
        with fn.lock:
            return list(fn.pids)

    def invoke(self, name: str, event: Any, *, wait_for_slot: bool) -> Invocation:
        """Run one invoke, as Lambda: at most `reserved` sandboxes busy at once per function.

        Beyond that, an event source mapping's invoke (`wait_for_slot=False`) is throttled (the
        caller decides what that means for its messages); a synchronous invoke (Step Functions)
        waits for a slot (at most `SLOT_WAIT_MAX_S`).
        """
        fn = self._functions[name]
        with fn.lock:
            if not self._admit(fn, wait_for_slot=wait_for_slot):
                fn.throttles += 1
                return Invocation(throttled=True)
            # Admission and the in-flight count change under one lock hold: no other invoke can
            # be admitted against a count that is about to rise.
            fn.invocations += 1
            fn.in_flight += 1
            fn.max_in_flight = max(fn.max_in_flight, fn.in_flight)
            sandbox = fn.idle.pop() if fn.idle else None
        try:
            cold = sandbox is None
            if sandbox is None:
                sandbox = self._start(fn.spec)
                with fn.lock:
                    fn.pids.append(sandbox.process.pid)
            started = time.monotonic()
            result = self._call(fn.spec, sandbox, event, cold=cold)
            with fn.lock:
                fn.busy_s += time.monotonic() - started
            if result.error is None or result.error.get("errorType") not in DEAD_SANDBOX_ERRORS:
                with fn.lock:
                    fn.idle.append(sandbox)
            return result
        finally:
            with fn.lock:
                fn.in_flight -= 1
                fn.lock.notify_all()

    @staticmethod
    def _admit(fn: _Function, *, wait_for_slot: bool) -> bool:
        """Called holding `fn.lock`; waits (bounded) for a slot if asked to."""
        deadline = time.monotonic() + SLOT_WAIT_MAX_S
        while not admits(fn.in_flight, fn.reserved):
            remaining = deadline - time.monotonic()
            if not wait_for_slot or remaining <= 0:
                return False
            fn.lock.wait(min(SLOT_WAIT_TICK_S, remaining))
        return True

    def log_path(self, name: str) -> Path:
        return self._workdir / f"{name}.log"

    def log_records(
        self, name: str, keep: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        """The function's JSON log lines (Powertools' structured logs, EMF metric blobs), those
        `keep` accepts if given. Read a line at a time: a worker's log at 100,000 items is about
        50 MB, which read whole was held as text, as lines and as records at once."""
        path = self.log_path(name)
        if not path.exists():
            return []
        records = []
        with path.open(errors="replace") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and (keep is None or keep(record)):
                    records.append(record)
        return records

    def _start(self, spec: FunctionSpec) -> _Sandbox:
        precompile_runtime()
        parent, child = self._ctx.Pipe()
        env = {**self._base_env, **spec.env, "AWS_LAMBDA_FUNCTION_NAME": spec.name}
        meta = {
            "name": spec.name,
            "arn": spec.arn,
            "memory": spec.memory_mb,
            "log_path": str(self.log_path(spec.name)),
        }
        process = self._ctx.Process(
            target=serve, args=(child, spec.code_dir, spec.handler, env, meta), daemon=True
        )
        process.start()
        child.close()
        self._processes.append(process)
        return _Sandbox(process, parent)

    def _call(self, spec: FunctionSpec, sandbox: _Sandbox, event: Any, *, cold: bool) -> Invocation:
        sandbox.conn.send((str(uuid.uuid4()), event, spec.timeout_s))
        # A cold sandbox first spawns and imports (Lambda's init phase): allow for it.
        if not sandbox.conn.poll(spec.timeout_s + (COLD_START_ALLOWANCE_S if cold else 0.5)):
            sandbox.process.kill()
            sandbox.process.join(timeout=5)
            sandbox.conn.close()
            return Invocation(
                error={
                    "errorType": "Sandbox.Timedout",
                    "errorMessage": f"Task timed out after {spec.timeout_s:.2f} seconds",
                }
            )
        try:
            payload, error = sandbox.conn.recv()
        except (EOFError, OSError) as exc:
            # The sandbox died mid-invoke (os._exit, an unpicklable result): Lambda reports a
            # runtime error and starts a fresh environment next time.
            sandbox.process.kill()
            return Invocation(error={"errorType": "Sandbox.Exited", "errorMessage": repr(exc)})
        return Invocation(payload=payload, error=error)

    def close(self) -> None:
        _OPEN.discard(self)
        for fn in self._functions.values():
            for sandbox in fn.idle:
                sandbox.conn.close()
                sandbox.process.kill()
            fn.idle.clear()
        # A sandbox still busy (a scheduled controller mid-loop) would go on calling an embedded
        # AWS that is gone; Lambda would freeze it, here it ends with the run.
        for process in self._processes:
            if process.is_alive():
                process.kill()
        self._processes.clear()
        shutil.rmtree(self._workdir, ignore_errors=True)
