"""Each batch's progress record against moto: outcomes counted, retries noted and cleared, and
one record per batch that expires with the idempotency records."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sluice_fanout.handlers import contract
from sluice_fanout.handlers.adapters import BatchCounts
from sluice_fanout.handlers.progress import Ended, Progress, Retry
from tests.support.idempotency import moto_idempotency_table

PARENT = "arn:aws:states:us-east-1:123456789012:execution:sm:batch-1"
OTHER = "arn:aws:states:us-east-1:123456789012:execution:sm:batch-2"


@pytest.fixture
def ddb() -> Iterator[Any]:
    with moto_idempotency_table("t") as client:
        yield client


def test_outcomes_and_retries_are_kept_per_batch(ddb: Any) -> None:
    counts = BatchCounts(ddb, "t", ttl_s=3_600, clock=lambda: 1_000.0)
    assert counts.load(PARENT) == Progress()
    counts.retrying(PARENT, Retry(3, 1_030.0, 1, "HTTP 503"))
    counts.retrying(PARENT, Retry(5, 1_010.0, 1, "timeout"))
    counts.retrying(PARENT, Retry(3, 1_090.0, 2, "HTTP 503 again"))  # its next attempt replaces the last
    counts.finished(PARENT, 1, ok=True)
    counts.finished(PARENT, 5, ok=False)  # failed for good: no longer retrying
    counts.finished(OTHER, 1, ok=True)
    assert counts.load(PARENT) == Progress(
        succeeded=1, failed=1, retries=(Retry(3, 1_090.0, 2, "HTTP 503 again"),)
    )
    assert counts.load(OTHER) == Progress(succeeded=1)
    item = ddb.get_item(TableName="t", Key={"id": {"S": contract.BATCH_PROGRESS_PREFIX + PARENT}})["Item"]
    assert item["expiration"] == {"N": "4600"}  # the idempotency table's TTL drops it with the batch


def test_many_outcomes_count_in_one_write_and_clear_their_retries(ddb: Any) -> None:
    counts = BatchCounts(ddb, "t", ttl_s=3_600, clock=lambda: 1_000.0)
    for index in (4, 6, 8):
        counts.retrying(PARENT, Retry(index, 1_050.0, 1, "HTTP 503"))
    counts.finished_many(PARENT, succeeded=2, failed=1, indexes=[4, 6, 7])
    assert counts.load(PARENT) == Progress(succeeded=2, failed=1, retries=(Retry(8, 1_050.0, 1, "HTTP 503"),))


def test_an_ended_item_is_found_by_its_key_alone(ddb: Any) -> None:
    counts = BatchCounts(ddb, "t", ttl_s=3_600, clock=lambda: 1_000.0)
    assert counts.ended_item(PARENT, 7) is None
    gone = Ended(7, 990.5, contract.ERROR_RETRIES_EXHAUSTED, "HTTP 503 | three times", 3)
    lettered = Ended(8, 991.0, contract.ERROR_MALFORMED, "body has no task token", 0, dead_lettered=True)
    counts.ended(PARENT, gone)
    counts.ended(PARENT, lettered)
    assert counts.ended_item(PARENT, 7) == gone  # a "|" in the cause survives
    assert counts.ended_item(PARENT, 8) == lettered
    assert counts.ended_item(OTHER, 7) is None
    item = ddb.get_item(TableName="t", Key={"id": {"S": f"{contract.ITEM_ENDED_PREFIX}{PARENT}#7"}})["Item"]
    assert item["expiration"] == {"N": "4600"}


def test_a_retry_keeps_its_last_attempt_and_reads_old_notes(ddb: Any) -> None:
    counts = BatchCounts(ddb, "t", ttl_s=3_600, clock=lambda: 1_000.0)
    counts.retrying(PARENT, Retry(2, 1_020.0, 2, "HTTP 503", last_attempt=3))
    assert counts.load(PARENT).retries == (Retry(2, 1_020.0, 2, "HTTP 503", 3),)
    assert Retry.decode(4, "1020.000|1|timeout") == Retry(4, 1_020.0, 1, "timeout")  # noted before
