"""Step Functions' size limits and Distributed Map result files, which moto 5.2.5 leaves out."""

from __future__ import annotations

import datetime
import io
import json
import threading
import uuid
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, Protocol
from unittest import mock

from moto.s3.models import s3_backends
from moto.stepfunctions.exceptions import ValidationException
from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.itemprocessor import (
    distributed_item_processor_worker,
    inline_item_processor_worker,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_map.result_writer.resource_eval import (
    resource_eval_s3,
)
from moto.stepfunctions.parser.asl.eval.program_state import ProgramEnded, ProgramError, ProgramStopped
from moto.stepfunctions.parser.models import StepFunctionsParserBackend

from localcloud.moto_version import MOTO_VERSION, UnsupportedMotoError, require_moto

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

__all__ = ["MOTO_VERSION", "MotoVersionError", "aws_results_and_limits"]

SFN_MAX_PAYLOAD_BYTES = 262_144  # StartExecution `input`: at most 256 KiB in UTF-8 (API reference)
RESULT_FILE_MAX_BYTES = 5 * 1024**3
"""A result file holds records until the next would take it past this size, then a new file
(`SUCCEEDED_1.json`, ...) starts. 5 GiB is the most one S3 PutObject can store, the bound a
writer using `s3:putObject` works within; a run of 100,000 Sluice items (~100 MB of records)
fits in one file, as on AWS."""
STATUS_FILES = ("SUCCEEDED", "FAILED", "PENDING")
"""Manifest groups: SUCCEEDED children, FAILED (failed, timed out or aborted children), and
PENDING (children never started because the Map Run ended first)."""

_WORKER = distributed_item_processor_worker.DistributedItemProcessorWorker
_CHILDREN_ATTRIBUTE = "_localcloud_children"
_children_lock = threading.Lock()


MotoVersionError = UnsupportedMotoError


class InputTooLarge(ValidationException):
    """StartExecution's input is over 256 KiB."""


# ---- the result file format (pure) ------------------------------------------------------------


def iso_utc(epoch_s: float) -> str:
    """A timestamp as the result files write it: ISO 8601, UTC, milliseconds."""
    moment = datetime.datetime.fromtimestamp(epoch_s, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def child_record(
    *,
    execution_arn: str,
    state_machine_arn: str,
    name: str,
    status: str,
    child_input: str,
    output: str | None,
    error: str | None,
    cause: str | None,
    start: float,
    stop: float,
) -> dict[str, Any]:
    """One child execution's record in a result file, with the fields AWS writes.

    `child_input` and `output` are JSON text, as in DescribeExecution. A succeeded child has
    `Output`; any other has `Error` and `Cause` when it ended with them."""
    record: dict[str, Any] = {
        "ExecutionArn": execution_arn,
        "Input": child_input,
        "InputDetails": {"Included": True},
        "Name": name,
        "RedriveCount": 0,
        "RedriveStatus": "NOT_REDRIVABLE",
        "RedriveStatusReason": "Execution is SUCCEEDED and cannot be redriven"
        if status == "SUCCEEDED"
        else "Map Run is not redrivable in the embedded AWS",
        "StartDate": iso_utc(start),
        "StateMachineArn": state_machine_arn,
        "Status": status,
        "StopDate": iso_utc(stop),
    }
    if status == "SUCCEEDED":
        record["Output"] = output if output is not None else "null"
        record["OutputDetails"] = {"Included": True}
    else:
        if error is not None:
            record["Error"] = error
        if cause is not None:
            record["Cause"] = cause
    return record


def status_group(status: str) -> str:
    """The manifest group (and file name prefix) of a child's status."""
    if status == "SUCCEEDED":
        return "SUCCEEDED"
    if status == "PENDING":
        return "PENDING"
    return "FAILED"


class Sink(Protocol):
    """Where one result file's bytes go, in order."""

    def write(self, data: bytes, /) -> object: ...


def write_result_files(
    records: Iterable[Mapping[str, Any]],
    open_file: Callable[[str, int], Sink],
    max_bytes: int = RESULT_FILE_MAX_BYTES,
) -> dict[str, list[int]]:
    """Writes records grouped by status as JSON arrays, a file never past `max_bytes` (a record
    bigger than that gets a file of its own), records in their given order. `open_file(group,
    n)` opens group's n-th file. Returns each group's file sizes, in order.

    A record at a time: at 100,000 records the files are about 100 MB, never held here."""
    sizes: dict[str, list[int]] = {group: [] for group in STATUS_FILES}
    sinks: dict[str, Sink | None] = dict.fromkeys(STATUS_FILES)

    def put(group: str, sink: Sink, data: bytes) -> None:
        sink.write(data)
        sizes[group][-1] += len(data)

    for record in records:
        group = status_group(str(record["Status"]))
        encoded = json.dumps(record, separators=(",", ":")).encode()
        sink = sinks[group]
        if sink is not None and sizes[group][-1] + 1 + len(encoded) + 1 > max_bytes:
            put(group, sink, b"]")
            sink = None
        if sink is None:
            sink = sinks[group] = open_file(group, len(sizes[group]))
            sizes[group].append(0)
            put(group, sink, b"[")
        else:
            put(group, sink, b",")
        put(group, sink, encoded)
    for group, last in sinks.items():
        if last is not None:
            put(group, last, b"]")
    return sizes


def result_files(
    records: Iterable[Mapping[str, Any]], max_bytes: int = RESULT_FILE_MAX_BYTES
) -> dict[str, list[bytes]]:
    """`write_result_files` into memory: each group's files, as bytes."""
    buffers: dict[str, list[io.BytesIO]] = {group: [] for group in STATUS_FILES}

    def open_file(group: str, _n: int) -> io.BytesIO:
        buffers[group].append(io.BytesIO())
        return buffers[group][-1]

    write_result_files(records, open_file, max_bytes)
    return {group: [b.getvalue() for b in files] for group, files in buffers.items()}


def manifest(
    *, bucket: str, map_run_arn: str, files: Mapping[str, Sequence[tuple[str, int]]]
) -> dict[str, Any]:
    """`manifest.json`: where each status group's files are, as (key, size in bytes)."""
    return {
        "DestinationBucket": bucket,
        "MapRunArn": map_run_arn,
        "ResultFiles": {
            group: [{"Key": key, "Size": size} for key, size in files.get(group, ())]
            for group in sorted(STATUS_FILES)
        },
    }


def result_prefix(prefix: str, map_run_arn: str) -> str:
    """`<Prefix>/<map run id>/`, the folder of one Map Run's results (AWS's layout)."""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return f"{prefix}{map_run_arn.rsplit(':', 1)[-1]}/"


# ---- what each child did, recorded as it runs -----------------------------------------------


def _children(map_run_record: Any) -> dict[int, dict[str, Any]]:
    """What each child of a Map Run did, by item index (kept on moto's own record of the run)."""
    children: dict[int, dict[str, Any]] | None = getattr(map_run_record, _CHILDREN_ATTRIBUTE, None)
    if children is None:
        with _children_lock:  # the Map's worker threads all start at once
            children = getattr(map_run_record, _CHILDREN_ATTRIBUTE, None)
            if children is None:
                children = {}
                setattr(map_run_record, _CHILDREN_ATTRIBUTE, children)
    return children


def _eval_input(self: Any, env_frame: Any) -> None:
    # Looked up at call time: another patch of the inline worker's _eval_input still applies.
    inline_item_processor_worker.InlineItemProcessorWorker._eval_input(self, env_frame)
    index = env_frame.states.context_object.context_object_data["Map"]["Item"]["Index"]
    # The child execution's input is the ItemSelector's output, taken before the child runs.
    _children(self._map_run_record).setdefault(index, {})["input"] = json.dumps(
        env_frame.states.get_input(), separators=(",", ":")
    )


def _recording(original: Any) -> Any:
    def eval_job(self: Any, env: Any, job: Any) -> None:
        start = datetime.datetime.now(tz=datetime.UTC).timestamp()
        try:
            original(self, env, job)
        finally:
            state = env.program_state()
            child = _children(self._map_run_record).setdefault(job.job_index, {})
            child["start"] = start
            child["stop"] = datetime.datetime.now(tz=datetime.UTC).timestamp()
            if isinstance(state, ProgramEnded):
                child["status"] = "SUCCEEDED"
            elif isinstance(state, ProgramStopped):
                child.update(status="ABORTED", error=state.error, cause=state.cause)
            else:
                details = state.error if isinstance(state, ProgramError) else None
                child.update(
                    status="FAILED",
                    error=(details or {}).get("error") or "States.Runtime",
                    cause=(details or {}).get("cause"),
                )

    return eval_job


def _child_records(map_run_record: Any, outputs: Sequence[Any]) -> Iterator[dict[str, Any]]:
    """Records in item order. moto's Map Run child has no execution of its own: its ARN and name
    are derived from the Map Run's, as AWS names them (`execution:<machine>/<label>:<id>`)."""
    children = _children(map_run_record)
    map_run_arn: str = map_run_record.map_run_arn
    run_id = map_run_arn.rsplit(":", 1)[-1]
    execution_prefix = map_run_arn.rsplit(":", 1)[0].replace(":mapRun:", ":execution:")
    now = datetime.datetime.now(tz=datetime.UTC).timestamp()
    for index, output in enumerate(outputs):
        child = children.get(index, {})
        name = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run_id}/{index}"))
        yield child_record(
            execution_arn=f"{execution_prefix}:{name}",
            state_machine_arn=map_run_record.map_state_machine_arn,
            name=name,
            status=child.get("status", "PENDING"),
            child_input=child.get("input", "{}"),
            output=json.dumps(output, separators=(",", ":")),
            error=child.get("error"),
            cause=child.get("cause"),
            start=child.get("start", now),
            stop=child.get("stop", now),
        )


class _KeyWriter:
    """Appends to a moto S3 object (moto 5.2.5's FakeKey: its value lives in a spooled
    temporary file, on disk past 5 MiB); its size and ETag follow what is written."""

    def __init__(self, key: Any) -> None:
        self._key = key

    def write(self, data: bytes, /) -> int:
        with self._key.lock:
            self._key._value_buffer.seek(0, io.SEEK_END)
            written = self._key._value_buffer.write(data)
            self._key.contentsize += len(data)
            self._key._etag = None  # moto computes it from the bytes when first asked
        return int(written)


def _s3_store(map_run_arn: str) -> Any:
    """moto's S3 backend of the Map Run's account and partition (`arn:<partition>:states:
    <region>:<account>:mapRun:...`)."""
    fields = map_run_arn.split(":")
    return s3_backends[fields[4]][fields[1]]


def _handle_put_object(env: Any, resource_runtime_part: Any, state_credentials: Any) -> None:
    """moto's ResultWriter (s3:putObject), with the result files written.

    moto writes only `manifest.json`, with empty `ResultFiles`, so nothing that reads a Map Run's
    results (Sluice's aggregate) can be tried locally. AWS writes the child executions' records,
    grouped by status, to `<Prefix>/<map run id>/SUCCEEDED_n.json`, `FAILED_n.json` and
    `PENDING_n.json` (each a JSON array) and lists them in the manifest.
    """
    parameters = env.stack.pop()
    outputs = env.stack.pop()  # the Map's outputs in item order (moto: None for a failed child)
    s3 = resource_eval_s3.ResourceEvalS3._get_s3_client(
        resource_runtime_part=resource_runtime_part, state_credentials=state_credentials
    )
    map_run_record = env.map_run_record_pool_manager.get_all().pop()
    bucket = parameters["Bucket"]
    folder = result_prefix(parameters.get("Prefix", ""), map_run_record.map_run_arn)
    s3.head_bucket(Bucket=bucket)  # a missing bucket fails the state as AWS's writer would
    store = _s3_store(map_run_record.map_run_arn)
    keys: dict[str, list[str]] = {group: [] for group in STATUS_FILES}

    def open_file(group: str, n: int) -> Sink:
        key = f"{folder}{group}_{n}.json"
        keys[group].append(key)
        # Straight into moto's S3 store, a record at a time: through the client, a 100 MB file
        # was built in memory, copied to bytes, sent over HTTP and read back on the server, and
        # moto's key spooled it through memory twice more on its way to disk.
        return _KeyWriter(store.put_object(bucket, key, b""))

    sizes = write_result_files(_child_records(map_run_record, outputs), open_file)
    written = {group: list(zip(keys[group], sizes[group], strict=True)) for group in STATUS_FILES}
    key = f"{folder}manifest.json"
    listing = manifest(bucket=bucket, map_run_arn=map_run_record.map_run_arn, files=written)
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(listing).encode())
    if hasattr(map_run_record, _CHILDREN_ATTRIBUTE):
        delattr(map_run_record, _CHILDREN_ATTRIBUTE)  # written: the records need not outlive the run
    env.stack.append(
        {"MapRunArn": map_run_record.map_run_arn, "ResultWriterDetails": {"Bucket": bucket, "Key": key}}
    )


# ---- StartExecution's input limit ---------------------------------------------------------------


def input_too_large_message(size: int) -> str:
    """AWS's validation message for the `input` member, and where to put a batch that big."""
    return (
        "1 validation error detected: Value at 'input' failed to satisfy constraint: Member must "
        f"have length less than or equal to {SFN_MAX_PAYLOAD_BYTES} (got {size} bytes in UTF-8). "
        "For a batch this large, upload the items to S3 as a JSON array and start the execution "
        'with {"source": {"bucket": "...", "key": "..."}}.'
    )


def _limited(original: Any) -> Any:
    """StartExecution refusing an input over 256 KiB before the execution exists, as AWS does (the
    API's length constraint on `input`, counted in UTF-8 bytes); moto accepts any input size."""

    def start_execution(
        self: Any, state_machine_arn: str, name: Any = None, execution_input: Any = None, **kw: Any
    ) -> Any:
        size = len(execution_input.encode()) if isinstance(execution_input, str) else 0
        if size > SFN_MAX_PAYLOAD_BYTES:
            raise InputTooLarge(input_too_large_message(size))
        return original(self, state_machine_arn, name, execution_input, **kw)

    return start_execution


@contextmanager
def aws_results_and_limits() -> Iterator[None]:
    """Result files from ResultWriter and AWS's 256 KiB StartExecution input limit.

    Each patch replaces one function of moto 5.2.5 (`MOTO_VERSION`); the version is checked before
    installing them.
    """
    require_moto("moto_results", "compare each patch with the new moto's Step Functions result writer")
    with ExitStack() as patches:
        # Why: moto's ResultWriter writes an empty manifest and no result files.
        patches.enter_context(
            mock.patch.object(
                resource_eval_s3.ResourceEvalS3, "_handle_put_object", staticmethod(_handle_put_object)
            )
        )
        # Why: the result files need each child's input (ItemSelector output), which moto drops.
        patches.enter_context(mock.patch.object(_WORKER, "_eval_input", _eval_input))
        # Why: ...and each child's status, error, cause and times, which moto reduces to null.
        patches.enter_context(mock.patch.object(_WORKER, "_eval_job", _recording(_WORKER._eval_job)))
        # Why: moto starts executions of any input size; AWS refuses over 256 KiB.
        patches.enter_context(
            mock.patch.object(
                StepFunctionsParserBackend,
                "start_execution",
                _limited(StepFunctionsParserBackend.start_execution),
            )
        )
        yield
