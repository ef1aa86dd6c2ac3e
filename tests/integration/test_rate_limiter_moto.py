"""The calls-per-second limiter's DynamoDB adapter against moto: the conditional writes that
share one theoretical arrival time between invocations.

What this cannot prove: DynamoDB's real latency and its per-partition write limit (1000 a
second on the one item), nor clock differences between Lambda hosts.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from localcloud.moto_fixes import atomic_dynamodb_writes
from sluice_fanout.handlers.adapters import RATE_KEY_PREFIX, DynamoRateLimiter
from sluice_fanout.handlers.contract import IDEMPOTENCY_KEY_ATTRIBUTE
from sluice_fanout.handlers.rate import Denied, Grant, interval_for
from tests.support.idempotency import create_idempotency_table

TABLE = "idempotency"


@pytest.fixture
def ddb() -> Iterator[Any]:
    # moto's conditional writes are not atomic across threads; DynamoDB's are (see the fix).
    with mock_aws(), atomic_dynamodb_writes():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_idempotency_table(client, TABLE)
        yield client


def test_the_first_reservation_is_now_and_the_next_one_interval_later(ddb: Any) -> None:
    clock = iter([100.0, 100.1]).__next__  # one reading per uncontended reservation
    limiter = DynamoRateLimiter(ddb, TABLE, "fn", interval=0.5, clock=clock, lead=0.0)
    assert limiter.reserve(max_wait=10) == Grant(at=100.0, wait=0.0, tat=100.5)
    assert limiter.reserve(max_wait=10) == Grant(at=100.5, wait=pytest.approx(0.4), tat=101.0)
    key = {IDEMPOTENCY_KEY_ATTRIBUTE: {"S": RATE_KEY_PREFIX + "fn"}}
    item = ddb.get_item(TableName=TABLE, Key=key)["Item"]
    assert float(item["tat"]["N"]) == 101.0
    assert int(item["expiration"]["N"]) > 100


def test_a_second_sandbox_learns_the_tat_from_its_failed_write(ddb: Any) -> None:
    first = DynamoRateLimiter(ddb, TABLE, "fn", interval=1.0, clock=lambda: 50.0, lead=0.0)
    second = DynamoRateLimiter(ddb, TABLE, "fn", interval=1.0, clock=lambda: 50.0, lead=0.0)
    assert first.reserve(max_wait=10).at == 50.0  # type: ignore[union-attr]
    assert second.reserve(max_wait=10) == Grant(at=51.0, wait=1.0, tat=52.0)
    assert first.reserve(max_wait=10) == Grant(at=52.0, wait=2.0, tat=53.0)


def test_a_slot_too_far_away_is_not_reserved(ddb: Any) -> None:
    limiter = DynamoRateLimiter(ddb, TABLE, "fn", interval=5.0, clock=lambda: 10.0, lead=0.0)
    limiter.reserve(max_wait=1)
    assert limiter.reserve(max_wait=1) == Denied(wait=5.0)
    assert limiter.reserve(max_wait=6) == Grant(at=15.0, wait=5.0, tat=20.0)  # the denial took nothing


def test_functions_do_not_share_a_limiter(ddb: Any) -> None:
    a = DynamoRateLimiter(ddb, TABLE, "a", interval=1.0, clock=lambda: 7.0, lead=0.0)
    b = DynamoRateLimiter(ddb, TABLE, "b", interval=1.0, clock=lambda: 7.0, lead=0.0)
    assert a.reserve(max_wait=0).at == b.reserve(max_wait=0).at == 7.0  # type: ignore[union-attr]


def test_concurrent_sandboxes_get_slots_spaced_by_the_interval(ddb: Any) -> None:
    """Eight threads, each its own sandbox (own cached TAT), reserve five slots each at once."""
    interval = interval_for(50.0)
    granted: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def sandbox() -> None:
        limiter = DynamoRateLimiter(ddb, TABLE, "fn", interval=interval)
        start.wait()
        for _ in range(5):
            decision = limiter.reserve(max_wait=60)
            assert isinstance(decision, Grant)
            with lock:
                granted.append(decision.at)

    threads = [threading.Thread(target=sandbox) for _ in range(8)]
    began = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(granted) == 40
    slots = sorted(granted)
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert min(gaps) >= interval - 1e-6, min(gaps)
    assert slots[0] >= began - 1e-6
