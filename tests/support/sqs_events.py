"""Turn real ReceiveMessage results into the event an SQS event source mapping would send."""

from __future__ import annotations

from typing import Any

from localcloud.esm import to_record


def receive_event(sqs: Any, queue_url: str, queue_arn: str, max_messages: int = 10) -> dict[str, Any]:
    """Receive up to `max_messages` (no long poll) and shape them as Lambda's SQS event."""
    response = sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=max_messages,
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
        WaitTimeSeconds=0,
    )
    return {"Records": [to_record(m, queue_arn) for m in response.get("Messages", [])]}
