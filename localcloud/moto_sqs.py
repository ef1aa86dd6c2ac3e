"""moto's SQS made safe under concurrency and O(1) per message, without changing what SQS does."""

from __future__ import annotations

import hashlib
import json
import string
from contextlib import ExitStack, contextmanager
from copy import deepcopy
from typing import TYPE_CHECKING, Any
from unittest import mock

from moto.core.errors import get_error_model
from moto.core.exceptions import ServiceException
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.core.utils import camelcase_to_underscores, get_service_model, unix_time
from moto.moto_api._internal import mock_random as random
from moto.settings import sqs_enforce_strict_queue_purge_behaviour
from moto.sqs import models
from moto.sqs.constants import DEFAULT_RECEIVED_MESSAGES, MAXIMUM_VISIBILITY_TIMEOUT
from moto.sqs.exceptions import (
    BatchEntryIdsNotDistinct,
    EmptyBatchRequest,
    InvalidAttributeName,
    InvalidParameterValue,
    MaxVisibilityTimeout,
    MissingParameter,
    PurgeQueueInProgress,
    ReceiptHandleIsInvalid,
)
from moto.sqs.models import (
    DEDUPLICATION_TIME_IN_SECONDS,
    MAXIMUM_MESSAGE_DELAY,
    Message,
    Queue,
    SQSBackend,
    _filter_message_attributes,
    sqs_backends,
)
from moto.sqs.utils import validate_message_attributes

from localcloud.moto_version import MOTO_VERSION, UnsupportedMotoError, require_moto

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["MOTO_VERSION", "DirectSqs", "UnsupportedMotoError", "check_moto_version", "safe_sqs_queues"]

_INDEX = "_sluice_receipt_index"
"""Queue attribute holding (generation, receipt handle -> message)."""


# A new token per install: an index built while patches were off (or by an earlier install) is
# rebuilt from the queue's messages instead of trusted.
_state: dict[str, object] = {"generation": object()}


def _index(queue: Queue) -> dict[str, Message]:
    """Receipt handle (current and earlier ones) -> message, for one queue; hold its lock.

    DeleteMessage and ChangeMessageVisibility looked for the receipt handle in every message.
    """
    generation, index = queue.__dict__.get(_INDEX, (None, None))
    if generation is not _state["generation"] or index is None:
        index = {h: m for m in queue._messages for h in m.all_receipt_handles if h is not None}
        queue.__dict__[_INDEX] = (_state["generation"], index)
    return index  # type: ignore[no-any-return]  # read back from the queue's __dict__


def _remember(queue: Queue, message: Message) -> None:
    index = _index(queue)
    for handle in message.all_receipt_handles:
        if handle is not None:
            index[handle] = message


def _forget(queue: Queue, message: Message) -> None:
    """Drop one message from the queue and the index; hold the queue's lock."""
    index = _index(queue)
    for handle in message.all_receipt_handles:
        if handle is not None:
            index.pop(handle, None)
    # Copy, then swap: readers that do not take the lock (message counts) see a whole list.
    # The copy stays O(depth), but is C code, no Python per message.
    remaining = queue._messages.copy()
    remaining.remove(message)
    queue._messages = remaining


def _ready(queue: Queue) -> Iterator[Message]:
    """Visible, undelayed messages in queue order, one at a time (moto built the whole list)."""
    now = models.unix_time_millis()  # type: ignore[attr-defined]  # moto's import; tests count it there
    for message in queue._messages:
        if now > message.visible_at and not now < message.delayed_until:
            yield message


def _setting(queue: Queue, attribute: str) -> Any:
    """A queue setting moto stores with setattr (from the attribute names), unseen by mypy."""
    return getattr(queue, attribute)


def _attribute(queue: Queue, name: str) -> tuple[bool, Any]:
    """(present, value) of one entry of `Queue.attributes`, computed alone, as moto computes it.

    `Queue.attributes` computes every attribute, the message counts included (a walk of every
    message, two clock reads each).
    """
    if name in Queue.FIFO_ATTRIBUTES and not queue.fifo_queue:
        return False, None
    if name in Queue.KMS_ATTRIBUTES and not _setting(queue, "kms_master_key_id"):
        return False, None
    if name == "RedrivePolicy" and queue.redrive_policy:
        return True, json.dumps(queue.redrive_policy)
    value = getattr(queue, camelcase_to_underscores(name))
    return True, str(value).lower() if isinstance(value, bool) else value


def _content_based_deduplication(queue: Queue) -> bool:
    return bool(_attribute(queue, "ContentBasedDeduplication")[1] == "true")


# --- Queue ------------------------------------------------------------------------------------


def _add_message(self: Queue, message: Message) -> None:
    """moto's, appending under the lock and indexing the message's receipt handles.

    Deduplication on FIFO queues stays O(depth).
    """
    if self.fifo_queue and (_content_based_deduplication(self) or message.deduplication_id):
        for m in self._messages:
            if m.deduplication_id == message.deduplication_id:
                diff = message.sent_timestamp - m.sent_timestamp  # type: ignore[operator]
                if diff / 1000 < DEDUPLICATION_TIME_IN_SECONDS:
                    return

    with self._messages_lock:
        self._messages.append(message)
        _remember(self, message)  # a dead-lettered message keeps its receipt handles
        self._messages_lock.notify_all()

    for arn, esm in self.lambda_event_source_mappings.items():
        if not esm.enabled:
            continue
        backend = models.sqs_backends[self.account_id][self.region]
        messages = backend.receive_message(
            self.name,
            esm.batch_size,
            _setting(self, "receive_message_wait_time_seconds"),
            _setting(self, "visibility_timeout"),
        )
        from moto.awslambda.utils import get_backend  # noqa: PLC0415 - as moto does: import cycle

        result = get_backend(self.account_id, self.region).send_sqs_batch(arn, messages, self.queue_arn)
        for m in messages:
            if result:
                backend.delete_message(self.name, m.receipt_handle)  # type: ignore[arg-type]  # received
            else:
                backend.change_message_visibility(self.name, m.receipt_handle, visibility_timeout=0)  # type: ignore[arg-type]  # received


def _delete_message(self: Queue, receipt_handle: str) -> None:
    """moto's, under the queue's lock, finding the message by the receipt handle index.

    moto rebuilt the message list without the queue's lock, so a message sent meanwhile was
    dropped from the new list: lost, and the child waiting for it waited for ever.
    """
    with self._messages_lock:
        if receipt_handle in self.deleted_messages:
            return  # already deleted: SQS accepts deleting again
        message = _index(self).get(receipt_handle)
        if message is None:
            raise ReceiptHandleIsInvalid
        self.pending_messages.discard(message)
        self.deleted_messages.update(message.all_receipt_handles)  # type: ignore[arg-type]
        _forget(self, message)


def _wait_for_messages(self: Queue, timeout: int) -> None:
    with self._messages_lock:
        self._messages_lock.wait_for(lambda: next(_ready(self), None) is not None, timeout=timeout)


# --- SQSBackend -------------------------------------------------------------------------------


def _get_queue_attributes(self: SQSBackend, queue_name: str, attribute_names: list[str]) -> dict[str, Any]:
    """moto's, reading only the attributes named.

    moto read them through `Queue.attributes`, which computed the whole set three times per
    attribute named; ReceiveMessage reads one per message it looks at (its retention check goes
    through GetQueueAttributes). Counting messages stays O(depth): moto derives the counts from
    each message's times.
    """
    queue = self.get_queue(queue_name)
    if not attribute_names:
        return {}
    valid_names = ["All", *queue.BASE_ATTRIBUTES, *queue.FIFO_ATTRIBUTES, *queue.KMS_ATTRIBUTES]
    invalid_name = next((name for name in attribute_names if name not in valid_names), None)
    if invalid_name or invalid_name == "":
        raise InvalidAttributeName(invalid_name)
    if "All" in attribute_names:
        return queue.attributes
    attributes = {}
    for name in attribute_names:
        present, value = _attribute(queue, name)
        if present and value is not None:
            attributes[name] = value
    return attributes


def _validate_message(  # noqa: PLR0917 - moto's signature, called positionally by moto
    self: SQSBackend,  # noqa: ARG001 - a method of SQSBackend
    queue: Queue,
    message_body: str,
    delay_seconds: int,
    deduplication_id: str | None = None,
    group_id: str | None = None,
    validate_group_id: bool = True,  # noqa: ARG001 - moto's signature; moto ignores it too
) -> None:
    if queue.fifo_queue:
        content_based = _attribute(queue, "ContentBasedDeduplication")[1]
        if content_based == "false" and not group_id:
            raise MissingParameter("MessageGroupId")
        if content_based == "false" and group_id and not deduplication_id:
            raise InvalidParameterValue(
                "The queue should either have ContentBasedDeduplication enabled or "
                "MessageDeduplicationId provided explicitly"
            )
        if delay_seconds > 0:
            raise InvalidParameterValue(
                f"Value {delay_seconds} for parameter DelaySeconds is invalid. Reason: "
                "The request include parameter that is not valid for this queue type."
            )
    if len(message_body) > _setting(queue, "maximum_message_size"):
        raise InvalidParameterValue(
            "One or more parameters are invalid. Reason: Message must be shorter than "
            f"{_setting(queue, 'maximum_message_size')} bytes."
        )
    if group_id is None and queue.fifo_queue:
        raise MissingParameter("MessageGroupId")


def _send_message(  # noqa: PLR0917 - moto's signature, called positionally by moto
    self: SQSBackend,
    queue_name: str,
    message_body: str,
    message_attributes: dict[str, Any] | None = None,
    delay_seconds: int | None = None,
    deduplication_id: str | None = None,
    group_id: str | None = None,
    system_attributes: dict[str, Any] | None = None,
    validate_group_id: bool = True,
) -> Message:
    """moto's; SendMessage read one attribute through `Queue.attributes`, now that one alone."""
    queue = self.get_queue(queue_name)
    self._validate_message(
        queue,
        message_body=message_body,
        delay_seconds=int(delay_seconds or 0),
        deduplication_id=deduplication_id,
        group_id=group_id,
        validate_group_id=validate_group_id,
    )
    delay_seconds = int(delay_seconds) if delay_seconds is not None else _setting(queue, "delay_seconds")

    message = Message(str(random.uuid4()), message_body, system_attributes)
    if _content_based_deduplication(queue):
        message.deduplication_id = hashlib.sha256(message_body.encode("utf-8")).hexdigest()
    if deduplication_id is not None:
        message.deduplication_id = deduplication_id
        message.sequence_number = "".join(random.choice(string.digits) for _ in range(20))
    if group_id is not None:
        message.group_id = group_id
    if message_attributes:
        message.message_attributes = message_attributes
    if delay_seconds > MAXIMUM_MESSAGE_DELAY:
        raise InvalidParameterValue(
            f"Value {delay_seconds} for parameter DelaySeconds is invalid. "
            "Reason: DelaySeconds must be >= 0 and <= 900."
        )
    message.mark_sent(delay_seconds=delay_seconds)
    queue.add_message(message)
    return message


def _receive_message(  # noqa: PLR0912, PLR0917 - moto's loop kept line for line; moto's signature
    self: SQSBackend,
    queue_name: str,
    count: int,
    wait_seconds_timeout: int,
    visibility_timeout: int,
    message_attribute_names: list[str] | None = None,
) -> list[Message]:
    """moto's, under the queue's lock, looking at messages in queue order only until it has enough.

    moto walked the pending-message set while other requests added to it and removed from it
    ("Set changed size during iteration"), and moved messages to the dead-letter queue with an
    unlocked `list.remove` that a concurrent delete could make fail. It and long polls listed
    every visible message before taking the first few. Skipping in-flight or delayed messages that
    sit ahead of visible ones stays O(depth) (no clock read each).
    """
    if message_attribute_names is None:
        message_attribute_names = []
    queue = self.get_queue(queue_name)
    result: list[Message] = []
    previous_result_count = 0
    polling_end = unix_time() + wait_seconds_timeout
    with queue._messages_lock:
        currently_pending_groups = deepcopy(queue.pending_message_groups)

    while True:
        if result or (wait_seconds_timeout and unix_time() > polling_end):
            break
        messages_to_dlq: list[Message] = []
        with queue._messages_lock:
            for message in _ready(queue):
                if not message.visible:
                    continue
                if message in queue.pending_messages:
                    # Visible again while pending: its consumer's visibility timeout ran out.
                    queue.pending_messages.remove(message)
                    currently_pending_groups = deepcopy(queue.pending_message_groups)
                if message.group_id and queue.fifo_queue and message.group_id in currently_pending_groups:
                    continue
                if (
                    queue.dead_letter_queue is not None
                    and queue.redrive_policy
                    and message.approximate_receive_count >= queue.redrive_policy["maxReceiveCount"]
                ):
                    messages_to_dlq.append(message)
                    continue
                queue.pending_messages.add(message)
                message.mark_received(visibility_timeout=visibility_timeout)
                _remember(queue, message)  # the new receipt handle
                message_copy = deepcopy(message)
                _filter_message_attributes(message_copy, message_attribute_names)
                if not self.is_message_valid_based_on_retention_period(queue_name, message):
                    break
                result.append(message_copy)
                if len(result) >= count:
                    break
            for message in messages_to_dlq:
                _forget(queue, message)
        # Outside this queue's lock: the dead-letter queue takes its own (no lock-order cycle).
        for message in messages_to_dlq:
            queue.dead_letter_queue.add_message(message)  # type: ignore[union-attr]

        if previous_result_count == len(result):
            if wait_seconds_timeout == 0:
                break
            queue.wait_for_messages(1)
            continue
        previous_result_count = len(result)
    return result


def _change_message_visibility(
    self: SQSBackend, queue_name: str, receipt_handle: str, visibility_timeout: int
) -> None:
    queue = self.get_queue(queue_name)
    with queue._messages_lock:
        message = _index(queue).get(receipt_handle)
        if message is None:
            raise ReceiptHandleIsInvalid
        # moto's own check, kept: unix_time_millis through moto's import, where tests count it.
        now_ms = models.unix_time_millis()  # type: ignore[attr-defined]
        given_visibility_timeout = now_ms + int(visibility_timeout) * 1000
        if given_visibility_timeout - message.sent_timestamp > 43200 * 1000:  # type: ignore[operator]
            raise InvalidParameterValue(
                f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. Reason: Total "
                "VisibilityTimeout for the message is beyond the limit [43200 seconds]"
            )
        message.change_visibility(visibility_timeout)
        if message.visible and message in queue.pending_messages:
            queue.pending_messages.remove(message)


def _purge_queue(self: SQSBackend, queue_name: str) -> None:
    queue = self.get_queue(queue_name)
    now = unix_time()
    if (
        sqs_enforce_strict_queue_purge_behaviour()
        and queue.last_purged_at is not None
        and now - queue.last_purged_at < 60
    ):
        raise PurgeQueueInProgress(queue.name)
    with queue._messages_lock:
        queue.last_purged_at = now
        queue._messages = []
        queue._pending_messages = set()
        queue.__dict__.pop(_INDEX, None)


_PATCHES: tuple[tuple[type, str, Any], ...] = (
    # Appends under the lock and indexes the message's receipt handles (a DLQ move keeps them).
    (Queue, "add_message", _add_message),
    # moto rebuilt the list unlocked (a concurrent send vanished) and scanned it for the handle.
    (Queue, "delete_message", _delete_message),
    # moto's wait predicate listed every visible message on each wake-up; one is enough.
    (Queue, "wait_for_messages", _wait_for_messages),
    # moto computed all attributes (a walk of every message) three times per attribute named;
    # ReceiveMessage's retention check asks it once per message looked at.
    (SQSBackend, "get_queue_attributes", _get_queue_attributes),
    # moto read ContentBasedDeduplication through Queue.attributes: a walk per FIFO send.
    (SQSBackend, "_validate_message", _validate_message),
    # moto read ContentBasedDeduplication through Queue.attributes: a walk per send.
    (SQSBackend, "send_message", _send_message),
    # moto iterated the pending set unlocked (RuntimeError) and listed every visible message.
    (SQSBackend, "receive_message", _receive_message),
    # moto scanned every message for the receipt handle, unlocked.
    (SQSBackend, "change_message_visibility", _change_message_visibility),
    # moto swapped the message list unlocked, racing sends and deletes.
    (SQSBackend, "purge_queue", _purge_queue),
)


def check_moto_version(version: str | None = None) -> None:
    require_moto("moto_sqs", "compare each patch with the new moto's sqs/models.py", version)


@contextmanager
def safe_sqs_queues() -> Iterator[None]:
    """Every SQS queue change under the queue's lock; sends, receives and deletes O(1) in depth.

    moto's threaded server runs requests for one queue at once. The lock is the queue's own
    `_messages_lock`, an RLock-backed Condition that moto already uses for sends and long polls.
    Written against moto 5.2.5 (`moto/sqs/models.py`); any other version is refused, because each
    replacement is moto's own function with a few lines changed.
    """
    check_moto_version()
    _state["generation"] = object()
    with ExitStack() as patches:
        for owner, name, replacement in _PATCHES:
            patches.enter_context(mock.patch.object(owner, name, replacement))
        yield


# ---- this process's SQS calls, without the wire format ----------------------------------------

_RECEIVABLE_ATTRIBUTES = (
    "ApproximateFirstReceiveTimestamp",
    "ApproximateReceiveCount",
    "MessageDeduplicationId",
    "MessageGroupId",
    "SenderId",
    "SentTimestamp",
    "SequenceNumber",
    "AWSTraceHeader",
)


class DirectSqs:
    """An SQS client for this process whose hot calls go straight to moto's SQS backend, doing
    with the parameters what moto's `SQSResponse` handlers do (their checks, answers and
    errors). botocore serializing a request that moto parses back in the same process cost
    about a third of the emulator's time for Step Functions' sends, and about a fifth for the
    event source mappings' receives and deletes. Other calls go through `client`; `count` hears
    each direct call, as moto's `call_action` hears the rest."""

    def __init__(self, client: Any, region: str, count: Callable[[str], None]) -> None:
        self.wire = client
        """The client every other call goes through, as a request."""
        self._client = client
        self._region = region
        self._count = count

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _backend(self, queue_url: str) -> tuple[SQSBackend, str]:
        # A queue URL ends in /<account>/<name>; AWS also accepts the bare name.
        parts = str(queue_url).rstrip("/").split("/")
        account = parts[-2] if len(parts) > 1 and parts[-2].isdigit() else DEFAULT_ACCOUNT_ID
        return sqs_backends[account][self._region], parts[-1]

    def _call(self, operation: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        self._count(f"sqs:{operation}")
        try:
            return body()
        except ServiceException as error:
            # What botocore raises for moto's error response, so callers catch the same class.
            # moto's server names the error's shape (botocore picks the class by it) and sends
            # its query-compatible code; moto's own lookup, in moto's model, gives both here.
            shape = get_error_model(error, get_service_model("sqs"))
            error_response: Any = {
                "Error": {"Code": shape.error_code, "Message": error.message, "QueryErrorCode": shape.name}
            }
            raise self._client.exceptions.from_code(shape.name)(error_response, operation) from error

    def send_message(self, **params: Any) -> dict[str, Any]:
        def send() -> dict[str, Any]:
            backend, name = self._backend(params["QueueUrl"])
            attributes = params.get("MessageAttributes") or {}
            system_attributes = params.get("MessageSystemAttributes") or {}
            validate_message_attributes(attributes)
            validate_message_attributes(system_attributes)
            queue = backend.get_queue(name)
            message = backend.send_message(
                name,
                params["MessageBody"],
                message_attributes=attributes,
                delay_seconds=params.get("DelaySeconds"),
                deduplication_id=params.get("MessageDeduplicationId"),
                group_id=params.get("MessageGroupId"),
                system_attributes=system_attributes,
            )
            response = {"MD5OfMessageBody": message.body_md5, "MessageId": message.id}
            if message.message_attributes:
                response["MD5OfMessageAttributes"] = message.attribute_md5
            if queue.fifo_queue and message.sequence_number:
                response["SequenceNumber"] = message.sequence_number
            return response

        return self._call("SendMessage", send)

    def receive_message(self, **params: Any) -> dict[str, Any]:
        def receive() -> dict[str, Any]:
            backend, name = self._backend(params["QueueUrl"])
            queue = backend.get_queue(name)
            count = params.get("MaxNumberOfMessages", DEFAULT_RECEIVED_MESSAGES)
            if not 1 <= count <= 10:
                raise InvalidParameterValue(
                    f"Value {count} for parameter MaxNumberOfMessages is invalid. "
                    "Reason: must be between 1 and 10, if provided."
                )
            wait = params.get("WaitTimeSeconds")
            wait = int(queue.receive_message_wait_time_seconds if wait is None else wait)  # type: ignore[attr-defined]
            if not 0 <= wait <= 20:
                raise InvalidParameterValue(
                    f"Value {wait} for parameter WaitTimeSeconds is invalid. Reason: must be <= 20."
                )
            visibility = params.get("VisibilityTimeout")
            visibility = int(queue.visibility_timeout if visibility is None else visibility)  # type: ignore[attr-defined]
            if visibility > MAXIMUM_VISIBILITY_TIMEOUT:
                raise MaxVisibilityTimeout
            names = set(params.get("AttributeNames", [])) | set(params.get("MessageSystemAttributeNames", []))
            wanted = [a for a in _RECEIVABLE_ATTRIBUTES if "All" in names or a in names]
            messages = backend.receive_message(
                name, count, wait, visibility, params.get("MessageAttributeNames", [])
            )
            return {"Messages": [_received(m, wanted) for m in messages]} if messages else {}

        return self._call("ReceiveMessage", receive)

    def delete_message_batch(self, **params: Any) -> dict[str, Any]:
        def delete() -> dict[str, Any]:
            backend, name = self._backend(params["QueueUrl"])
            entries = params.get("Entries") or []
            if not entries:
                raise EmptyBatchRequest(action="Delete")
            seen: set[str] = set()
            for entry in entries:
                if entry["ReceiptHandle"] in seen:
                    raise BatchEntryIdsNotDistinct(entry["Id"])
                seen.add(entry["ReceiptHandle"])
            done, failed = backend.delete_message_batch(name, entries)
            return {"Successful": [{"Id": entry_id} for entry_id in done], "Failed": failed}

        return self._call("DeleteMessageBatch", delete)


def _received(message: Message, wanted: list[str]) -> dict[str, Any]:
    """A received message as ReceiveMessage answers it, with the system attributes `wanted`."""
    answer: dict[str, Any] = {
        "MessageId": message.id,
        "ReceiptHandle": message.receipt_handle,
        "MD5OfBody": message.body_md5,
        "Body": message.body,
    }
    if message.message_attributes:
        answer["MessageAttributes"] = message.message_attributes
        answer["MD5OfMessageAttributes"] = message.attribute_md5
    values = {
        "SenderId": message.sender_id,
        "SentTimestamp": str(message.sent_timestamp),
        "ApproximateReceiveCount": str(message.approximate_receive_count),
        "ApproximateFirstReceiveTimestamp": str(message.approximate_first_receive_timestamp),
        "MessageDeduplicationId": message.deduplication_id,
        "MessageGroupId": message.group_id,
        "SequenceNumber": message.sequence_number,
        "AWSTraceHeader": (message.system_attributes or {}).get("AWSTraceHeader", {}).get("StringValue"),
    }
    if wanted:
        answer["Attributes"] = {name: values[name] for name in wanted if values[name] is not None}
    return answer
