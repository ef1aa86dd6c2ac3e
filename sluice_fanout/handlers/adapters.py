"""Thin boto3 adapters. Each takes its client, so tests hand in one pointed at moto."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import ClientError

from sluice_fanout.handlers.contract import (
    ATTR_DEAD_LETTER_REASON,
    IDEMPOTENCY_EXPIRY_ATTRIBUTE,
    IDEMPOTENCY_KEY_ATTRIBUTE,
    RATE_RESERVATION_LEAD_S,
    SFN_MAX_CAUSE_CHARS,
    SFN_MAX_ERROR_CHARS,
)
from sluice_fanout.handlers.rate import Denied, Grant, RateLimiterContended, reserve

if TYPE_CHECKING:
    from collections.abc import Callable

    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_stepfunctions import SFNClient


class WarningLogger(Protocol):
    def warning(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...


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
        interval: float,
        *,
        clock: Callable[[], float] = time.time,
        pause: Callable[[float], None] = time.sleep,
        lead: float = RATE_RESERVATION_LEAD_S,
    ) -> None:
        self._client = client
        self._table = table
        self._key = {IDEMPOTENCY_KEY_ATTRIBUTE: {"S": RATE_KEY_PREFIX + function_name}}
        self._interval = interval
        self._clock = clock
        self._pause = pause
        self._lead = lead
        self._known: str | None = None
        """The stored TAT as DynamoDB returned it (a number's text), or None: no item."""

    def reserve(self, max_wait: float) -> Grant | Denied:
        for _ in range(RATE_MAX_TRIES):
            now = self._clock()
            known = None if self._known is None else float(self._known)
            decision = reserve(known, now, self._interval, max_wait, self._lead)
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
