"""OncePerItem on Powertools' DynamoDB persistence (moto): one call per business key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from sluice_fanout.handlers.contract import ERROR_PERMANENT, RESULT_POINTER_FIELD
from sluice_fanout.handlers.once import (
    IdempotencyStoreUnavailable,
    ItemInProgress,
    OncePerItem,
    Outcome,
    StoredItem,
    stored_item,
    task_output,
)
from tests.support.idempotency import create_idempotency_table, idempotency_store, moto_idempotency_table


@pytest.fixture
def ddb() -> Iterator[Any]:
    with moto_idempotency_table("idem") as client:
        yield client


def test_what_explain_reads_is_what_the_worker_stored(ddb: Any) -> None:
    """Read through a persistence layer of its own, as `sluice explain` reads it."""
    once = OncePerItem(idempotency_store(ddb, "idem"), 3_600, clock=lambda: 1_700_000_000.25)
    reader = idempotency_store(ddb, "idem")
    seen: list[StoredItem | None] = []

    def attempt() -> Outcome:
        seen.append(stored_item(reader, "arn:e", 4))
        return Outcome(output='{"ok": true}')

    assert stored_item(reader, "arn:e", 4) is None
    once.run(execution="arn:e", index=4, remaining_ms=30_000, attempt=attempt, number=2)
    (during,) = seen
    assert during is not None
    assert (during.finished, during.outcome) == (False, None)
    assert during.lease_until is not None  # the invocation's deadline
    assert stored_item(reader, "arn:e", 4) == StoredItem(
        True, Outcome(output='{"ok": true}'), 1_700_000_000.25, 2, None
    )
    once.run(
        execution="arn:e",
        index=5,
        remaining_ms=30_000,
        attempt=lambda: Outcome(error=ERROR_PERMANENT, cause="HTTP 400"),
        number=1,
    )
    failed = stored_item(reader, "arn:e", 5)
    assert failed is not None
    assert (failed.outcome, failed.attempt) == (Outcome(error=ERROR_PERMANENT, cause="HTTP 400"), 1)
    assert stored_item(reader, "arn:other", 4) is None


@pytest.fixture
def once() -> Iterator[OncePerItem]:
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        create_idempotency_table(ddb, "idem")
        yield OncePerItem(idempotency_store(ddb, "idem"), 3_600)


def test_the_second_run_for_a_key_replays_without_calling(once: OncePerItem) -> None:
    calls: list[int] = []

    def attempt() -> Outcome:
        calls.append(1)
        return Outcome(output='{"n": 1}')

    first = once.run(execution="arn:e", index=1, remaining_ms=30_000, attempt=attempt)
    second = once.run(execution="arn:e", index=1, remaining_ms=30_000, attempt=attempt)
    other = once.run(execution="arn:e", index=2, remaining_ms=30_000, attempt=attempt)
    assert first == (Outcome(output='{"n": 1}'), False)
    assert second == (Outcome(output='{"n": 1}'), True)
    assert other[1] is False
    assert len(calls) == 2


def test_a_failed_attempt_stores_nothing_so_the_next_one_calls_again(once: OncePerItem) -> None:
    def flaky() -> Outcome:
        raise ConnectionError("API down")

    with pytest.raises(ConnectionError):
        once.run(execution="arn:e", index=3, remaining_ms=30_000, attempt=flaky)
    outcome, replayed = once.run(
        execution="arn:e", index=3, remaining_ms=30_000, attempt=lambda: Outcome(output="{}")
    )
    assert (outcome.output, replayed) == ("{}", False)


def test_a_concurrent_duplicate_is_told_to_come_back_instead_of_calling(once: OncePerItem) -> None:
    inner: list[BaseException] = []

    def attempt() -> Outcome:
        # The same item delivered twice at once: the second delivery arrives mid-call.
        try:
            once.run(execution="arn:e", index=4, remaining_ms=20_000, attempt=lambda: Outcome(output="{}"))
        except ItemInProgress as exc:
            inner.append(exc)
        return Outcome(output='"first"')

    assert once.run(execution="arn:e", index=4, remaining_ms=20_000, attempt=attempt)[0].output == '"first"'
    assert len(inner) == 1
    assert isinstance(inner[0], ItemInProgress)
    assert 1 <= inner[0].retry_after_s <= 20


def test_a_crashed_holder_s_lease_ends_with_its_invocation(once: OncePerItem) -> None:
    def crash() -> Outcome:
        raise KeyboardInterrupt  # not an Exception: Powertools keeps the record, like a dead sandbox

    with pytest.raises(KeyboardInterrupt):
        once.run(execution="arn:e", index=5, remaining_ms=0, attempt=crash)
    # The lease (the crashed invocation's remaining time, here none) is over: reclaimable.
    outcome, replayed = once.run(
        execution="arn:e", index=5, remaining_ms=30_000, attempt=lambda: Outcome(output="1")
    )
    assert (outcome.output, replayed) == ("1", False)


def test_a_store_outage_refuses_to_call_blind() -> None:
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")  # no table: every call fails
        guarded = OncePerItem(idempotency_store(ddb, "missing"), 3_600)
        calls: list[int] = []
        with pytest.raises(IdempotencyStoreUnavailable):
            guarded.run(
                execution="arn:e",
                index=1,
                remaining_ms=30_000,
                attempt=lambda: calls.append(1) or Outcome(output="{}"),
            )
        assert calls == []


def test_task_output_spills_only_what_would_not_fit_in_the_structured_result() -> None:
    spilled: list[bytes] = []

    def spill(body: bytes) -> dict[str, Any]:
        spilled.append(body)
        return {"bucket": "b", "key": "k", "bytes": len(body)}

    small = task_output(result={"ok": True}, spill=spill)
    assert small == Outcome(output='{"ok": true}')
    # The item is no longer beside the result (the worker's result ends the child), so a result
    # that fits under 256 KiB with room for its wrapper stays inline.
    fits = task_output(result={"blob": "x" * 250_000}, spill=spill)
    assert fits.output is not None
    assert RESULT_POINTER_FIELD not in fits.output
    near = task_output(result={"blob": "x" * 260_000}, spill=spill)
    assert near.output is not None
    assert RESULT_POINTER_FIELD in near.output
    assert len(spilled) == 1
    refused = task_output(result={"blob": "x" * 300_000}, spill=None)
    assert (refused.output, refused.error) == (None, ERROR_PERMANENT)
    assert "bucket" in refused.cause
    not_json = task_output(result={1, 2}, spill=spill)
    assert not_json.error == ERROR_PERMANENT
