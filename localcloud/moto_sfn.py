"""Where moto's Step Functions interpreter (5.2.5) costs more than AWS's per item, and the fix."""

from __future__ import annotations

import functools
import importlib
import itertools
import sys
import threading
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any
from unittest import mock

import boto3
from botocore.config import Config
from moto.stepfunctions.parser.asl.component.common.path import result_path
from moto.stepfunctions.parser.asl.component.eval_component import EvalComponent
from moto.stepfunctions.parser.asl.component.program import program
from moto.stepfunctions.parser.asl.component.state.exec import execute_state
from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import (
    distributed_iteration_component,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import job as map_jobs
from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.itemprocessor import (
    distributed_item_processor_worker,
    inline_item_processor_worker,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
    resource as task_resource,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
    state_task_service_callback as callback_task,
)
from moto.stepfunctions.parser.asl.eval.callback import callback
from moto.stepfunctions.parser.asl.eval.event import event_manager
from moto.stepfunctions.parser.asl.utils import boto_client, json_path

from localcloud.moto_sqs import DirectSqs
from localcloud.moto_version import UnsupportedMotoError, require_moto

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from localcloud.front import InProcess

MotoVersionError = UnsupportedMotoError


def require_moto_version() -> None:
    require_moto("moto_sfn", "compare each patch with the new moto's stepfunctions/parser")


# ---- service integrations: one client per service, in-process ------------------------------


_PARSER = "moto.stepfunctions.parser.asl.component.state.exec."
_CLIENT_USERS = (
    *(
        f"{_PARSER}state_task.service.state_task_service_{name}"
        for name in (
            "sqs",
            "sfn",
            "dynamodb",
            "sns",
            "events",
            "ecs",
            "glue",
            "batch",
            "aws_sdk",
            "unsupported",
        )
    ),
    f"{_PARSER}state_task.lambda_eval_utils",
    f"{_PARSER}state_map.item_reader.eval.resource_eval_s3",
    f"{_PARSER}state_map.result_writer.resource_eval.resource_eval_s3",
)
"""moto 5.2.5's modules that build a client with `boto_client_for`: imported here, so a patch
never depends on which of them happened to be loaded first."""


def _modules_importing(name: str, value: Any) -> list[Any]:
    """Every loaded moto module that imported `value` under `name`."""
    return [
        module
        for module_name, module in list(sys.modules.items())
        if module_name.startswith("moto.") and getattr(module, name, None) is value
    ]


@contextmanager
def in_process_integrations(
    route: InProcess, endpoint: str, count: Callable[[str], None] = lambda _key: None
) -> Iterator[None]:
    """The interpreter's service integrations reach moto's backends in-process (`route`), one
    client per service, instead of over HTTP back into this same process with a new boto3 client
    per call (about 5 ms each). botocore still serializes and parses every request, as it does on
    the wire, except SQS's SendMessage, which skips the wire format (`DirectSqs`: it calls the SQS
    backend as moto's own SendMessage handler does). `count` hears each request that does not pass
    moto's `call_action`."""
    clients: dict[tuple[str, str], Any] = {}
    lock = threading.Lock()
    # boto3's stubs type clients per literal service name; moto asks for any service.
    factory: Any = boto3.client

    def client_for(region: str, service: str, state_credentials: Any = None) -> Any:  # noqa: ARG001 - moto's signature; the embedded AWS has one account
        with lock:
            if (region, service) not in clients:
                clients[region, service] = route.attach(
                    factory(
                        service_name=service,
                        region_name=region,
                        endpoint_url=endpoint,
                        aws_access_key_id="ak",
                        aws_secret_access_key="sk",  # noqa: S106 - moto's own placeholder credentials
                        config=Config(
                            parameter_validation=False,
                            retries={"max_attempts": 0, "total_max_attempts": 1},
                            max_pool_connections=64,
                        ),
                    )
                )
                if service == "sqs":
                    clients[region, service] = DirectSqs(clients[region, service], region, count)
            return clients[region, service]

    for name in _CLIENT_USERS:
        importlib.import_module(name)
    with ExitStack() as patches:
        for module in _modules_importing("boto_client_for", boto_client.boto_client_for):
            patches.enter_context(mock.patch.object(module, "boto_client_for", client_for))
        yield


# ---- JSONPath: parse each path once ---------------------------------------------------------


def _cached_parse(parse: Any) -> Any:
    # jsonpath-ng builds its parser (ply's LR tables) for every parse: moto parsed every path
    # of every state of every item afresh, 40% of the emulator's time at 1,000 items. A parsed
    # path is immutable and `find` keeps no state, so one parse serves every thread.
    return functools.lru_cache(maxsize=4096)(parse)


# ---- Map: no copy of the whole input per item ------------------------------------------------


def _eval_input(self: Any, env_frame: Any) -> None:
    if not self._parameters and not self._item_selector:
        return
    # moto deep-copied the whole map input (all N items) here, once per item: O(N) per item,
    # O(N^2) per batch. The selector only reads it (every path extraction copies what it
    # returns), so the frame may share it.
    map_state_input = self._env.stack[-1]
    env_frame.states._states_data["input"] = map_state_input
    env_frame.stack.append(map_state_input)
    if self._item_selector:
        self._item_selector.eval(env_frame)
    else:
        self._parameters.eval(env_frame)
    env_frame.states.reset(input_value=env_frame.stack[-1])


# ---- Task states: a watchdog thread only where a timeout needs one ---------------------------

_inline = threading.local()


class _MaybeInlineThread(threading.Thread):
    """moto's watchdog thread for a state's timeout; runs its target on the caller's thread
    when the state has no timeout to watch (moto gave every Task state a thread of its own)."""

    def start(self) -> None:
        if getattr(_inline, "active", False):
            self.run()
        else:
            super().start()


def _needs_watchdog(state: Any) -> bool:
    # A callback task's wait for its token honours TimeoutSeconds itself.
    if (
        isinstance(state, callback_task.StateTaskServiceCallback)
        and state.resource.condition == task_resource.ResourceCondition.WaitForTaskToken
    ):
        return False
    timeout = getattr(state, "timeout", None)
    return timeout is not None and not timeout.is_default_value()


def _evaluating(original: Any) -> Any:
    def evaluate_with_timeout(self: Any, env: Any) -> None:
        previous = getattr(_inline, "active", False)
        _inline.active = not _needs_watchdog(self)
        try:
            original(self, env)
        finally:
            _inline.active = previous

    return evaluate_with_timeout


def _program_eval(original: Any) -> Any:
    def evaluate(self: Any, env: Any) -> None:
        # moto ran every program (each Map child included) on a thread of its own and joined
        # it, only to enforce the program's TimeoutSeconds; without one, the caller's thread
        # serves. One thread per waiting child instead of two.
        if self.timeout_seconds is not None:
            original(self, env)
            return
        env.next_state_name = self.start_at.start_at_name
        EvalComponent.eval(self, env)

    return evaluate


def _eval_pool(self: Any, job: Any, worker_frame: Any) -> None:
    # moto's worker took its next item by calling itself, so its stack grew by a few frames
    # per item (a RecursionError at MaxConcurrency 1 and about 300 items); the same steps in a loop.
    while job is not None:
        job_frame = worker_frame.open_inner_frame()
        self._eval_job(env=job_frame, job=job)
        worker_frame.delete_frame(job_frame)
        if isinstance(job.job_output, Exception) or self.stopped():
            self._env.delete_frame(worker_frame)
            self._job_pool.close_job(job)
            return
        next_job = self._job_pool.next_job()
        if next_job is None:
            # moto closes the frame before the job: the Map waits for jobs, not for workers.
            self._env.delete_frame(worker_frame)
            self._job_pool.close_job(job)
            return
        self._job_pool.close_job(job)
        job = next_job
    self._env.delete_frame(worker_frame)


class _Answered:
    """What is left of a finished callback task's endpoint in moto's pool, which keeps every
    endpoint of an execution until it ends: a Map of 100,000 throttled items kept 50,000, each
    with its locks, events and the whole output the worker sent. AWS forgets a token's task
    once it ends; the pool still answers about it as moto did (`get_outcome()` is set once an
    outcome came; a late SendTaskSuccess is accepted and changes nothing)."""

    __slots__ = ("_answered", "callback_id", "consumer_error")
    ANSWER = object()
    """Stands for the outcome, which only the finished task ever read."""

    def __init__(self, endpoint: Any) -> None:
        self.callback_id = endpoint.callback_id
        self.consumer_error = endpoint.consumer_error
        self._answered = endpoint.get_outcome() is not None

    def get_outcome(self) -> Any:
        return self.ANSWER if self._answered else None

    def wait(self, timeout: float | None = None) -> Any:  # noqa: ARG002 - moto's signature
        return self.get_outcome()

    def notify(self, outcome: Any) -> None:  # noqa: ARG002 - moto's signature
        self._answered = True

    def notify_heartbeat(self) -> bool:
        return False

    def interrupt_all(self) -> None:
        pass

    def report(self, consumer_error: Any) -> None:
        self.consumer_error = consumer_error


def _retiring(original: Any) -> Any:
    def eval_integration_pattern(self: Any, env: Any, *args: Any, **kwargs: Any) -> None:
        token = None
        if task_resource.ResourceCondition.WaitForTaskToken in self._supported_integration_patterns:
            token = env.states.context_object.context_object_data["Task"]["Token"]
        try:
            original(self, env, *args, **kwargs)
        finally:
            pool = env.callback_pool_manager._pool
            endpoint = pool.get(token) if token is not None else None
            if type(endpoint) is callback.CallbackEndpoint:  # not an activity's, not one retired
                pool[token] = _Answered(endpoint)

    return eval_integration_pattern


def _closed_jobs(self: Any) -> list[Any]:
    # moto deep-copies every child's output before handing the list to the Map: at the end of
    # 100,000 items a second copy of all of them at once, and seconds of CPU. The Map asks only
    # once every job is closed, and nothing reads the pool after, so the outputs go as they are.
    with self._mutex:
        closed = list(self._closed_jobs)
    return sorted(closed, key=lambda closed_job: closed_job.job_index)


class _MapRunHistory(event_manager.EventManager):
    """The event history moto keeps for a Distributed Map run's children: every child's every
    event, timestamped and stored under one lock, O(N) memory, and never read (moto swaps it
    out when the Map ends; AWS keeps a history per child execution, which moto has not).
    Event ids still advance, so each event's `previousEventId` links as before."""

    def __init__(self, cloud_watch_logging_session: Any = None) -> None:
        super().__init__(cloud_watch_logging_session)
        self._ids = itertools.count(1)

    def add_event(
        self,
        context: Any,
        event_type: Any,  # noqa: ARG002 - moto's signature
        event_details: Any = None,  # noqa: ARG002 - moto's signature
        timestamp: Any = None,  # noqa: ARG002 - moto's signature
        update_source_event_id: bool = True,
    ) -> int:
        event_id = next(self._ids)  # atomic in CPython: no lock for the whole batch to share
        context.last_published_event_id = event_id
        if update_source_event_id:
            context.source_event_id = event_id
        return event_id


class _Discard(list[Any]):
    """moto appends every thread it starts to a module-level list that nothing reads; a
    batch of N items would keep O(N) dead threads."""

    def append(self, _thread: Any) -> None:
        pass


@contextmanager
def lean_interpreter() -> Iterator[None]:
    """Paths parsed once, no per-item copy of the map input, no thread per Task without a
    timeout, no list of every thread, no copy of every output at a Map's end, no endpoint kept
    for a callback task that has ended."""
    with ExitStack() as patches:
        for module in (json_path, result_path):
            patches.enter_context(mock.patch.object(module, "parse", _cached_parse(module.parse)))
        patches.enter_context(
            mock.patch.object(
                inline_item_processor_worker.InlineItemProcessorWorker, "_eval_input", _eval_input
            )
        )
        patches.enter_context(mock.patch.object(execute_state, "Thread", _MaybeInlineThread))
        patches.enter_context(
            mock.patch.object(
                execute_state.ExecutionState,
                "_evaluate_with_timeout",
                _evaluating(execute_state.ExecutionState._evaluate_with_timeout),
            )
        )
        patches.enter_context(mock.patch.object(program.Program, "eval", _program_eval(program.Program.eval)))
        patches.enter_context(
            mock.patch.object(
                distributed_item_processor_worker.DistributedItemProcessorWorker, "_eval_pool", _eval_pool
            )
        )
        patches.enter_context(
            mock.patch.object(distributed_iteration_component, "EventManager", _MapRunHistory)
        )
        patches.enter_context(mock.patch.object(map_jobs.JobPool, "get_closed_jobs", _closed_jobs))
        patches.enter_context(
            mock.patch.object(
                callback_task.StateTaskServiceCallback,
                "_eval_integration_pattern",
                _retiring(callback_task.StateTaskServiceCallback._eval_integration_pattern),
            )
        )
        from moto.stepfunctions.parser import utils  # noqa: PLC0415 - the list's home module

        for module in _modules_importing("TMP_THREADS", utils.TMP_THREADS):
            patches.enter_context(mock.patch.object(module, "TMP_THREADS", _Discard()))
        yield


@contextmanager
def fast_step_functions(route: InProcess, endpoint: str, count: Callable[[str], None]) -> Iterator[None]:
    """Every patch of this module, after checking moto's version.

    Each patch keeps what the state machine does: every child still runs the real definition in
    moto's interpreter, every service integration is still a real request to moto's backends, and
    every task token is still completed by SendTaskSuccess/Failure. What goes is work that grows
    with the batch or the number of waiting children.
    """
    require_moto_version()
    with in_process_integrations(route, endpoint, count), lean_interpreter():
        yield
