"""localcloud.moto_sqs: moto's SQS loses no message under concurrency, does O(1) work per message
whatever the queue depth, and otherwise behaves exactly as moto 5.2.5 does.

Most tests drive moto's SQS backend in this process (the code the server runs per request), with
hooks that hold one thread inside moto's unlocked critical sections so each race happens every
time. What this cannot prove: real SQS's distributed behaviour (duplicates, reordering).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import moto
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto.sqs import models
from moto.sqs.exceptions import InvalidParameterValue, PurgeQueueInProgress, ReceiptHandleIsInvalid
from moto.sqs.models import Message, Queue, SQSBackend, sqs_backends

from localcloud import moto_sqs
from localcloud.cloud import embedded_aws
from localcloud.moto_sqs import MOTO_VERSION, DirectSqs, UnsupportedMotoError, safe_sqs_queues

ACCOUNT = "111122223333"  # not moto's default account: the embedded AWS's queues stay apart
REGION = "us-east-1"
HOOK_WAIT_S = 0.5  # how long a hook holds a thread inside moto's critical section


@pytest.fixture
def backend() -> SQSBackend:
    return sqs_backends[ACCOUNT][REGION]


@pytest.fixture
def safe() -> Iterator[None]:
    with safe_sqs_queues():
        yield


def new_queue(backend: SQSBackend, **attributes: Any) -> str:
    name = f"q-{uuid.uuid4().hex[:12]}{'.fifo' if attributes.get('FifoQueue') else ''}"
    backend.create_queue(name, **attributes)
    return name


def counts(backend: SQSBackend, name: str) -> tuple[int, int, int]:
    attrs = backend.get_queue_attributes(
        name,
        [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )
    return (
        attrs["ApproximateNumberOfMessages"],
        attrs["ApproximateNumberOfMessagesNotVisible"],
        attrs["ApproximateNumberOfMessagesDelayed"],
    )


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as error:  # noqa: BLE001 - handed to the test thread to assert on
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


# --- the pin ----------------------------------------------------------------------------------


def test_the_patches_are_written_for_the_installed_moto() -> None:
    assert moto.__version__ == MOTO_VERSION


def test_another_moto_is_refused_with_the_fix_in_the_message() -> None:
    with (
        mock.patch.object(moto, "__version__", "5.2.6"),
        pytest.raises(UnsupportedMotoError, match=r"moto 5\.2\.5.*got moto 5\.2\.6.*requirements-local"),
        safe_sqs_queues(),
    ):
        pass


@pytest.mark.slow
def test_the_embedded_aws_installs_the_patches() -> None:
    with embedded_aws():
        assert SQSBackend.receive_message is moto_sqs._receive_message
        assert Queue.delete_message is moto_sqs._delete_message
    assert SQSBackend.receive_message is not moto_sqs._receive_message


# --- races ------------------------------------------------------------------------------------


def test_a_message_sent_while_another_is_deleted_is_kept(backend: SQSBackend, safe: None) -> None:
    """moto 5.2.5 unpatched: the delete's rebuilt list replaces the one the send appended to."""
    name = new_queue(backend)
    backend.send_message(name, "first")
    (received,) = backend.receive_message(name, 1, 0, 30)
    sending, sent = threading.Event(), threading.Event()
    deleter: list[threading.Thread] = []

    def messages_get(queue: Queue) -> list[Message]:
        return queue.__dict__["_messages"]  # type: ignore[no-any-return]

    def messages_set(queue: Queue, value: list[Message]) -> None:
        # Hold the deleter between building its new list and storing it; the send runs then.
        if deleter and threading.current_thread() is deleter[0]:
            sending.set()
            sent.wait(HOOK_WAIT_S)
        queue.__dict__["_messages"] = value

    with mock.patch.object(Queue, "_messages", property(messages_get, messages_set), create=True):

        def delete() -> None:
            deleter.append(threading.current_thread())
            backend.delete_message(name, received.receipt_handle)

        thread, errors = in_thread(delete)
        assert sending.wait(5)
        backend.send_message(name, "second")
        sent.set()
        thread.join(5)
    assert errors == []
    assert [m.body for m in backend.receive_message(name, 10, 0, 30)] == ["second"]


def test_a_receive_survives_a_delete_of_a_pending_message(backend: SQSBackend, safe: None) -> None:
    """moto 5.2.5 unpatched: "Set changed size during iteration" from the pending-message set."""
    name = new_queue(backend)
    for body in ("a", "b", "c", "d"):
        backend.send_message(name, body)
    pending = backend.receive_message(name, 3, 0, 30)
    queue = backend.get_queue(name)
    iterating, deleted = threading.Event(), threading.Event()
    receiver: list[threading.Thread] = []

    class HookedSet(set[Message]):
        def __iter__(self) -> Iterator[Message]:
            for message in super().__iter__():
                # Hold the receiver inside its walk of the pending set; the delete runs then.
                if receiver and threading.current_thread() is receiver[0] and not iterating.is_set():
                    iterating.set()
                    deleted.wait(HOOK_WAIT_S)
                yield message

    queue._pending_messages = HookedSet(queue._pending_messages)

    def receive() -> None:
        receiver.append(threading.current_thread())
        backend.receive_message(name, 1, 0, 30)

    thread, errors = in_thread(receive)
    assert iterating.wait(5)
    backend.delete_message(name, pending[0].receipt_handle)
    deleted.set()
    thread.join(5)
    assert errors == []
    assert counts(backend, name) == (0, 3, 0)


@pytest.mark.slow
def test_a_visibility_beyond_twelve_hours_is_refused_as_moto_and_aws_do(
    backend: SQSBackend, safe: None
) -> None:
    """The patched ChangeMessageVisibility keeps moto's check: the message's total visibility may
    not pass 12 hours, counting the new timeout (a line once lost it to a comment)."""
    name = new_queue(backend)
    backend.send_message(name, "m")
    (message,) = backend.receive_message(name, 1, 0, 30)
    backend.change_message_visibility(name, message.receipt_handle, 43_200 - 60)
    with pytest.raises(InvalidParameterValue, match="beyond the limit"):
        backend.change_message_visibility(name, message.receipt_handle, 43_200 + 1)


def test_concurrent_sends_receives_and_deletes_lose_nothing(backend: SQSBackend, safe: None) -> None:
    """Bounded stress: 4 senders and 4 consumers on one queue, every message deleted once."""
    name = new_queue(backend)
    senders, per_sender, consumers = 4, 500, 4
    expected = {f"{s}-{i}" for s in range(senders) for i in range(per_sender)}
    done: set[str] = set()
    lock = threading.Lock()
    deadline = time.monotonic() + 60

    def send(sender: int) -> None:
        for i in range(per_sender):
            backend.send_message(name, f"{sender}-{i}")

    def consume() -> None:
        while time.monotonic() < deadline:
            with lock:
                if done == expected:
                    return
            for message in backend.receive_message(name, 10, 0, 30):
                backend.delete_message(name, message.receipt_handle)
                with lock:
                    assert message.body not in done
                    done.add(message.body)

    workers = [in_thread(lambda s=s: send(s)) for s in range(senders)]
    workers += [in_thread(consume) for _ in range(consumers)]
    for thread, _ in workers:
        thread.join(max(0.0, deadline - time.monotonic()) + 1)
    assert [error for _, errors in workers for error in errors] == []
    assert done == expected
    assert counts(backend, name) == (0, 0, 0)


@pytest.mark.slow
def test_the_embedded_aws_loses_nothing_under_concurrent_requests() -> None:
    """The same, through the threaded server and boto3, on a smaller scale."""
    with embedded_aws() as aws:
        sqs = aws.client("sqs").wire
        url = sqs.create_queue(QueueName="stress")["QueueUrl"]
        bodies = {str(i) for i in range(200)}
        done: set[str] = set()
        lock = threading.Lock()
        deadline = time.monotonic() + 60

        def send(part: int) -> None:
            for body in sorted(bodies)[part::4]:
                sqs.send_message(QueueUrl=url, MessageBody=body)

        def consume() -> None:
            while time.monotonic() < deadline:
                with lock:
                    if done == bodies:
                        return
                response = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30)
                for message in response.get("Messages", []):
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                    with lock:
                        done.add(message["Body"])

        workers = [in_thread(lambda p=p: send(p)) for p in range(4)] + [in_thread(consume) for _ in range(4)]
        for thread, _ in workers:
            thread.join(max(0.0, deadline - time.monotonic()) + 1)
        assert [error for _, errors in workers for error in errors] == []
        assert done == bodies
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert (attrs["ApproximateNumberOfMessages"], attrs["ApproximateNumberOfMessagesNotVisible"]) == (
            "0",
            "0",
        )


# --- O(1) per message -------------------------------------------------------------------------


@contextmanager
def counted_work() -> Iterator[dict[str, int]]:
    """Count the per-message work moto does: clock reads, attribute sets, receipt-handle checks."""
    calls = {"clock": 0, "attributes": 0, "handle checks": 0}
    clock, attributes, had_handle = models.unix_time_millis, Queue.attributes, Message.had_receipt_handle

    def counted_clock() -> float:
        calls["clock"] += 1
        return clock()

    def counted_attributes(queue: Queue) -> dict[str, Any]:
        calls["attributes"] += 1
        return attributes.fget(queue)  # type: ignore[no-any-return]

    def counted_had_handle(message: Message, handle: str) -> bool:
        calls["handle checks"] += 1
        return had_handle(message, handle)  # type: ignore[no-any-return]

    with (
        mock.patch.object(models, "unix_time_millis", counted_clock),
        mock.patch.object(Queue, "attributes", property(counted_attributes)),
        mock.patch.object(Message, "had_receipt_handle", counted_had_handle),
    ):
        yield calls


def fill(backend: SQSBackend, name: str, depth: int) -> None:
    """`depth` visible messages, appended directly: moto's own send is O(depth) unpatched."""
    queue = backend.get_queue(name)
    for i in range(depth):
        message = Message(str(uuid.uuid4()), f"filler {i}")
        if queue.fifo_queue:
            message.group_id, message.deduplication_id = "filler", str(i)
        message.mark_sent()
        queue._messages.append(message)


def _send(backend: SQSBackend, name: str) -> None:
    backend.send_message(name, "probe")


def _send_fifo(backend: SQSBackend, name: str) -> None:
    backend.send_message(name, "probe", group_id="probe", deduplication_id=str(uuid.uuid4()))


def _receive(backend: SQSBackend, name: str) -> None:
    assert len(backend.receive_message(name, 10, 0, 30)) == 10


def _delete(backend: SQSBackend, name: str) -> None:
    backend.delete_message(name, _last_handle(backend, name))


def _change_visibility(backend: SQSBackend, name: str) -> None:
    backend.change_message_visibility(name, _last_handle(backend, name), 60)


def _one_attribute(backend: SQSBackend, name: str) -> None:
    assert backend.get_queue_attributes(name, ["VisibilityTimeout"]) == {"VisibilityTimeout": 30}


def _long_poll_wake(backend: SQSBackend, name: str) -> None:
    backend.get_queue(name).wait_for_messages(0)


_handles: dict[str, str] = {}


def _last_handle(backend: SQSBackend, name: str) -> str:
    return _handles[name]


def _prepare_received(backend: SQSBackend, name: str) -> None:
    # The message a delete or visibility change works on sits at the end of the queue.
    backend.send_message(name, "target")
    queue = backend.get_queue(name)
    target = queue._messages[-1]
    received = backend.receive_message(name, len(queue._messages), 0, 0)  # every one, all stay visible
    _handles[name] = next(m.receipt_handle for m in received if m.body == "target" and m.id == target.id)


OPERATIONS: dict[str, tuple[Callable[[SQSBackend, str], None], dict[str, str], bool]] = {
    # name: (operation, queue attributes, needs a received message)
    "SendMessage": (_send, {}, False),
    "SendMessage FIFO": (_send_fifo, {"FifoQueue": "true"}, False),
    "ReceiveMessage": (_receive, {}, False),
    "DeleteMessage": (_delete, {}, True),
    "ChangeMessageVisibility": (_change_visibility, {}, True),
    "GetQueueAttributes one": (_one_attribute, {}, False),
    "long poll wake-up": (_long_poll_wake, {}, False),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_the_work_per_call_does_not_grow_with_queue_depth(
    backend: SQSBackend, safe: None, operation: str
) -> None:
    """At 10 and at 5,000 messages a call does the same work; moto 5.2.5 unpatched walks them all."""
    run, attributes, received = OPERATIONS[operation]
    work = {}
    for depth in (10, 5_000):
        name = new_queue(backend, **attributes)
        fill(backend, name, depth)
        if received:
            _prepare_received(backend, name)
        with counted_work() as calls:
            run(backend, name)
        work[depth] = calls
    assert work[5_000] == work[10]
    assert work[10]["attributes"] == 0
    assert work[10]["handle checks"] == 0


def test_a_purged_queue_forgets_its_receipt_handles(backend: SQSBackend, safe: None) -> None:
    """As moto: a handle of a purged message is invalid (an unpurged index would find it)."""
    name = new_queue(backend)
    backend.send_message(name, "gone")
    (received,) = backend.receive_message(name, 1, 0, 30)
    backend.purge_queue(name)
    with pytest.raises(ReceiptHandleIsInvalid):
        backend.delete_message(name, received.receipt_handle)


def test_a_dead_lettered_message_keeps_its_receipt_handles(backend: SQSBackend, safe: None) -> None:
    """As moto: the dead-letter queue accepts the handle the source queue gave out."""
    dlq = new_queue(backend)
    dlq_arn = backend.get_queue(dlq).queue_arn
    name = new_queue(backend, RedrivePolicy={"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 1})
    backend.send_message(name, "poison")
    (received,) = backend.receive_message(name, 1, 0, 0)
    assert backend.receive_message(name, 1, 0, 0) == []  # moved to the dead-letter queue
    backend.delete_message(dlq, received.receipt_handle)
    assert counts(backend, dlq) == (0, 0, 0)
    with pytest.raises(ReceiptHandleIsInvalid):
        backend.delete_message(name, received.receipt_handle)


# --- the same behaviour as moto ---------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.sampled_from([0, 0, 900])),  # DelaySeconds
        st.tuples(st.just("receive"), st.integers(1, 4), st.sampled_from([0, 30])),  # count, visibility
        st.tuples(st.just("delete"), st.integers(0, 50)),  # which handle received so far
        st.tuples(st.just("visibility"), st.integers(0, 50), st.sampled_from([0, 60])),
        st.tuples(st.just("purge")),
    ),
    max_size=40,
)


def run_ops(backend: SQSBackend, ops: list[tuple[Any, ...]]) -> list[Any]:
    """What a client could see of each operation, with ids replaced by the order they appeared."""
    dlq = new_queue(backend)
    name = new_queue(
        backend,
        RedrivePolicy={"deadLetterTargetArn": backend.get_queue(dlq).queue_arn, "maxReceiveCount": 3},
    )
    handles: list[str] = []
    seen: list[str] = []
    trace: list[Any] = []
    sent = deleted = purged = 0
    for op in ops:
        try:
            if op[0] == "send":
                backend.send_message(name, f"m{sent}", delay_seconds=op[1])
                sent += 1
                outcome: Any = "sent"
            elif op[0] == "receive":
                got = backend.receive_message(name, op[1], 0, op[2])
                handles += [m.receipt_handle for m in got]
                seen += [m.id for m in got if m.id not in seen]
                outcome = [(m.body, m.approximate_receive_count, seen.index(m.id)) for m in got]
            elif op[0] == "delete" and handles:
                before = sum(counts(backend, name))
                backend.delete_message(name, handles[op[1] % len(handles)])
                deleted += before - sum(counts(backend, name))
                outcome = "deleted"
            elif op[0] == "visibility" and handles:
                backend.change_message_visibility(name, handles[op[1] % len(handles)], op[2])
                outcome = "changed"
            elif op[0] == "purge":
                before = sum(counts(backend, name))
                backend.purge_queue(name)
                purged += before
                outcome = "purged"
            else:
                outcome = "skipped"
        except (ReceiptHandleIsInvalid, PurgeQueueInProgress) as error:
            outcome = type(error).__name__
        here, dead = counts(backend, name), counts(backend, dlq)
        # The invariant: every message sent is in the queue, in its dead-letter queue, deleted or purged.
        assert sum(here) + sum(dead) + deleted + purged == sent
        trace.append((op, outcome, here, dead))
    return trace


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_patched_sqs_behaves_as_moto_and_keeps_its_counts(backend: SQSBackend, ops: list[Any]) -> None:
    """Any sequence of sends, receives, deletes, visibility changes and purges: the same outcomes
    and counts with and without the patches, and no message appears or disappears."""
    with safe_sqs_queues():
        patched = run_ops(backend, ops)
    assert run_ops(backend, ops) == patched


# --- DirectSqs: this process's receives and deletes as the wire answers them ------------------

_PER_RECEIVE = ("ReceiptHandle", "ApproximateReceiveCount", "ApproximateFirstReceiveTimestamp")


def _comparable(message: dict[str, Any]) -> dict[str, Any]:
    """A received message without what differs between two receives of it."""
    kept = {k: v for k, v in message.items() if k not in _PER_RECEIVE}
    if "Attributes" in kept:
        kept["Attributes"] = {k: v for k, v in kept["Attributes"].items() if k not in _PER_RECEIVE}
    return kept


@pytest.mark.parametrize(
    ("system", "custom"),
    [
        (["All"], ["All"]),
        (["SentTimestamp", "ApproximateReceiveCount"], ["kind"]),
        ([], []),
        (["All"], ["k.*"]),
    ],
)
def test_a_direct_receive_answers_as_the_wire_does(system: list[str], custom: list[str]) -> None:
    with embedded_aws() as aws:
        sqs = aws.client("sqs")
        assert isinstance(sqs, DirectSqs)
        url = sqs.create_queue(QueueName="direct")["QueueUrl"]
        attributes = {
            "kind": {"DataType": "String", "StringValue": "probe"},
            "other": {"DataType": "Number", "StringValue": "7"},
        }
        sqs.wire.send_message(QueueUrl=url, MessageBody="with", MessageAttributes=attributes)
        sqs.wire.send_message(QueueUrl=url, MessageBody="without")
        asked = {"AttributeNames": system, "MessageAttributeNames": custom, "MaxNumberOfMessages": 10}
        by_wire = sqs.wire.receive_message(QueueUrl=url, VisibilityTimeout=0, **asked)["Messages"]
        before = aws.snapshot().get("sqs:ReceiveMessage", 0)
        direct = sqs.receive_message(QueueUrl=url, VisibilityTimeout=30, **asked)["Messages"]
        assert aws.snapshot()["sqs:ReceiveMessage"] == before + 1
        assert [_comparable(m) for m in direct] == [_comparable(m) for m in by_wire]
        assert {m["Body"] for m in direct} == {"with", "without"}
        if "ApproximateReceiveCount" in system or "All" in system:
            assert [m["Attributes"]["ApproximateReceiveCount"] for m in direct] == ["2", "2"]
        # The direct receive's handles are live: the batch delete takes both, the queue is empty.
        entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(direct)]
        deleted = sqs.delete_message_batch(QueueUrl=url, Entries=entries)
        assert (sorted(d["Id"] for d in deleted["Successful"]), deleted["Failed"]) == (["0", "1"], [])
        assert sqs.wire.receive_message(QueueUrl=url).get("Messages") is None


def _error_code(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(ClientError) as raised:
        call()
    return type(raised.value).__name__, raised.value.response["Error"]["Code"]


def test_a_direct_call_fails_as_the_wire_does() -> None:
    with embedded_aws() as aws:
        sqs = aws.client("sqs")
        url = sqs.create_queue(QueueName="errors")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="one")
        (message,) = sqs.receive_message(QueueUrl=url)["Messages"]
        twice = [{"Id": str(n), "ReceiptHandle": message["ReceiptHandle"]} for n in range(2)]
        calls: list[tuple[str, dict[str, Any]]] = [
            ("receive_message", {"QueueUrl": url.replace("errors", "missing")}),
            ("receive_message", {"QueueUrl": url, "MaxNumberOfMessages": 11}),
            ("receive_message", {"QueueUrl": url, "WaitTimeSeconds": 21}),
            ("receive_message", {"QueueUrl": url, "VisibilityTimeout": 43_201}),
            ("delete_message_batch", {"QueueUrl": url, "Entries": []}),
            ("delete_message_batch", {"QueueUrl": url, "Entries": twice}),
            ("send_message", {"QueueUrl": url.replace("errors", "missing"), "MessageBody": "x"}),
        ]
        for name, params in calls:
            by_wire = _error_code(lambda name=name, params=params: getattr(sqs.wire, name)(**params))
            direct = _error_code(lambda name=name, params=params: getattr(sqs, name)(**params))
            assert direct == by_wire, (name, params)
        assert _error_code(lambda: sqs.receive_message(QueueUrl=url.replace("errors", "missing")))[0] == (
            "QueueDoesNotExist"
        )
        # A stale handle fails its entry, not the batch, as on the wire.
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        stale = [{"Id": "a", "ReceiptHandle": "not-a-handle"}]
        assert (
            sqs.delete_message_batch(QueueUrl=url, Entries=stale)["Failed"]
            == (sqs.wire.delete_message_batch(QueueUrl=url, Entries=stale)["Failed"])
        )
