"""Keyed items' store (adapters.KeyedItems) against moto: the fair-share rule of handlers/fair.py
kept in the idempotency table, with caps, ordered keys, retries and leases that run out.

What this cannot prove: DynamoDB's real index lag (moto's global secondary indexes are
consistent at once) and its per-partition write limits on a hot key's ledger.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from localcloud.moto_dynamodb import indexed_dynamodb_queries, lean_dynamodb_transactions
from localcloud.moto_fixes import atomic_dynamodb_writes
from sluice_fanout.handlers.adapters import KEYED_REPAIR_AFTER_S, Claimed, KeyedItems
from sluice_fanout.handlers.contract import IDEMPOTENCY_KEY_ATTRIBUTE, KEYED_LEDGER_PREFIX
from sluice_fanout.handlers.fair import KeyRule
from tests.support.idempotency import create_idempotency_table

TABLE = "idempotency"
LEASE_S = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ddb() -> Iterator[Any]:
    # The embedded AWS's index queries and transactions (checked, then written), under its lock.
    with mock_aws(), indexed_dynamodb_queries(), lean_dynamodb_transactions(), atomic_dynamodb_writes():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_idempotency_table(client, TABLE, keyed=True)
        yield client


def _store(ddb: Any, clock: Clock, rules: dict[str, KeyRule] | None = None) -> KeyedItems:
    known = rules or {}
    return KeyedItems(ddb, TABLE, lambda key, _priority: known.get(key, KeyRule()), LEASE_S, clock)


def _submit(store: KeyedItems, key: str, count: int, start: int = 0, priority: str = "BATCH") -> None:
    for n in range(start, start + count):
        store.enqueue(
            priority, key, f"{n:09d}", token=f"token-{key}-{n}", item={"n": n}, index=n, execution="arn:x"
        )


def _n(claimed: Claimed) -> int:
    body = json.loads(claimed.body)
    assert body["token"] == f"token-{claimed.key}-{body['index']}"
    assert body["priority"] == claimed.priority
    return int(body["item"]["n"])


def _ledger(ddb: Any, priority: str, key: str) -> dict[str, Any]:
    return ddb.get_item(
        TableName=TABLE, Key={IDEMPOTENCY_KEY_ATTRIBUTE: {"S": f"{KEYED_LEDGER_PREFIX}{priority}#{key}"}}
    )["Item"]


def test_a_quiet_key_is_not_held_behind_a_noisy_backlog(ddb: Any) -> None:
    clock = Clock()
    store = _store(ddb, clock)
    _submit(store, "noisy", 40)
    first = [store.pick("BATCH") for _ in range(10)]
    assert {c.key for c in first if c} == {"noisy"}
    for claimed in first:
        assert claimed is not None
        store.done(claimed)
    _submit(store, "quiet", 10, start=100)
    keys = []
    for _ in range(6):
        claimed = store.pick("BATCH")
        assert claimed is not None
        keys.append(claimed.key)
        store.done(claimed)
    # The quiet key goes next and then alternates; it gets no credit for its idle time either.
    assert keys[0] == "quiet"
    assert Counter(keys) == {"noisy": 3, "quiet": 3}


def test_weights_share_the_calls(ddb: Any) -> None:
    clock = Clock()
    store = _store(ddb, clock, {"gold": KeyRule(weight=3)})
    _submit(store, "gold", 40)
    _submit(store, "plain", 40, start=100)
    got: Counter[str] = Counter()
    for _ in range(40):
        claimed = store.pick("BATCH")
        assert claimed is not None
        got[claimed.key] += 1
        store.done(claimed)
    assert abs(got["gold"] - 30) <= 1


def test_a_key_at_its_cap_gives_way_and_nothing_runs_over_it(ddb: Any) -> None:
    clock = Clock()
    store = _store(ddb, clock, {"capped": KeyRule(cap=2)})
    _submit(store, "capped", 10)
    held = [store.pick("BATCH"), store.pick("BATCH")]
    assert all(c is not None and c.key == "capped" for c in held)
    assert store.pick("BATCH") is None  # at its cap, and no other key waits
    _submit(store, "other", 1, start=100)
    other = store.pick("BATCH")
    assert other is not None
    assert other.key == "other"
    store.done(held[0])  # type: ignore[arg-type]
    again = store.pick("BATCH")
    assert again is not None
    assert again.key == "capped"


def test_an_ordered_key_goes_one_at_a_time_in_order_and_a_retry_holds_its_line(ddb: Any) -> None:
    clock = Clock()
    store = _store(ddb, clock, {"order-7": KeyRule(ordered=True)})
    _submit(store, "order-7", 3)
    head = store.pick("BATCH")
    assert head is not None
    assert _n(head) == 0
    assert store.pick("BATCH") is None
    store.retry(head, delay_s=5)
    assert store.pick("BATCH") is None  # the head waits out its delay; item 1 may not overtake
    clock.now += 5
    again = store.pick("BATCH")
    assert again is not None
    assert _n(again) == 0
    assert again.attempts == 2
    store.done(again)
    bodies = []
    for _ in range(2):
        claimed = store.pick("BATCH")
        assert claimed is not None
        bodies.append(_n(claimed))
        store.done(claimed)
    assert bodies == [1, 2]
    assert store.pick("BATCH") is None
    assert "kpri" not in _ledger(ddb, "BATCH", "order-7")  # out of the ready index


def test_a_dead_workers_item_and_slot_come_back_when_its_lease_runs_out(ddb: Any) -> None:
    clock = Clock()
    store = _store(ddb, clock, {"k": KeyRule(cap=1)})
    _submit(store, "k", 1)
    lost = store.pick("BATCH")
    assert lost is not None
    assert store.pick("BATCH") is None
    clock.now += LEASE_S
    back = store.pick("BATCH")
    assert back is not None
    assert back.item_id == lost.item_id
    assert back.attempts == 2
    store.done(back)
    store.done(lost)  # the dead worker's late finish changes nothing
    assert int(_ledger(ddb, "BATCH", "k")["pending"]["N"]) == 0


def test_priorities_are_apart(ddb: Any) -> None:
    clock = Clock()
    store = _store(ddb, clock)
    _submit(store, "k", 2, priority="HIGH")
    assert store.pick("BATCH") is None
    assert store.pick("HIGH") is not None


def test_a_key_counted_twice_for_one_item_leaves_the_ready_index(ddb: Any) -> None:
    """A wait step retried after an ambiguous failure writes its item again and counts it twice."""
    clock = Clock()
    store = _store(ddb, clock)
    _submit(store, "k", 1)
    _submit(store, "k", 1)
    claimed = store.pick("BATCH")
    assert claimed is not None
    store.done(claimed)
    assert store.pick("BATCH") is None
    assert "kpri" in _ledger(ddb, "BATCH", "k")
    clock.now += KEYED_REPAIR_AFTER_S
    assert store.pick("BATCH") is None
    assert "kpri" not in _ledger(ddb, "BATCH", "k")
    _submit(store, "k", 1, start=5)
    assert store.pick("BATCH") is not None


def test_workers_side_by_side_keep_every_cap_and_work_each_item_once(ddb: Any) -> None:
    clock = Clock()
    rules = {"a": KeyRule(cap=1), "b": KeyRule(cap=2), "c": KeyRule(ordered=True)}
    store = _store(ddb, clock, rules)
    for key in ("a", "b", "c", "d"):
        _submit(store, key, 12)
    lock = threading.Lock()
    at_api: Counter[str] = Counter()
    worst: Counter[str] = Counter()
    worked: list[Claimed] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(200):  # bounded: 48 items, 6 workers
                claimed = store.pick("BATCH")
                if claimed is None:
                    with lock:
                        if len(worked) == 48:
                            return
                    continue
                with lock:
                    at_api[claimed.key] += 1
                    worst[claimed.key] = max(worst[claimed.key], at_api[claimed.key])
                    worst["all"] = max(worst["all"], sum(at_api.values()))
                    worked.append(claimed)
                time.sleep(0.03)  # the call: other workers pick meanwhile
                with lock:
                    at_api[claimed.key] -= 1
                store.done(claimed)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert sorted(c.item_id for c in worked) == sorted({c.item_id for c in worked})
    assert len(worked) == 48
    assert worst["a"] <= 1
    assert worst["b"] <= 2
    assert worst["c"] <= 1
    assert worst["all"] > 2  # calls ran side by side, so the caps above were tested
    assert [_n(c) for c in worked if c.key == "c"] == list(range(12))


def test_it_says_whether_a_priority_holds_anything(ddb: Any) -> None:
    """A ticket is dropped as an orphan only when nothing anywhere could need it."""
    clock = Clock()
    store = _store(ddb, clock, {"k": KeyRule(cap=1)})
    assert not store.holds_anything("BATCH")
    _submit(store, "k", 2)
    claimed = store.pick("BATCH")
    assert claimed is not None
    assert store.holds_anything("BATCH")  # the clock record alone would not count
    assert not store.holds_anything("HIGH")
    store.done(claimed)
    claimed = store.pick("BATCH")
    assert claimed is not None
    store.done(claimed)
    assert store.pick("BATCH") is None  # finds the key's line empty: it leaves the index
    assert not store.holds_anything("BATCH")


def test_waiting_counts_each_keys_items_less_those_at_the_api(ddb: Any) -> None:
    clock = Clock()
    store = _store(ddb, clock)
    _submit(store, "a", 3)
    _submit(store, "b", 2)
    _submit(store, "c", 1, priority="HIGH")
    claimed = [store.pick("BATCH"), store.pick("BATCH")]  # one of each key: a then b, by fair share
    assert sorted(c.key for c in claimed if c) == ["a", "b"]
    counts, complete = store.waiting("BATCH")
    assert (sorted(counts), complete) == ([("a", 2), ("b", 1)], True)
    clock.now += LEASE_S + 1  # both leases ran out: the items count as waiting again
    assert sorted(store.waiting("BATCH")[0]) == [("a", 3), ("b", 2)]
    counts, complete = store.waiting("BATCH", limit=1)
    assert (len(counts), complete) == (1, False)
    assert store.waiting("HIGH") == ([("c", 1)], True)
    assert store.waiting("NORMAL") == ([], True)


def test_one_backlog_report_per_interval_whichever_sandbox_asks(ddb: Any) -> None:
    clock = Clock()
    first, second = _store(ddb, clock), _store(ddb, clock)
    assert first.report_turn(60)
    assert not second.report_turn(60)  # the turn is taken for this minute
    clock.now += 30
    assert not first.report_turn(60)  # asked too recently: not even a write
    clock.now += 31
    assert second.report_turn(60)
    assert not first.report_turn(60)


def _submit_seq(store: KeyedItems, key: str, seq: str, n: int) -> None:
    execution = seq.split("#")[1]
    store.enqueue("BATCH", key, seq, token=f"token-{key}-{n}", item={"n": n}, index=n, execution=execution)


def test_a_failed_ordered_item_fails_the_items_behind_it_from_earlier_batches(ddb: Any) -> None:
    clock = Clock()  # 1970-01-12T13:46:40Z: the failure comes between the two batches' starts
    store = _store(ddb, clock, {"ord": KeyRule(cap=1, ordered=True)})
    for n in range(3):
        _submit_seq(store, "ord", f"1970-01-12T13:00:00.000Z#arn:early#{n:09d}", n)
    _submit_seq(store, "ord", "1970-01-12T14:00:00.000Z#arn:late#000000000", 3)
    head = store.pick("BATCH")
    assert head is not None
    assert (head.ordered, head.order_broken, _n(head)) == (True, None, 0)
    store.break_order(head, "Sluice.PermanentFailure")
    store.done(head)
    behind = []
    for _ in range(2):
        claimed = store.pick("BATCH")  # one at a time: an ordered key's cap is 1
        assert claimed is not None
        behind.append(claimed)
        assert claimed.order_broken is not None
        assert (
            "item 0 of arn:early, ahead of this one in ordered key 'ord', failed (Sluice.PermanentFailure)"
            in (claimed.order_broken)
        )
        store.done(claimed)
    assert [_n(c) for c in behind] == [1, 2]
    later = store.pick("BATCH")  # its batch started after the failure: it goes on
    assert later is not None
    assert (later.order_broken, _n(later)) == (None, 3)


def test_an_unordered_key_has_no_order_to_break(ddb: Any) -> None:
    clock = Clock()
    store = _store(ddb, clock)
    for n in range(2):
        _submit_seq(store, "free", f"1970-01-12T13:00:00.000Z#arn:early#{n:09d}", n)
    first = store.pick("BATCH")
    assert first is not None
    assert not first.ordered
    store.done(first)
    second = store.pick("BATCH")
    assert second is not None
    assert second.order_broken is None


def test_where_one_keyed_item_stands_is_two_reads_by_key(ddb: Any) -> None:
    """What `sluice explain` reads for a keyed item: its wait record and its key's ledger."""
    clock = Clock()
    store = _store(ddb, clock, {"acme": KeyRule(cap=1)})
    _submit(store, "acme", 3)
    spot = store.spot("BATCH", "acme", f"{2:09d}", clock.now)
    assert (spot.waiting, spot.pending, spot.busy) == (True, 3, 0)
    first = store.pick("BATCH")
    assert first is not None
    taken, other = f"{_n(first):09d}", f"{2 - _n(first) // 2:09d}"  # a key's items go in any order
    assert store.spot("BATCH", "acme", other, clock.now) == type(spot)(waiting=True, pending=3, busy=1)
    # The claimed item is at the API: no longer waiting, and its lease counts as busy.
    assert store.spot("BATCH", "acme", taken, clock.now).waiting is False
    store.done(first)
    assert store.spot("BATCH", "acme", other, clock.now) == type(spot)(waiting=True, pending=2, busy=0)
    assert store.spot("BATCH", "other", f"{2:09d}", clock.now) == type(spot)(waiting=False, pending=0, busy=0)
