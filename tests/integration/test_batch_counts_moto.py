"""Each batch's progress record against moto: outcomes counted, retries noted and cleared, and
one record per batch that expires with the idempotency records."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from sluice_fanout.handlers import contract
from sluice_fanout.handlers.adapters import BatchCounts
from sluice_fanout.handlers.progress import Progress, Retry
from tests.support.idempotency import create_idempotency_table

PARENT = "arn:aws:states:us-east-1:123456789012:execution:sm:batch-1"
OTHER = "arn:aws:states:us-east-1:123456789012:execution:sm:batch-2"


@pytest.fixture
def ddb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_idempotency_table(client, "t")
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
