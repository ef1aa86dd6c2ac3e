"""Thin boto3 adapters. Each takes its client, so tests hand in one pointed at moto."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import threading
import time
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from botocore.exceptions import ClientError

from sluice_fanout.handlers import contract, fair, limits
from sluice_fanout.handlers.contract import (
    ATTR_DEAD_LETTER_REASON,
    IDEMPOTENCY_EXPIRY_ATTRIBUTE,
    IDEMPOTENCY_KEY_ATTRIBUTE,
)
from sluice_fanout.handlers.controller import (
    BreakerMode,
    BreakerState,
    ControllerState,
    Deployed,
    Signal,
    StateConflict,
    StateUnreadable,
    Stored,
)
from sluice_fanout.handlers.fair import KeyRule, Ledger
from sluice_fanout.handlers.limits import SFN_MAX_CAUSE_CHARS, SFN_MAX_ERROR_CHARS
from sluice_fanout.handlers.progress import RETRY_FIELD_PREFIX, Ended, Progress, Retry
from sluice_fanout.handlers.rate import (
    RATE_RESERVATION_LEAD_S,
    Denied,
    Grant,
    RateLimiterContended,
    interval_for,
    reserve,
)
from sluice_fanout.handlers.runtime_limits import (
    CONCURRENCY,
    Effective,
    LimitsError,
    Overrides,
    StoredLimits,
)
from sluice_fanout.handlers.runtime_limits import Deployed as LimitsDeployed

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_stepfunctions import SFNClient


class WarningLogger(Protocol):
    def warning(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...


class _KeyedLogger:
    def __init__(self, logger: WarningLogger, keys: dict[str, Any]) -> None:
        self._logger = logger
        self._keys = dict(keys)

    def warning(self, msg: str, *args: Any, extra: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return self._logger.warning(msg, *args, extra=self._keys | (extra or {}), **kwargs)


class SqsQueues:
    """The few SQS calls the worker makes besides what the event source mapping does."""

    def __init__(self, client: SQSClient) -> None:
        self._client = client

    def visible_depth(self, queue_url: str) -> int:
        """Approximate number of visible messages (not in flight, not delayed)."""
        attrs = self._client.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(attrs["Attributes"]["ApproximateNumberOfMessages"])

    def holds_anything(self, queue_url: str) -> bool:
        """Whether the queue has any message at all: visible, in flight or delayed."""
        attrs = self._client.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        return any(int(value) > 0 for value in attrs.values())

    def change_visibility(self, queue_url: str, receipt_handle: str, seconds: int) -> None:
        self._client.change_message_visibility(
            QueueUrl=queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
        )

    def receive_one(self, queue_url: str, wait_seconds: int = 0) -> dict[str, Any] | None:
        """Take the next visible message, if any, waiting up to `wait_seconds` for one (ticket
        dispatch pulls)."""
        messages = self._client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        ).get("Messages", [])
        return dict(messages[0]) if messages else None

    def delete(self, queue_url: str, receipt_handle: str) -> None:
        self._client.delete_message(QueueUrl=queue_url, ReceiptHandle=receipt_handle)

    def dead_letter(self, dlq_url: str, body: str, reason: str) -> None:
        """Put a message that can never be worked on the DLQ at once, with the reason."""
        self._client.send_message(
            QueueUrl=dlq_url,
            MessageBody=body,
            MessageAttributes={ATTR_DEAD_LETTER_REASON: {"DataType": "String", "StringValue": reason[:1024]}},
        )


class TaskTokens:
    """Completes Step Functions task tokens, tolerating late and duplicate completions."""

    def __init__(self, client: SFNClient, logger: WarningLogger) -> None:
        self._client = client
        self._logger = logger
        # A token that timed out, was already completed, or belongs to a stopped execution
        # cannot be completed again; the item's fate is already recorded, so this is done.
        self._already_done = (
            client.exceptions.TaskTimedOut,
            client.exceptions.TaskDoesNotExist,
            client.exceptions.InvalidToken,
        )

    def logging_with(self, keys: dict[str, Any]) -> TaskTokens:
        """The same tokens, its log lines carrying `keys` whatever the logger's context is then
        (a completion sent on another thread, while the logger's context names the next item)."""
        return TaskTokens(self._client, _KeyedLogger(self._logger, keys))

    def alive(self, token: str) -> bool:
        """Whether the task may still wait for this token (SendTaskHeartbeat, which any callback
        task accepts): an item whose task timed out or whose execution stopped is not worked."""
        try:
            self._client.send_task_heartbeat(taskToken=token)
        except (self._client.exceptions.TaskTimedOut, self._client.exceptions.TaskDoesNotExist) as exc:
            self._logger.warning("task token already finished", extra={"reason": type(exc).__name__})
            return False
        except self._client.exceptions.InvalidToken:
            # Cannot tell, so do not drop work on it: the completion that follows tolerates it.
            return True
        return True

    def succeed(self, token: str, output: str) -> bool:
        """SendTaskSuccess. False when the token was already finished."""
        try:
            self._client.send_task_success(taskToken=token, output=output)
        except self._already_done as exc:
            self._logger.warning("task token already finished", extra={"reason": type(exc).__name__})
            return False
        return True

    def fail(self, token: str, error: str, cause: str) -> bool:
        """SendTaskFailure. False when the token was already finished."""
        try:
            self._client.send_task_failure(
                taskToken=token,
                error=error[:SFN_MAX_ERROR_CHARS],
                cause=cause[:SFN_MAX_CAUSE_CHARS],
            )
        except self._already_done as exc:
            self._logger.warning("task token already finished", extra={"reason": type(exc).__name__})
            return False
        return True


RATE_KEY_PREFIX = "rate#"
"""The limiter's item in the idempotency table: `rate#<function>`. Powertools' records are
`sluice-item#<hash>`, so the two never meet."""
RATE_ATTRIBUTE = "tat"
RATE_RECORD_TTL_S = 86_400
"""An idle limiter's item expires (the table's TTL); a missing item means "no call pending"."""
RATE_MAX_TRIES = 30
"""Conditional writes lost to other invocations before giving up. At most `concurrency`
invocations contend, each round has a winner, and each loser learns the winner's TAT from its
failed write; a short random pause after a loss spreads the next round out."""
RATE_RETRY_PAUSE_S = 0.01


class DynamoRateLimiter:
    """GCRA's TAT on one DynamoDB item, moved by conditional UpdateItem (optimistic concurrency).

    The TAT last seen is kept per sandbox, so an uncontended call costs one UpdateItem; a stale
    guess costs a second one (the failed write returns the current TAT, no GetItem needed).
    """

    def __init__(
        self,
        client: Any,  # a boto3 DynamoDB client; no stubs are pinned for it
        table: str,
        function_name: str,
        interval: float | Callable[[], float],
        *,
        clock: Callable[[], float] = time.time,
        pause: Callable[[float], None] = time.sleep,
        lead: float = RATE_RESERVATION_LEAD_S,
    ) -> None:
        """`interval`: seconds between slots, or where to read them at each reservation (a limit
        changed at run time, `LiveLimits`)."""
        self._client = client
        self._table = table
        self._key = {IDEMPOTENCY_KEY_ATTRIBUTE: {"S": RATE_KEY_PREFIX + function_name}}
        self._interval = interval if callable(interval) else lambda: interval
        self._clock = clock
        self._pause = pause
        self._lead = lead
        self._known: str | None = None
        """The stored TAT as DynamoDB returned it (a number's text), or None: no item."""

    def reserve(self, max_wait: float) -> Grant | Denied:
        for _ in range(RATE_MAX_TRIES):
            now = self._clock()
            known = None if self._known is None else float(self._known)
            decision = reserve(known, now, self._interval(), max_wait, self._lead)
            if isinstance(decision, Denied):
                # Judged on a TAT that can only be older (lower) than the stored one: the real
                # wait is at least as long, so nothing is reserved on a stale guess.
                return decision
            new = f"{decision.tat:.6f}"
            values: dict[str, Any] = {
                ":new": {"N": new},
                ":exp": {"N": str(int(now) + RATE_RECORD_TTL_S)},
            }
            if self._known is None:
                condition = f"attribute_not_exists({RATE_ATTRIBUTE})"
            else:
                condition = f"{RATE_ATTRIBUTE} = :old"
                values[":old"] = {"N": self._known}
            try:
                self._client.update_item(
                    TableName=self._table,
                    Key=self._key,
                    UpdateExpression=f"SET {RATE_ATTRIBUTE} = :new, #exp = :exp",
                    ConditionExpression=condition,
                    ExpressionAttributeNames={"#exp": IDEMPOTENCY_EXPIRY_ATTRIBUTE},
                    ExpressionAttributeValues=values,
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                old: dict[str, Any] | None = exc.response.get("Item")  # type: ignore[assignment]  # ALL_OLD puts the item in the error response
                self._known = self._stored(old)
                self._pause(random.uniform(0, RATE_RETRY_PAUSE_S))  # noqa: S311 - jitter, not a secret
                continue
            self._known = new
            return decision
        raise RateLimiterContended(f"lost {RATE_MAX_TRIES} conditional writes of {self._key}")

    def _stored(self, item: dict[str, Any] | None) -> str | None:
        if item is None:
            # An endpoint that does not return the old item: read it.
            item = self._client.get_item(TableName=self._table, Key=self._key, ConsistentRead=True).get(
                "Item"
            )
        if not item or RATE_ATTRIBUTE not in item:
            return None
        return str(item[RATE_ATTRIBUTE]["N"])


# The adaptive controller's adapters (handlers/adaptive.py).
K = TypeVar("K", ControllerState, BreakerState)


class CloudWatchSignals:
    """The worker's API metrics over a window, summed over its priorities."""

    def __init__(
        self,
        client: Any,  # a boto3 CloudWatch client
        worker: str,
        priorities: tuple[str, ...],
        *,
        namespace: str = contract.METRICS_NAMESPACE,
        service: str = contract.METRICS_SERVICE,
    ) -> None:
        self._client = client
        self._queries: list[tuple[str, str, str]] = []  # (id, metric, stat)
        self._specs: list[dict[str, Any]] = []
        wanted = [(m, "Sum") for m in contract.API_SIGNAL_METRICS] + [
            (contract.METRIC_API_LATENCY, "Sum"),
            (contract.METRIC_API_LATENCY, "SampleCount"),
        ]
        for p_no, priority in enumerate(priorities):
            dimensions = [
                {"Name": contract.DIMENSION_FUNCTION, "Value": worker},
                {"Name": contract.DIMENSION_PRIORITY, "Value": priority},
                {"Name": contract.DIMENSION_SERVICE, "Value": service},
            ]
            for m_no, (metric, stat) in enumerate(wanted):
                query_id = f"p{p_no}m{m_no}"
                self._queries.append((query_id, metric, stat))
                self._specs.append(
                    {
                        "Id": query_id,
                        "MetricStat": {
                            "Metric": {
                                "Namespace": namespace,
                                "MetricName": metric,
                                "Dimensions": dimensions,
                            },
                            "Period": 0,  # set per read: the window's length
                            "Stat": stat,
                        },
                        "ReturnData": True,
                    }
                )
        if len(self._specs) > limits.CW_MAX_METRIC_QUERIES:
            raise ValueError(
                f"{len(priorities)} priorities need more than {limits.CW_MAX_METRIC_QUERIES} metric queries"
            )

    def read(self, start: int, end: int) -> Signal:
        period = end - start
        queries = [{**spec, "MetricStat": {**spec["MetricStat"], "Period": period}} for spec in self._specs]
        totals: dict[str, float] = {}
        request: dict[str, Any] = {
            "MetricDataQueries": queries,
            "StartTime": datetime.fromtimestamp(start, UTC),
            "EndTime": datetime.fromtimestamp(end, UTC),
        }
        while True:
            answer = self._client.get_metric_data(**request)
            for result in answer.get("MetricDataResults", []):
                totals[result["Id"]] = totals.get(result["Id"], 0.0) + sum(result.get("Values", []))
            token = answer.get("NextToken")
            if not token:
                break
            request["NextToken"] = token
        sums: dict[tuple[str, str], float] = {}
        for query_id, metric, stat in self._queries:
            sums[(metric, stat)] = sums.get((metric, stat), 0.0) + totals.get(query_id, 0.0)
        return signal_from(
            calls=sums[(contract.METRIC_API_CALLS, "Sum")],
            throttled=sums[(contract.METRIC_API_THROTTLED, "Sum")],
            errors=sums[(contract.METRIC_API_ERRORS, "Sum")],
            latency_sum_ms=sums[(contract.METRIC_API_LATENCY, "Sum")],
            latency_count=sums[(contract.METRIC_API_LATENCY, "SampleCount")],
            seconds=period,
        )


def signal_from(
    *,
    calls: float,
    throttled: float,
    errors: float,
    latency_sum_ms: float,
    latency_count: float,
    seconds: float,
) -> Signal:
    """A Signal from metric sums. An invocation's EMF line carries its call and its outcome
    together, so they land in the same window; the clamps only guard against a line split by
    CloudWatch at a period boundary."""
    n = round(calls)
    t = min(round(throttled), n)
    e = min(round(errors), n - t)
    return Signal(
        calls=n,
        throttled=t,
        errors=e,
        latency_ms=latency_sum_ms / latency_count if latency_count else 0.0,
        # Busy time of answered calls / window: the concurrency the API actually served.
        in_flight=latency_sum_ms / 1000 / seconds,
    )


class LambdaControls:
    """The worker's reserved concurrency and its mappings' MaximumConcurrency and state."""

    def __init__(
        self,
        client: Any,  # a boto3 Lambda client
        worker: str,
        mappings: tuple[str, ...],
        logger: WarningLogger,
    ) -> None:
        self._client = client
        self._worker = worker
        self._mappings = mappings
        self._logger = logger

    def deployed(self) -> Deployed:
        reserved = self._client.get_function_concurrency(FunctionName=self._worker).get(
            "ReservedConcurrentExecutions"
        )
        mappings = {}
        for uuid in self._mappings:
            esm = self._client.get_event_source_mapping(UUID=uuid)
            # Enabling/Disabling count as where they are heading. Updating/Creating count as
            # enabled: a disabled mapping read then is disabled again by the next step.
            enabled = esm.get("State") not in ("Disabled", "Disabling")
            mappings[uuid] = (enabled, (esm.get("ScalingConfig") or {}).get("MaximumConcurrency"))
        return Deployed(None if reserved is None else int(reserved), mappings)

    def apply(self, limit: int, paused: bool | None, now: Deployed) -> list[str]:
        """`paused` None leaves each mapping enabled or disabled as it is (`sluice limits set`)."""
        changes: list[str] = []
        pollers = max(limits.ESM_MIN_MAXIMUM_CONCURRENCY, limit)
        updates = {}
        for uuid, (enabled, maximum) in now.mappings.items():
            update: dict[str, Any] = {}
            if paused is not None and enabled == paused:
                update["Enabled"] = not paused
            if maximum != pollers:
                update["ScalingConfig"] = {"MaximumConcurrency": pollers}
            if update:
                updates[uuid] = update
        down = bool(paused) or now.reserved is None or limit < now.reserved
        if not down:
            self._reserve(limit, now, changes)
        for uuid, update in updates.items():
            self._call(
                changes,
                f"mapping {uuid} {update}",
                self._client.update_event_source_mapping,
                UUID=uuid,
                **update,
            )
        if down:
            self._reserve(limit, now, changes)
        return changes

    def _reserve(self, limit: int, now: Deployed, changes: list[str]) -> None:
        if now.reserved != limit:
            self._call(
                changes,
                f"reserved {now.reserved} -> {limit}",
                self._client.put_function_concurrency,
                FunctionName=self._worker,
                ReservedConcurrentExecutions=limit,
            )

    def _call(self, changes: list[str], what: str, call: Callable[..., Any], **kwargs: Any) -> None:
        """One control-plane call; a failure is noted and the others still run (a mapping left
        enabled while pausing is worse than one call failing twice)."""
        try:
            call(**kwargs)
        except ClientError as exc:
            # e.g. ResourceInUseException: still applying an earlier update; the next step retries.
            changes.append(f"{what} failed: {exc.response.get('Error', {}).get('Code', 'unknown')}")
            self._logger.warning("control call failed", extra={"what": what, "error": str(exc)})
            return
        changes.append(what)


class DynamoStore:
    """The state item `controller#<worker>` in the idempotency table, versioned."""

    def __init__(self, client: Any, table: str, worker: str) -> None:  # a boto3 DynamoDB client
        self._client = client
        self._table = table
        self._key = {contract.IDEMPOTENCY_KEY_ATTRIBUTE: {"S": contract.CONTROLLER_STATE_PREFIX + worker}}

    def load(self) -> Stored | None:
        item = self._client.get_item(TableName=self._table, Key=self._key, ConsistentRead=True).get("Item")
        if item is None:
            return None
        version = int(item["version"]["N"])
        try:
            body = json.loads(item["state"]["S"])
            breaker = body.get("breaker", {})
            return Stored(
                limit=int(body["limit"]),
                controller=_known_fields(ControllerState, body.get("controller", {})),
                breaker=BreakerState(BreakerMode(breaker.get("mode", "closed")), breaker.get("opened_at")),
                window_end=int(body.get("window_end", 0)),
                version=version,
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise StateUnreadable(version, f"{self._key}: {exc!r}") from exc

    def save(self, state: Stored) -> None:
        body = {
            "limit": state.limit,
            "controller": asdict(state.controller),
            "breaker": {"mode": str(state.breaker.mode), "opened_at": state.breaker.opened_at},
            "window_end": state.window_end,
        }
        item = self._key | {"state": {"S": json.dumps(body)}, "version": {"N": str(state.version)}}
        condition: dict[str, Any] = (
            {"ConditionExpression": f"attribute_not_exists({contract.IDEMPOTENCY_KEY_ATTRIBUTE})"}
            if state.version == 1
            else {
                "ConditionExpression": "version = :read",
                "ExpressionAttributeValues": {":read": {"N": str(state.version - 1)}},
            }
        )
        try:
            self._client.put_item(TableName=self._table, Item=item, **condition)
        except self._client.exceptions.ConditionalCheckFailedException as exc:
            raise StateConflict(f"state version {state.version - 1} was replaced") from exc


def _known_fields(kind: type[K], raw: dict[str, Any]) -> K:
    """A dataclass from stored fields, ignoring ones a newer or older release wrote."""
    names = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in raw.items() if k in names})


class ControllerGrant:
    """Whether the adaptive controller still grants the slot a worker invocation holds.

    A worker that keeps its slot for more items (ticket dispatch) must give it back as soon as
    the controller lowers the limit or opens the breaker, as one that works a single item does.
    It cannot tell which slot it is, so every such invocation stops after its current item; the
    event source mapping then starts only as many as the new limit allows.
    """

    def __init__(self, store: DynamoStore) -> None:
        self._store = store
        self._limit: int | None = None

    def _limit_now(self) -> int | None:
        """The limit the controller grants now: 0 while its breaker is not closed or its state
        cannot be read (nothing is assumed granted), None before its first step."""
        try:
            state = self._store.load()
        except (StateUnreadable, ClientError):
            return 0
        if state is None:
            return None
        return state.limit if state.breaker.mode is BreakerMode.CLOSED else 0

    def start(self) -> None:
        """Note the limit when the invocation starts: later reads compare with it."""
        self._limit = self._limit_now()

    def granted(self) -> bool:
        now = self._limit_now()
        if now is None:
            return True  # no step stored yet: the deployed limit holds
        return now > 0 and (self._limit is None or now >= self._limit)


class BatchCounts:
    """Each batch's progress record (`batch#<parent execution ARN>`) in the idempotency table:
    one UpdateItem per item's final outcome and one per retry, never a read on the item's path
    (`progress.Progress`). The record expires with the idempotency records."""

    def __init__(
        self, client: Any, table: str, ttl_s: int, clock: Callable[[], float] = time.time
    ) -> None:  # a boto3 DynamoDB client
        self._client = client
        self._table = table
        self._ttl_s = ttl_s
        self._clock = clock

    def _key(self, execution: str) -> dict[str, Any]:
        return {IDEMPOTENCY_KEY_ATTRIBUTE: {"S": contract.BATCH_PROGRESS_PREFIX + execution}}

    def finished(self, execution: str, index: int, *, ok: bool) -> None:
        """Count the item's final outcome; it no longer retries."""
        self.finished_many(execution, succeeded=int(ok), failed=int(not ok), indexes=[index])

    def finished_many(self, execution: str, *, succeeded: int, failed: int, indexes: Sequence[int]) -> None:
        """Count several items' final outcomes in one write (a kept slot's last second of them)."""
        removed = {f"#r{n}": f"{RETRY_FIELD_PREFIX}{index}" for n, index in enumerate(indexes)}
        self._client.update_item(
            TableName=self._table,
            Key=self._key(execution),
            UpdateExpression="SET #exp = :exp ADD succeeded :ok, failed :failed"
            + (f" REMOVE {', '.join(removed)}" if removed else ""),
            ExpressionAttributeNames={"#exp": IDEMPOTENCY_EXPIRY_ATTRIBUTE, **removed},
            ExpressionAttributeValues={
                ":ok": {"N": str(succeeded)},
                ":failed": {"N": str(failed)},
                ":exp": {"N": str(int(self._clock()) + self._ttl_s)},
            },
        )

    def retrying(self, execution: str, retry: Retry) -> None:
        """Note the item's next attempt (replacing its last one)."""
        self._client.update_item(
            TableName=self._table,
            Key=self._key(execution),
            UpdateExpression="SET #r = :r, #exp = :exp",
            ExpressionAttributeNames={
                "#exp": IDEMPOTENCY_EXPIRY_ATTRIBUTE,
                "#r": f"{RETRY_FIELD_PREFIX}{retry.index}",
            },
            ExpressionAttributeValues={
                ":r": {"S": retry.encode()},
                ":exp": {"N": str(int(self._clock()) + self._ttl_s)},
            },
        )

    def ended(self, execution: str, ended: Ended) -> None:
        """Keep why the item ended where `ended_item` finds it by key alone (no scan)."""
        self._client.put_item(
            TableName=self._table,
            Item=self._ended_key(execution, ended.index)
            | {
                "ended": {"S": ended.encode()},
                IDEMPOTENCY_EXPIRY_ATTRIBUTE: {"N": str(int(self._clock()) + self._ttl_s)},
            },
        )

    def ended_item(self, execution: str, index: int) -> Ended | None:
        item = self._client.get_item(
            TableName=self._table, Key=self._ended_key(execution, index), ConsistentRead=True
        ).get("Item")
        return Ended.decode(index, item["ended"]["S"]) if item and "ended" in item else None

    @staticmethod
    def _ended_key(execution: str, index: int) -> dict[str, Any]:
        return {IDEMPOTENCY_KEY_ATTRIBUTE: {"S": f"{contract.ITEM_ENDED_PREFIX}{execution}#{index}"}}

    def load(self, execution: str) -> Progress:
        item = self._client.get_item(
            TableName=self._table, Key=self._key(execution), ConsistentRead=True
        ).get("Item", {})
        retries = tuple(
            sorted(
                (
                    Retry.decode(int(name[len(RETRY_FIELD_PREFIX) :]), value["S"])
                    for name, value in item.items()
                    if name.startswith(RETRY_FIELD_PREFIX) and name[len(RETRY_FIELD_PREFIX) :].isdigit()
                ),
                key=lambda r: r.next_at,
            )
        )
        return Progress(
            succeeded=int(item.get("succeeded", {"N": "0"})["N"]),
            failed=int(item.get("failed", {"N": "0"})["N"]),
            retries=retries,
        )


class LimitsStore:
    """The run-time limits item `limits#<worker>` in the idempotency table (`sluice limits`,
    docs/limits.md). Versioned: a change is written only over the version it read, so two
    operators' changes never silently overwrite each other."""

    def __init__(self, client: Any, table: str, worker: str) -> None:  # a boto3 DynamoDB client
        self._client = client
        self._table = table
        self._key = {IDEMPOTENCY_KEY_ATTRIBUTE: {"S": contract.LIMITS_PREFIX + worker}}

    def load(self) -> StoredLimits | None:
        item = self._client.get_item(TableName=self._table, Key=self._key, ConsistentRead=True).get("Item")
        if item is None:
            return None
        try:
            return StoredLimits(
                Overrides.from_json(item["limits"]["S"]),
                int(item["version"]["N"]),
                float(item["updated_at"]["N"]),
                item["updated_by"]["S"],
            )
        except (KeyError, ValueError) as exc:  # LimitsError and JSONDecodeError are ValueErrors
            raise LimitsUnreadableError(f"{self._key}: {exc!r}") from exc

    def save(self, overrides: Overrides, read: StoredLimits | None, *, by: str, at: float) -> StoredLimits:
        """Store `overrides` over `read` (None: no item was there); raises StateConflict if
        someone else changed them since."""
        version = 1 if read is None else read.version + 1
        item = self._key | {
            "limits": {"S": overrides.to_json()},
            "version": {"N": str(version)},
            "updated_at": {"N": f"{at:.3f}"},
            "updated_by": {"S": by},
        }
        condition: dict[str, Any] = (
            {"ConditionExpression": f"attribute_not_exists({IDEMPOTENCY_KEY_ATTRIBUTE})"}
            if read is None
            else {
                "ConditionExpression": "version = :read",
                "ExpressionAttributeValues": {":read": {"N": str(read.version)}},
            }
        )
        try:
            self._client.put_item(TableName=self._table, Item=item, **condition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            raise StateConflict(f"the limits changed since version {version - 1} was read") from exc
        return StoredLimits(overrides, version, at, by)


class LimitsUnreadableError(Exception):
    """The stored limits item is not what this release writes."""


LIMITS_REFRESH_S = 5.0
"""How old a worker's copy of the run-time limits may get: with the item in hand, a change
reaches every worker within 10 s at one GetItem per sandbox per 5 s."""


class LiveLimits:
    """The limits a worker sandbox obeys now: the stored overrides over its deployed settings,
    read again when older than `refresh_s`. A read that fails keeps the last limits (the
    deployed ones before any read); overrides that no longer fit the deployment (say its keys
    setting was removed) are ignored, with a warning, until they are changed."""

    def __init__(
        self,
        store: LimitsStore,
        deployed: LimitsDeployed,
        logger: WarningLogger,
        refresh_s: float = LIMITS_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._deployed = deployed
        self._logger = logger
        self._refresh_s = refresh_s
        self._clock = clock
        self._lock = threading.Lock()  # the worker's completer thread reads too
        self._read_at: float | None = None
        self._version = 0
        self._effective = Effective(deployed.concurrency, deployed.calls_per_second, deployed.keys)
        self._override: int | None = None

    def now(self) -> Effective:
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self._refresh_s:
                self._read_at = now
                self._refresh()
            return self._effective

    def keys_rule(self, key: str, priority: str) -> KeyRule:
        """A key's weight, cap and order as they stand now (`KeyedItems`' rules)."""
        keys = self.now().keys
        return KeyRule() if keys is None else keys.rule(key, priority)

    def concurrency_override(self) -> int | None:
        """The operator's concurrency, or None when the deployed one holds."""
        self.now()
        return self._override

    def _refresh(self) -> None:
        try:
            stored = self._store.load()
        except (ClientError, LimitsUnreadableError) as exc:
            self._logger.warning("run-time limits unreadable; keeping the last", extra={"error": str(exc)})
            return
        version = 0 if stored is None else stored.version
        if version == self._version:
            return
        self._version = version
        overrides = Overrides() if stored is None else stored.overrides
        try:
            self._effective = overrides.apply(self._deployed)
        except LimitsError as exc:
            self._logger.warning(
                "run-time limits do not fit this deployment; obeying the deployed ones",
                extra={"error": str(exc), "version": version},
            )
            overrides = Overrides()
            self._effective = overrides.apply(self._deployed)
        value = overrides.values.get(CONCURRENCY)
        self._override = None if value is None else int(value)


class LimitsGrant:
    """Whether an invocation may keep its slot under the operator's concurrency: not once it is
    lower than when the invocation started (an override that appears counts as lower). Like
    ControllerGrant, every such invocation stops after its item and the mappings start only as
    many as the new limit allows."""

    def __init__(self, live: LiveLimits) -> None:
        self._live = live
        self._start = math.inf

    def _ceiling(self) -> float:
        value = self._live.concurrency_override()
        return math.inf if value is None else value

    def start(self) -> None:
        self._start = self._ceiling()

    def granted(self) -> bool:
        return self._ceiling() >= self._start


class AllGrants:
    """A slot is kept only while every grant keeps it."""

    def __init__(self, *grants: ControllerGrant | LimitsGrant) -> None:
        self._grants = grants

    def start(self) -> None:
        for grant in self._grants:
            grant.start()

    def granted(self) -> bool:
        return all(grant.granted() for grant in self._grants)


class LiveRate:
    """The calls-per-second limit as it stands now: none (every call goes at once), or the
    shared limiter spaced by the current rate. The limiter's item is the same whatever the rate,
    so a change applies from the next reservation on."""

    def __init__(
        self,
        live: LiveLimits,
        client: Any,  # a boto3 DynamoDB client
        table: str,
        function_name: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._live = live
        self._clock = clock
        self._interval = 1.0
        self._limiter = DynamoRateLimiter(client, table, function_name, lambda: self._interval, clock=clock)

    def reserve(self, max_wait: float) -> Grant | Denied:
        rate = self._live.now().calls_per_second
        if rate is None:
            now = self._clock()
            return Grant(at=now, wait=0.0, tat=now)
        self._interval = interval_for(rate)
        return self._limiter.reserve(max_wait)


KEYED_KEYS_LOOKED_AT_MAX = 32
"""Keys one pick reads before it gives up: past the keys at their cap (at most the global
concurrency of them) and a few whose items are all in flight or retrying."""
KEYED_LINE_PAGE = 25
KEYED_LINE_PAGES_MAX = 4
KEYED_REPAIR_AFTER_S = 60.0
"""A ledger whose key has no waiting item is reset only when its last arrival is this old: the
by_key index is eventually consistent, and a new item may not show in it yet."""
KEYED_LEDGER_TTL_S = 30 * 86_400
KEYED_LEASE_MAX_S = 900.0
"""Lambda's longest timeout: the lease of a claim whose caller does not say when it must end."""
_LEDGER_SAVE_TRIES = 3
KEYED_CLAIM_SPREAD = 4
"""How many of a key's first free items a claim chooses among (see `_try_key`)."""
KEYED_BACKLOG_KEYS_MAX = 2_000
"""Keys one backlog report reads per priority (the ready index, a few hundred bytes each): past
it the report says so and names the largest of those read."""
KEYED_PICK_TRIES = 3
"""Picks that lost every claim to other workers are tried again this many times in all."""


@dataclass(frozen=True)
class Claimed:
    """A keyed item a worker took: its call may start now, under `lease_until`."""

    priority: str
    key: str
    item_id: str
    token: str
    body: str
    attempts: int
    lease_until: float
    ordered: bool = False
    """Its key's items reach the API one at a time, in order."""
    order_broken: str | None = None
    """Why it must fail without a call: an item ahead of it in its ordered key failed for good
    (`break_order`); None: work it."""


@dataclass(frozen=True)
class KeySpot:
    waiting: bool
    """The item's wait record is there and no worker holds it."""
    pending: int
    """Its key's unfinished items of its priority."""
    busy: int
    """Its key's items at the API now."""


class KeyedItems:
    """Waiting keyed items and their keys' ledgers in the keyed table (docs/keys.md).

    A waiting item is one record (`wait#priority#key#seq`), the state machine's wait step writes
    it with its task token; a key's ledger is one record per priority (`keys#priority#key`,
    `fair.Ledger` plus `pending`, the key's unfinished items, and a version). `pending` decides
    whether the ledger is in the `ready` index; it counts items in flight too, so a worker that
    dies mid-call leaves its item findable once the lease runs out.
    """

    def __init__(
        self,
        client: Any,  # a boto3 DynamoDB client
        table: str,
        rules: Callable[[str, str], KeyRule],
        lease_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._table = table
        self._rules = rules
        self._lease_s = lease_s
        self._clock = clock
        self._random = random.Random()  # noqa: S311 - spreading claims, not secrets
        self._turn_lock = threading.Lock()
        self._next_turn_at = 0.0
        """When this sandbox next asks for the backlog report's turn."""

    def _id(self, value: str) -> dict[str, Any]:
        return {IDEMPOTENCY_KEY_ATTRIBUTE: {"S": value}}

    def enqueue(
        self, priority: str, key: str, seq: str, *, token: str, item: Any, index: int, execution: str
    ) -> None:
        """What the state machine's keyed wait step writes (transactWriteItems.waitForTaskToken);
        here for tests and tools: definition.py builds the same two writes."""
        now_iso = datetime.fromtimestamp(self._clock(), UTC).isoformat()
        self._client.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": self._id(f"{contract.KEYED_WAIT_PREFIX}{priority}#{key}#{seq}")
                        | {
                            "wkey": {"S": f"{priority}#{key}"},
                            "wseq": {"S": seq},
                            "token": {"S": token},
                            "item": {"S": json.dumps(item)},
                            "idx": {"N": str(index)},
                            "execution": {"S": execution},
                        },
                    }
                },
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": self._id(f"{contract.KEYED_LEDGER_PREFIX}{priority}#{key}"),
                        "UpdateExpression": contract.KEYED_ARRIVAL_UPDATE,
                        "ExpressionAttributeValues": {
                            ":one": {"N": "1"},
                            ":p": {"S": priority},
                            ":k": {"S": key},
                            ":zero": {"N": "0"},
                            ":none": {"M": {}},
                            ":now": {"S": now_iso},
                        },
                    }
                },
            ]
        )

    def pick(self, priority: str, lease_s: float | None = None) -> Claimed | None:
        """Claim the next item of `priority` by the fair-share rule, or None when no key with
        waiting items has room. Three requests when the first key can go (the ready index,
        the key's line, one transaction), never a scan. The lease (default: the store's)
        should end when the caller's invocation must: no call outlives it."""
        for _ in range(KEYED_PICK_TRIES):
            claimed, contended = self._pick_once(priority, lease_s)
            if claimed is not None or not contended:
                return claimed
        return None

    def _pick_once(self, priority: str, lease_s: float | None) -> tuple[Claimed | None, bool]:
        """The claimed item, or None and whether a claim was lost to another worker."""
        now = self._clock()
        lease_until = now + (self._lease_s if lease_s is None else lease_s)
        pages = self._client.get_paginator("query").paginate(
            TableName=self._table,
            IndexName=contract.KEYED_READY_INDEX,
            KeyConditionExpression="kpri = :p",
            ExpressionAttributeValues={":p": {"S": priority}},
            # Most picks take the first key: a small page, more only past keys at their cap.
            PaginationConfig={"PageSize": 4},
        )
        clock = 0.0
        looked = 0
        contended = False
        for page in pages:
            for record in page.get("Items", []):
                if record[IDEMPOTENCY_KEY_ATTRIBUTE]["S"] == self._clock_id(priority):
                    clock = float(record.get("vclock", {"N": "0"})["N"])  # sorts first: kfin -1
                    continue
                looked += 1
                if looked > KEYED_KEYS_LOOKED_AT_MAX:
                    return None, contended
                claimed, lost = self._try_key(priority, record, clock, now, lease_until)
                if claimed is not None:
                    return claimed, False
                contended = contended or lost
        return None, contended

    def waiting(
        self, priority: str, limit: int = KEYED_BACKLOG_KEYS_MAX
    ) -> tuple[list[tuple[str, int]], bool]:
        """Items waiting by key (unfinished, less those at the API under a live lease) for the
        keys of `priority` with unfinished items, and whether that is all of them: at most
        `limit` keys are read (the ready index, only the fields needed)."""
        now = self._clock()
        pages = self._client.get_paginator("query").paginate(
            TableName=self._table,
            IndexName=contract.KEYED_READY_INDEX,
            KeyConditionExpression="kpri = :p AND kfin >= :zero",  # past the clock (kfin -1)
            ExpressionAttributeValues={":p": {"S": priority}, ":zero": {"N": "0"}},
            ProjectionExpression="kkey, pending, leases",
        )
        counts: list[tuple[str, int]] = []
        for page in pages:
            for record in page.get("Items", []):
                if len(counts) >= limit:
                    return counts, False
                live = sum(1 for v in record.get("leases", {}).get("M", {}).values() if float(v["N"]) > now)
                pending = int(record.get("pending", {"N": "0"})["N"])
                counts.append((record["kkey"]["S"], max(0, pending - live)))
        return counts, True

    def report_turn(self, interval_s: float) -> bool:
        """Whether this invocation reports the keys' backlog now: one report per worker function
        per `interval_s`, by whichever invocation updates the turn item first; a sandbox asks
        at most once per interval, so the turn costs one conditional write per sandbox per
        interval."""
        now = self._clock()
        with self._turn_lock:
            if now < self._next_turn_at:
                return False
            self._next_turn_at = now + interval_s
        try:
            self._client.update_item(
                TableName=self._table,
                Key=self._id(contract.KEYED_REPORT_TURN_ID),
                UpdateExpression="SET turn_until = :next",
                ConditionExpression="attribute_not_exists(turn_until) OR turn_until <= :now",
                ExpressionAttributeValues={
                    ":next": {"N": f"{now + interval_s:.3f}"},
                    ":now": {"N": f"{now:.3f}"},
                },
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def holds_anything(self, priority: str) -> bool:
        """Whether any key of `priority` has an unfinished item (the orphan-ticket check: a
        ticket is never dropped while a keyed item could still need it)."""
        page = self._client.query(
            TableName=self._table,
            IndexName=contract.KEYED_READY_INDEX,
            KeyConditionExpression="kpri = :p AND kfin >= :zero",  # past the clock (kfin -1)
            ExpressionAttributeValues={":p": {"S": priority}, ":zero": {"N": "0"}},
            Limit=1,
        )
        return bool(page.get("Items"))

    def spot(self, priority: str, key: str, seq: str, now: float) -> KeySpot:
        """Where one keyed item stands (`sluice explain`): two GetItems by key, the item's wait
        record and its key's ledger."""
        wait = self._client.get_item(
            TableName=self._table,
            Key=self._id(f"{contract.KEYED_WAIT_PREFIX}{priority}#{key}#{seq}"),
            ConsistentRead=True,
        ).get("Item")
        ledger = self._client.get_item(
            TableName=self._table, Key=self._id(self._ledger_id(priority, key)), ConsistentRead=True
        ).get("Item", {})
        return KeySpot(
            waiting=wait is not None and _free(wait, now),
            pending=int(ledger.get("pending", {"N": "0"})["N"]),
            busy=len(_ledger_of(ledger, now)[0].live(now)),
        )

    def _clock_id(self, priority: str) -> str:
        return contract.KEYED_LEDGER_PREFIX + priority

    def _ledger_id(self, priority: str, key: str) -> str:
        return f"{contract.KEYED_LEDGER_PREFIX}{priority}#{key}"

    def _try_key(
        self, priority: str, record: dict[str, Any], clock: float, now: float, lease_until: float
    ) -> tuple[Claimed | None, bool]:
        """The key's next item claimed, or None and whether a claim was lost to another worker."""
        key = record["kkey"]["S"]
        rule = self._rules(key, priority)
        ledger, version, expired = _ledger_of(record, now)
        has_finish = "vfinish" in record
        marks = record  # the ledger as last read: its order-break marks
        if not ledger.has_room(rule, now):
            return None, False
        line = self._line(priority, key, now, head_only=rule.ordered, in_flight=len(ledger.live(now)))
        if not line:
            self._leave_if_done(priority, key, record, now)
            return None, False
        if rule.ordered and not _free(line[0], now):
            return None, False  # the head holds its key's line: in flight or waiting to retry
        free = [item for item in line if _free(item, now)]
        if not rule.ordered:
            # Workers that pick the same key at once would all reach for its oldest free item and
            # all but one lose the claim: each starts at one of the first few, so an unordered
            # key's items go roughly, not strictly, in submission order.
            spread = self._random.randrange(min(len(free), KEYED_CLAIM_SPREAD)) if free else 0
            free = free[spread:] + free[:spread]
        lost = False
        for item in free:
            for attempt in range(_LEDGER_SAVE_TRIES):
                booked, start = fair.dispatch(ledger, rule, clock, now, lease_until)
                outcome = self._claim(
                    priority,
                    key,
                    item,
                    expired,
                    booked,
                    version,
                    start,
                    now,
                    rule=rule,
                    clock=clock,
                    # Its finish is past the clock: it starts at its finish, whatever it is now.
                    busy=has_finish and ledger.finish >= clock,
                )
                if outcome == "claimed":
                    claimed = Claimed(
                        priority=priority,
                        key=key,
                        item_id=item[IDEMPOTENCY_KEY_ATTRIBUTE]["S"],
                        token=item["token"]["S"],
                        body=_message_body(item, priority),
                        attempts=int(item.get("attempts", {"N": "0"})["N"]) + 1,
                        lease_until=lease_until,
                        ordered=rule.ordered,
                        order_broken=_order_broken(marks, item["wseq"]["S"]) if rule.ordered else None,
                    )
                    return claimed, False
                if outcome == "item taken" or attempt + 1 == _LEDGER_SAVE_TRIES:
                    lost = True
                    break
                # The ledger moved (another worker's claim or release): read it again.
                fresh = self._client.get_item(
                    TableName=self._table, Key=self._id(self._ledger_id(priority, key)), ConsistentRead=True
                ).get("Item", {})
                ledger, version, expired = _ledger_of(fresh, now)
                has_finish = "vfinish" in fresh
                marks = fresh
                if not ledger.has_room(rule, now):
                    return None, lost
        return None, lost

    def _claim(  # noqa: PLR0917 - one transaction's parts
        self,
        priority: str,
        key: str,
        item: dict[str, Any],
        expired: list[str],
        booked: Ledger,
        version: int,
        start: float,
        now: float,
        *,
        rule: KeyRule,
        clock: float,
        busy: bool,
    ) -> str:
        """One transaction: the item leased, the key's ledger booked (if nobody changed it since
        it was read), and the priority's clock moved to the start. 'claimed', 'item taken' or
        'ledger moved'."""
        lease_until = booked.leases[-1]
        names = {f"#x{n}": name for n, name in enumerate(expired)}
        removal = f" REMOVE {', '.join(f'leases.{name}' for name in names)}" if names else ""
        common = {":l": {"N": repr(lease_until)}, ":exp": {"N": str(int(now + KEYED_LEDGER_TTL_S))}}
        booking: dict[str, Any]
        if rule.limit is None and busy:
            # A busy key with no cap of its own: booked by adding to its finish, so workers that
            # pick it at once do not take turns at its version (the cap needs no count here).
            booking = {
                "UpdateExpression": "SET leases.#new = :l, #exp = :exp ADD vfinish :inc, kfin :inc, kver :one"
                + removal,
                "ConditionExpression": "vfinish >= :clock",
                "ExpressionAttributeValues": common
                | {":inc": {"N": repr(1 / rule.weight)}, ":one": {"N": "1"}, ":clock": {"N": repr(clock)}},
            }
        else:
            booking = {
                "UpdateExpression": "SET vfinish = :f, kfin = :f, leases.#new = :l, kver = :next, #exp = :exp"
                + removal,
                "ConditionExpression": "kver = :read" if version else "attribute_not_exists(kver)",
                "ExpressionAttributeValues": common
                | {":f": {"N": repr(booked.finish)}, ":next": {"N": str(version + 1)}}
                | ({":read": {"N": str(version)}} if version else {}),
            }
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": {IDEMPOTENCY_KEY_ATTRIBUTE: item[IDEMPOTENCY_KEY_ATTRIBUTE]},
                            "UpdateExpression": "SET lease_until = :l ADD attempts :one",
                            "ConditionExpression": f"attribute_exists({IDEMPOTENCY_KEY_ATTRIBUTE}) "
                            "AND (attribute_not_exists(lease_until) OR lease_until <= :now) "
                            "AND (attribute_not_exists(ready_at) OR ready_at <= :now)",
                            "ExpressionAttributeValues": {
                                ":l": {"N": repr(lease_until)},
                                ":now": {"N": repr(now)},
                                ":one": {"N": "1"},
                            },
                        }
                    },
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": self._id(self._ledger_id(priority, key)),
                            "ExpressionAttributeNames": {
                                "#new": _lease_name(item[IDEMPOTENCY_KEY_ATTRIBUTE]["S"]),
                                "#exp": IDEMPOTENCY_EXPIRY_ATTRIBUTE,
                            }
                            | names,
                            **booking,
                        }
                    },
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": self._id(self._clock_id(priority)),
                            # In the ready index ahead of every key (kfin -1), so the pick's
                            # query reads it for free. Not conditional: a race between two
                            # workers can set it back by a step, which gives a key that becomes
                            # active then at most that much head start.
                            "UpdateExpression": "SET vclock = :s, kpri = :p, kfin = :first, kkey = :none",
                            "ExpressionAttributeValues": {
                                ":s": {"N": repr(start)},
                                ":p": {"S": priority},
                                ":first": {"N": "-1"},
                                ":none": {"S": ""},
                            },
                        }
                    },
                ]
            )
        except self._client.exceptions.TransactionCanceledException as exc:
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            return "item taken" if reasons and reasons[0] == "ConditionalCheckFailed" else "ledger moved"
        return "claimed"

    def break_order(self, claimed: Claimed, error: str) -> None:
        """Mark the failure of `claimed`, an ordered key's item, on its key's ledger: the key's
        items behind it from batches started before now will fail without a call
        (`Claimed.order_broken`), so none overtakes it. Written before its lease is released,
        so the next item of the key is claimed with the mark in place."""
        try:
            body = json.loads(claimed.body)
        except ValueError:
            body = {}
        seq = claimed.item_id.removeprefix(f"{contract.KEYED_WAIT_PREFIX}{claimed.priority}#{claimed.key}#")
        cause = (
            f"item {body.get(contract.FIELD_INDEX)} of {body.get(contract.FIELD_EXECUTION)}, ahead of "
            f"this one in ordered key {claimed.key!r}, failed ({error}); the key's items of batches "
            "started before that failure fail too rather than overtake it: redrive them in order"
        )
        self._client.update_item(
            TableName=self._table,
            Key=self._id(self._ledger_id(claimed.priority, claimed.key)),
            UpdateExpression="SET broken_after = :after, broken_before = :before, broken_cause = :cause",
            ExpressionAttributeValues={
                ":after": {"S": seq},
                ":before": {"S": sfn_time(self._clock())},
                ":cause": {"S": cause},
            },
        )

    def done(self, claimed: Claimed) -> None:
        """The item left its key's line (worked, or failed for good): its record goes and its
        key's count and lease with it, in one transaction."""
        # Already gone is a duplicate finish (the lease ran out and another worker finished it):
        # then nothing changes, the count included.
        with contextlib.suppress(self._client.exceptions.TransactionCanceledException):
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "Delete": {
                            "TableName": self._table,
                            "Key": self._id(claimed.item_id),
                            "ConditionExpression": f"attribute_exists({IDEMPOTENCY_KEY_ATTRIBUTE})",
                        }
                    },
                    self._release_update(claimed, pending=-1),
                ]
            )

    def retry(self, claimed: Claimed, delay_s: float) -> None:
        """The item goes back to its place in its key's line, free again after `delay_s`."""
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": self._id(claimed.item_id),
                            "UpdateExpression": "SET ready_at = :at REMOVE lease_until",
                            # Only with our lease: if it ran out and another worker holds the
                            # item now, that worker's outcome decides.
                            "ConditionExpression": "lease_until = :mine",
                            "ExpressionAttributeValues": {
                                ":at": {"N": repr(self._clock() + delay_s)},
                                ":mine": {"N": repr(claimed.lease_until)},
                            },
                        }
                    },
                    self._release_update(claimed, pending=0),
                ]
            )
        except self._client.exceptions.TransactionCanceledException:
            self._client.update_item(**self._release_update(claimed, pending=0)["Update"])

    def _release_update(self, claimed: Claimed, pending: int) -> dict[str, Any]:
        # Bumps the version: a worker booking the ledger from an older read must read it again,
        # or its write would put this lease back.
        return {
            "Update": {
                "TableName": self._table,
                "Key": self._id(self._ledger_id(claimed.priority, claimed.key)),
                "UpdateExpression": "REMOVE leases.#lease ADD kver :one, pending :d",
                "ExpressionAttributeNames": {"#lease": _lease_name(claimed.item_id)},
                "ExpressionAttributeValues": {":one": {"N": "1"}, ":d": {"N": str(pending)}},
            }
        }

    def _leave_if_done(self, priority: str, key: str, record: dict[str, Any], now: float) -> None:
        """A key in the ready index with no waiting item leaves it: at once when its count says
        every item finished, else (its count went up twice for one item: a retried write) once
        its last arrival is old enough for the by_key index to show any item it has."""
        pending = int(record.get("pending", {"N": "0"})["N"])
        if pending > 0:
            arrived = record.get("arrived", {}).get("S")
            if arrived is None or now - datetime.fromisoformat(arrived).timestamp() < KEYED_REPAIR_AFTER_S:
                return
        # Conditional: an arrival since the read puts the key back.
        with contextlib.suppress(self._client.exceptions.ConditionalCheckFailedException):
            self._client.update_item(
                TableName=self._table,
                Key=self._id(self._ledger_id(priority, key)),
                UpdateExpression="SET pending = :zero REMOVE kpri, kfin",
                ConditionExpression="pending = :read",
                ExpressionAttributeValues={":zero": {"N": "0"}, ":read": {"N": str(pending)}},
            )

    def _line(
        self, priority: str, key: str, now: float, *, head_only: bool, in_flight: int
    ) -> list[dict[str, Any]]:
        """The key's waiting items in submission order, up to the first free one: only the head
        for an ordered key. The first page is just past the key's calls in flight (usually the
        only records ahead of a free one); a later page is bigger, for items waiting to retry."""
        items: list[dict[str, Any]] = []
        start: dict[str, Any] | None = None
        for number in range(KEYED_LINE_PAGES_MAX):
            size = (
                1 if head_only else (in_flight + KEYED_CLAIM_SPREAD + 1 if number == 0 else KEYED_LINE_PAGE)
            )
            page = self._client.query(
                TableName=self._table,
                IndexName=contract.KEYED_BY_KEY_INDEX,
                KeyConditionExpression="wkey = :k",
                ExpressionAttributeValues={":k": {"S": f"{priority}#{key}"}},
                Limit=size,
                **({"ExclusiveStartKey": start} if start else {}),
            )
            items.extend(page.get("Items", []))
            start = page.get("LastEvaluatedKey")
            if head_only or start is None or any(_free(i, now) for i in items):
                break
        return items[:1] if head_only else items


def sfn_time(epoch_s: float) -> str:
    """A time as Step Functions writes `$$.Execution.StartTime` (ISO 8601, milliseconds, Z), so
    it compares as text with the start times that begin every keyed item's sequence."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _order_broken(ledger: dict[str, Any], seq: str) -> str | None:
    """The cause to fail the item `seq` with, when it is behind its ordered key's failed item and
    from a batch started before that failure."""
    after, before = ledger.get("broken_after", {}).get("S"), ledger.get("broken_before", {}).get("S")
    if after is None or before is None or not after < seq < before:
        return None
    return str(ledger["broken_cause"]["S"])


def _lease_name(item_id: str) -> str:
    """A lease's name in its ledger's map: from the item it is for (one lease per item at a
    time), in characters a map key may have."""
    return "l" + hashlib.sha256(item_id.encode()).hexdigest()[:20]


def _ledger_of(record: dict[str, Any], now: float) -> tuple[Ledger, int, list[str]]:
    """The ledger, its version, and the names of its leases that ran out (to drop)."""
    leases = {name: float(v["N"]) for name, v in record.get("leases", {}).get("M", {}).items()}
    return (
        Ledger(finish=float(record.get("vfinish", {"N": "0"})["N"]), leases=tuple(sorted(leases.values()))),
        int(record.get("kver", {"N": "0"})["N"]),
        sorted(name for name, expiry in leases.items() if expiry <= now),
    )


def _message_body(record: dict[str, Any], priority: str) -> str:
    """The record as the body a queued payload has, so the worker parses both alike; a record
    missing a field makes a body the parser refuses as malformed, naming what is missing."""
    body: dict[str, Any] = {contract.FIELD_PRIORITY: priority}
    for name, attribute in (
        (contract.FIELD_TOKEN, "token"),
        (contract.FIELD_EXECUTION, "execution"),
    ):
        if attribute in record:
            body[name] = record[attribute]["S"]
    if "idx" in record:
        body[contract.FIELD_INDEX] = int(record["idx"]["N"])
    if "item" in record:
        try:
            body[contract.FIELD_ITEM] = json.loads(record["item"]["S"])
        except ValueError:
            return str(record["item"]["S"])  # not JSON: the parser says so
    return json.dumps(body)


def _free(item: dict[str, Any], now: float) -> bool:
    """Not leased (or its lease ran out) and not waiting out a retry's delay."""
    lease = item.get("lease_until")
    ready_at = item.get("ready_at")
    return (lease is None or float(lease["N"]) <= now) and (ready_at is None or float(ready_at["N"]) <= now)
