"""At most one legacy-API call per item, whatever SQS, Lambda or Step Functions do twice."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyItemNotFoundError,
    IdempotencyPersistenceLayerError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import STATUS_CONSTANTS

from sluice_fanout.handlers import limits
from sluice_fanout.handlers.contract import (
    ERROR_PERMANENT,
    IDEMPOTENCY_EXPIRY_ATTRIBUTE,
    IDEMPOTENCY_KEY_ATTRIBUTE,
    RESULT_POINTER_FIELD,
    RESULTS_PREFIX,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
    from mypy_boto3_s3 import S3Client

STATUS_COMPLETED = STATUS_CONSTANTS["COMPLETED"]
STATUS_EXPIRED = STATUS_CONSTANTS["EXPIRED"]
KEY_PREFIX = "sluice-item"
"""Fixed, so renaming the function or module keeps the records of items still in flight."""

# Step Functions accepts at most 256 KiB of task output; the worker wraps the result in the
# item's structured result (status, index, priority), which must fit too.
CHILD_STATE_HEADROOM_BYTES = 8_192


class ItemInProgress(Exception):  # noqa: N818 - a state, reported to the caller as such
    """Another invocation holds this item's record (a duplicate delivery) or a crashed one's lease
    has not run out yet: come back later rather than call the API beside it."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"item in progress elsewhere; retry in {retry_after_s}s")
        self.retry_after_s = retry_after_s


class IdempotencyStoreUnavailable(Exception):  # noqa: N818 - names the state, not a bug
    """The idempotency table could not be read or written; the API must not be called blind."""


@dataclass(frozen=True)
class Outcome:
    """What the worker reports for an item: `output` for SendTaskSuccess, else error and cause."""

    output: str | None = None
    error: str = ""
    cause: str = ""

    def to_record(self) -> dict[str, Any]:
        return {"output": self.output, "error": self.error, "cause": self.cause}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Outcome:
        return cls(output=record.get("output"), error=record.get("error", ""), cause=record.get("cause", ""))


class _Deadline:
    """The one part of a Lambda context Powertools reads: when this invocation's lease ends."""

    def __init__(self, remaining_ms: int) -> None:
        self._deadline = time.monotonic() + remaining_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _run(*, key: dict[str, Any], attempt: Callable[[], dict[str, Any]]) -> dict[str, Any]:  # noqa: ARG001 - `key` is what Powertools hashes
    return attempt()


class OncePerItem:
    """Runs an attempt at most once to completion per (execution, index).

    SQS delivers at least once, a worker can die between the API's answer and SendTaskSuccess, and
    a Step Functions retry can send the same item again with a new token. All carry the same
    business key, the parent execution and the item's index, so Powertools' idempotency (a
    DynamoDB record per key) turns every repeat into a replay of the stored outcome.

    What is stored is the outcome the worker would report: the task output (already small: results
    too large for Step Functions are spilled to S3 first, so a replay never writes them twice) or
    a permanent failure. Retryable errors are not stored, so the next attempt calls again.
    """

    def __init__(
        self,
        persistence: BasePersistenceLayer,
        expires_after_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._config = IdempotencyConfig(
            raise_on_no_idempotency_key=True, expires_after_seconds=expires_after_seconds
        )
        self._guarded = idempotent_function(
            _run,
            data_keyword_argument="key",
            persistence_store=persistence,
            config=self._config,
            key_prefix=KEY_PREFIX,
        )

    def run(
        self,
        *,
        execution: str,
        index: int,
        remaining_ms: int,
        attempt: Callable[[], Outcome],
        number: int = 0,
    ) -> tuple[Outcome, bool]:
        """The item's outcome, and whether it is a replay of a stored one rather than the
        attempt's (stored when the attempt returns; one that raises stores nothing, so the next
        delivery calls again). The record also keeps when the outcome came and after how many
        attempts (`number`), for `sluice explain`."""
        # The in-progress lease ends with this invocation: a crashed worker's record is
        # reclaimable by the redelivery, which comes after the visibility timeout (6x longer).
        self._config.register_lambda_context(_Deadline(remaining_ms))  # type: ignore[arg-type]  # only the remaining time is read
        produced: list[Outcome] = []

        def recorded() -> dict[str, Any]:
            produced.append(attempt())
            return produced[0].to_record() | {"at": round(self._clock(), 3), "attempt": number}

        try:
            record = self._guarded(key={"execution": execution, "index": index}, attempt=recorded)
        except IdempotencyAlreadyInProgressError as exc:
            raise ItemInProgress(max(1, remaining_ms // 1000)) from exc
        except IdempotencyPersistenceLayerError as exc:
            if produced:
                # The call happened and its outcome is known; failing to store it must not
                # lose it. A later duplicate delivery could call again: logged by the caller.
                return produced[0], False
            raise IdempotencyStoreUnavailable(str(exc)) from exc
        return Outcome.from_record(record), not produced


@dataclass(frozen=True)
class StoredItem:
    """An item's idempotency record as `sluice explain` reads it."""

    finished: bool
    """True: its outcome is stored; False: an attempt holds it now (the call is in flight)."""
    outcome: Outcome | None
    at: float | None
    """When the outcome was stored (None: in progress, or stored before this was kept)."""
    attempt: int | None
    lease_until: float | None
    """In progress: when the holder's lease ends (its invocation's deadline)."""


def item_persistence(client: Any, table: str) -> DynamoDBPersistenceLayer:  # a boto3 DynamoDB client
    """The items' idempotency records, as the worker writes them and `sluice explain` reads them."""
    return DynamoDBPersistenceLayer(
        table_name=table,
        key_attr=IDEMPOTENCY_KEY_ATTRIBUTE,
        expiry_attr=IDEMPOTENCY_EXPIRY_ATTRIBUTE,
        boto3_client=client,
    )


def stored_item(persistence: BasePersistenceLayer, execution: str, index: int) -> StoredItem | None:
    """One GetItem by the same key the worker's records have (Powertools' hash of the business
    key), or None when the item has no record (not reached the API yet, or expired)."""
    persistence.configure(IdempotencyConfig(), key_prefix=KEY_PREFIX)
    try:
        record = persistence.get_record({"execution": execution, "index": index})
    except IdempotencyItemNotFoundError:
        return None
    if record is None or record.status == STATUS_EXPIRED:
        return None
    if record.status != STATUS_COMPLETED:
        lease = record.in_progress_expiry_timestamp
        return StoredItem(False, None, None, None, float(lease) / 1000 if lease else None)
    data = record.response_json_as_dict() or {}
    at, number = data.get("at"), data.get("attempt")
    return StoredItem(
        True,
        Outcome.from_record(data),
        float(at) if isinstance(at, (int, float)) else None,
        int(number) if isinstance(number, int) and number > 0 else None,
        None,
    )


def task_output(*, result: Any, spill: Callable[[bytes], dict[str, Any]] | None) -> Outcome:
    """The task output for a target's result: inline, or a pointer when it would not fit."""
    try:
        output = json.dumps(result)
    except (TypeError, ValueError) as exc:
        return Outcome(error=ERROR_PERMANENT, cause=f"target returned a value that is not JSON: {exc}")
    size = len(output.encode())
    if size + CHILD_STATE_HEADROOM_BYTES <= limits.SFN_MAX_OUTPUT_BYTES:
        return Outcome(output=output)
    if spill is None:
        return Outcome(
            error=ERROR_PERMANENT,
            cause=f"target result is {size} bytes, too large for Step Functions, and no results "
            "bucket is configured",
        )
    return Outcome(output=json.dumps({RESULT_POINTER_FIELD: spill(output.encode())}))


class ResultSpill:
    """Writes results too large for Step Functions to S3; the task returns a pointer."""

    def __init__(self, s3: S3Client, bucket: str) -> None:
        self._s3 = s3
        self._bucket = bucket

    def writer(self, execution: str, index: int) -> Callable[[bytes], dict[str, Any]]:
        # The execution ARN's `stateMachine:execution` tail keeps keys unique across machines.
        tail = execution.split(":execution:", 1)[-1].replace(":", "/") or "unknown-execution"

        def write(body: bytes) -> dict[str, Any]:
            key = f"{RESULTS_PREFIX}{tail}/{index}.json"
            self._s3.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType="application/json")
            return {"bucket": self._bucket, "key": key, "bytes": len(body)}

        return write
