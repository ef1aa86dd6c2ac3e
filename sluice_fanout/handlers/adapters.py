"""Thin boto3 adapters. Each takes its client, so tests hand in one pointed at moto."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from sluice_fanout.handlers.contract import ATTR_DEAD_LETTER_REASON, SFN_MAX_CAUSE_CHARS, SFN_MAX_ERROR_CHARS

if TYPE_CHECKING:
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

    def receive_one(self, queue_url: str) -> dict[str, Any] | None:
        """Take the next visible message, if any, without waiting (ticket dispatch pulls)."""
        messages = self._client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=0,
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
