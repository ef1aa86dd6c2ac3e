"""Where moto differs from AWS in a way Sluice's worker can see, and the fix."""

from __future__ import annotations

import datetime
import threading
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import TYPE_CHECKING, Any
from unittest import mock

from moto.cloudwatch.models import CloudWatchBackend, Dimension
from moto.core.common_models import BaseModel
from moto.core.exceptions import AWSError
from moto.dynamodb.models import DynamoDBBackend
from moto.stepfunctions.exceptions import InvalidToken
from moto.stepfunctions.parser.api import ExecutionStatus, SendTaskHeartbeatOutput
from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackConsumerTimeout
from moto.stepfunctions.parser.asl.eval.program_state import (
    ProgramEnded,
    ProgramError,
    ProgramStopped,
    ProgramTimedOut,
)
from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication
from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker
from moto.stepfunctions.parser.models import StepFunctionsParserBackend

if TYPE_CHECKING:
    from collections.abc import Iterator


# moto's parser declares these with a `code` its responses do not serialize (the client sees an
# empty error code), so they are declared the way moto's serializable errors are.
class TaskTimedOut(AWSError):  # noqa: N818 - AWS's error name, which clients match on
    TYPE = "TaskTimedOut"
    STATUS = 400


class TaskDoesNotExist(AWSError):  # noqa: N818 - AWS's error name, which clients match on
    TYPE = "TaskDoesNotExist"
    STATUS = 400


def _heartbeat(self: StepFunctionsParserBackend, task_token: str) -> SendTaskHeartbeatOutput:
    for execution in self._get_executions():
        worker = getattr(execution, "exec_worker", None)
        endpoint = worker.env.callback_pool_manager.get(task_token) if worker is not None else None
        if endpoint is None:
            continue
        if isinstance(endpoint.consumer_error, CallbackConsumerTimeout):
            raise TaskTimedOut("Task Timed Out")
        if (
            execution.status != ExecutionStatus.RUNNING
            or endpoint.consumer_error is not None
            or endpoint.get_outcome() is not None
        ):
            raise TaskDoesNotExist("Task does not exist anymore")
        endpoint.notify_heartbeat()
        return SendTaskHeartbeatOutput()
    raise InvalidToken


def aws_like_heartbeats() -> AbstractContextManager[Any]:
    """SendTaskHeartbeat answers as AWS does.

    moto answers only for tasks that declare HeartbeatSeconds and only while the execution runs;
    anything else is InvalidToken. AWS accepts a heartbeat for any callback task still waiting
    (HeartbeatSeconds only sets how often one is required) and says TaskTimedOut or
    TaskDoesNotExist once it has ended. The worker asks before calling the API, so the embedded
    AWS must answer like AWS.
    """
    return mock.patch.object(StepFunctionsParserBackend, "send_task_heartbeat", _heartbeat)


_DYNAMODB_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items")
# Reads that walk a table's items: moto iterates its dict, and a write in another thread made
# a query fail with "dictionary changed size during iteration" (DynamoDB reads never fail so).
_DYNAMODB_WALKS = ("query", "scan")
_dynamodb_lock = threading.RLock()


def _serialized(original: Any, lock: threading.RLock = _dynamodb_lock) -> Any:
    def write(self: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            return original(self, *args, **kwargs)

    return write


@contextmanager
def atomic_dynamodb_writes() -> Iterator[None]:
    """Each DynamoDB write (condition check and update) happens as one step, as in AWS.

    moto checks a write's condition and applies the write as separate steps with no lock, so two
    threads (two Lambda sandboxes, or the threaded moto server) can both pass `tat = :old`.
    DynamoDB applies each conditional write atomically; the rate limiter and the idempotency
    records rely on it. Queries and scans take the same lock: they walk the items a write
    changes.
    """
    with ExitStack() as patches:
        for name in (*_DYNAMODB_WRITES, *_DYNAMODB_WALKS):
            serialized = _serialized(getattr(DynamoDBBackend, name))
            patches.enter_context(mock.patch.object(DynamoDBBackend, name, serialized))
        yield


_FINAL_STATUS = (
    (ProgramEnded, ExecutionStatus.SUCCEEDED),
    (ProgramStopped, ExecutionStatus.ABORTED),
    (ProgramError, ExecutionStatus.FAILED),
    (ProgramTimedOut, ExecutionStatus.TIMED_OUT),
)


def _reflect_execution_status(self: BaseExecutionWorkerCommunication) -> None:
    # moto 5.2.5's own, with the status assigned after what it describes.
    execution = self.execution
    ended = execution.exec_worker.env.program_state()  # type: ignore[union-attr]  # set while it runs
    execution.stop_date = datetime.datetime.now(tz=datetime.UTC)
    status = next((s for kind, s in _FINAL_STATUS if isinstance(ended, kind)), None)
    if status is None:
        raise RuntimeWarning(f"Execution ended with unsupported ProgramState type '{type(ended)}'.")
    if isinstance(ended, ProgramEnded):
        execution.output = execution.exec_worker.env.states.get_input()  # type: ignore[union-attr]
    elif isinstance(ended, ProgramError):
        execution.error = ended.error.get("error")  # type: ignore[union-attr]
        execution.cause = ended.error.get("cause")  # type: ignore[union-attr]
    execution.exec_status = status


def outcome_before_status() -> AbstractContextManager[Any]:
    """A finished execution's output, error and cause are in place before its status says so.

    moto sets the status first, so a DescribeExecution in between sees SUCCEEDED with no output
    (seen by a test polling a Map of 300 items). AWS shows an execution's outcome with its status.
    """
    return mock.patch.object(
        BaseExecutionWorkerCommunication, "_reflect_execution_status", _reflect_execution_status
    )


_cloudwatch_lock = threading.RLock()


@contextmanager
def serialized_cloudwatch() -> Iterator[None]:
    """One CloudWatch backend call at a time (each reads or changes alarms and metrics whole).

    moto's backend changes its alarms and metrics with no lock while other requests iterate them:
    DescribeAlarms during a deploy's PutMetricAlarm raised "dictionary changed size during
    iteration" (seen once as a 100,000-item benchmark deployed). CloudWatch answers each request whole.
    """
    with ExitStack() as patches:
        for name, member in vars(CloudWatchBackend).items():
            if not name.startswith("_") and callable(member):
                patches.enter_context(
                    mock.patch.object(CloudWatchBackend, name, _serialized(member, _cloudwatch_lock))
                )
        yield


def _dimension_lt(self: Dimension, other: Dimension) -> bool:
    return (self.name or "", self.value or "") < (other.name or "", other.value or "")


def order_free_metric_dimensions() -> AbstractContextManager[Any]:
    """GetMetricData finds a metric whatever order its dimensions are listed in, as in AWS.

    moto matches a query's dimensions to stored data by sorting both lists, but its
    `Dimension.__lt__` compares a value with a name, so the sort depends on the input order.
    CloudWatch identifies a metric by its set of dimensions; this sorts by (name, value).
    """
    return mock.patch.object(Dimension, "__lt__", _dimension_lt)


_TRACKED_MODULE_PREFIX = "moto.s3."
"""Whose instances moto's reset still needs to see (it closes their files)."""


def _untracked_new(cls: type[BaseModel], *args: Any, **kwargs: Any) -> BaseModel:  # noqa: ARG001 - __new__'s signature
    instance = super(BaseModel, cls).__new__(cls)  # what moto's own __new__ does
    if cls.__module__.startswith(_TRACKED_MODULE_PREFIX):
        cls.instances_tracked.append(instance)  # type: ignore[attr-defined]  # set by moto's metaclass
    return instance


def untracked_model_instances() -> AbstractContextManager[Any]:
    """moto keeps no reference to a model instance its backends have dropped (S3's aside).

    moto appends every model instance it creates to `BaseModel.instances_tracked` (read only by
    its dashboard and by S3's reset, which closes the files behind S3 keys) and never removes one:
    every SQS message sent, deleted or not, stayed in memory, two per throttled item, the main
    process's largest growth per item at 100,000 items.
    """
    return mock.patch.object(BaseModel, "__new__", _untracked_new)


def _iso_start_time(original: Any) -> Any:
    def environment(self: ExecutionWorker) -> Any:
        env = original(self)
        execution = env.states.context_object.context_object_data["Execution"]
        started = execution.get("StartTime")
        if isinstance(started, datetime.datetime):
            execution["StartTime"] = (
                started.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            )
        return env

    return environment


def iso_execution_start_time() -> AbstractContextManager[Any]:
    """`$$.Execution.StartTime` is a string, as on AWS (ISO 8601, e.g. 2026-12-04T19:50:09.944Z).

    moto puts a datetime in the context object, which no intrinsic can format (States.Format
    fails with "datetime is not JSON serializable"); keyed items sort by their batch's start.
    """
    return mock.patch.object(
        ExecutionWorker,
        "_get_evaluation_environment",
        _iso_start_time(ExecutionWorker._get_evaluation_environment),
    )
