"""Run-time limits against moto: the versioned item, a worker's view of it (refreshed, never
trusted when it no longer fits), the slot grant and the live rate, and the command's control-plane
changes with and without the adaptive controller.

What this cannot prove: IAM, and how long AWS takes to apply a concurrency change (moto applies
at once); the embedded end-to-end test shows workers obeying within 10 s.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from sluice_fanout.cli.limits import Stack, Worker, change, parse_assignments, report
from sluice_fanout.handlers import contract
from sluice_fanout.handlers.adapters import LimitsGrant, LimitsStore, LiveLimits, LiveRate
from sluice_fanout.handlers.controller import Deployed as ControlsDeployed
from sluice_fanout.handlers.controller import StateConflict
from sluice_fanout.handlers.fair import KeysSettings
from sluice_fanout.handlers.rate import Grant, interval_for
from sluice_fanout.handlers.runtime_limits import Deployed, Overrides
from tests.integration.test_adaptive_moto import REGION, WORKER, deploy_worker
from tests.support.idempotency import create_idempotency_table

KEYS = KeysSettings(field="tenant", concurrency=2)
DEPLOYED = Deployed(8, None, KEYS, ("HIGH", "BATCH"), 30)


@pytest.fixture
def ddb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        create_idempotency_table(client, "t")
        yield client


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def store_with(ddb: Any, *assignments: str, read: Any = None) -> LimitsStore:
    store = LimitsStore(ddb, "t", WORKER)
    overrides = Overrides().setting(parse_assignments(assignments), DEPLOYED)
    store.save(overrides, read if read is not None else store.load(), by="test", at=1.0)
    return store


def test_the_item_is_versioned_and_a_stale_change_loses(ddb: Any) -> None:
    store = LimitsStore(ddb, "t", WORKER)
    assert store.load() is None
    first = store.save(Overrides({"concurrency": 4}), None, by="alice", at=10.0)
    assert store.load() == first
    assert (first.version, first.updated_by) == (1, "alice")
    second = store.save(Overrides({"concurrency": 3}), first, by="bob", at=11.0)
    assert store.load() == second
    with pytest.raises(StateConflict):
        store.save(Overrides({"concurrency": 6}), first, by="carol", at=12.0)  # read version 1, now 2
    with pytest.raises(StateConflict):
        store.save(Overrides({"concurrency": 6}), None, by="carol", at=12.0)  # assumed no item
    item = ddb.get_item(TableName="t", Key={"id": {"S": contract.LIMITS_PREFIX + WORKER}})["Item"]
    assert json.loads(item["limits"]["S"]) == {"concurrency": 3}
    assert "expiration" not in item  # the table's TTL must never drop an operator's limits


def test_a_worker_sees_a_change_after_its_refresh_interval(ddb: Any) -> None:
    clock = Clock()
    live = LiveLimits(
        LimitsStore(ddb, "t", WORKER), DEPLOYED, logging.getLogger("t"), refresh_s=5, clock=clock
    )
    assert live.now().concurrency == 8
    assert live.keys_rule("acme", "BATCH").cap == 2
    store_with(ddb, "concurrency=3", "keys.concurrencyPerKey.acme=1")
    clock.now += 4.9
    assert live.now().concurrency == 8
    clock.now += 0.2
    assert live.now().concurrency == 3
    assert live.concurrency_override() == 3
    assert live.keys_rule("acme", "BATCH").cap == 1


def test_overrides_that_no_longer_fit_are_ignored_with_a_warning(
    ddb: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store_with(ddb, "keys.weights.acme=3", "concurrency=5")
    # A later deploy removed the stack's keys: the stored keys limits cannot apply.
    without_keys = Deployed(8, None, None, ("HIGH", "BATCH"), 30)
    live = LiveLimits(LimitsStore(ddb, "t", WORKER), without_keys, logging.getLogger("t"))
    with caplog.at_level(logging.WARNING):
        effective = live.now()
    assert effective.concurrency == 8
    assert live.concurrency_override() is None
    assert "do not fit this deployment" in caplog.text


def test_a_slot_is_given_back_once_the_operator_lowers_the_concurrency(ddb: Any) -> None:
    clock = Clock()
    live = LiveLimits(
        LimitsStore(ddb, "t", WORKER), DEPLOYED, logging.getLogger("t"), refresh_s=0, clock=clock
    )
    grant = LimitsGrant(live)
    grant.start()
    assert grant.granted()
    store = store_with(ddb, "concurrency=4")  # an override appearing counts as lower
    assert not grant.granted()
    grant.start()  # a new invocation, started under 4
    assert grant.granted()
    store_with(ddb, "concurrency=6", read=store.load())
    assert grant.granted()  # raised: keep going
    store_with(ddb, "concurrency=3", read=store.load())
    assert not grant.granted()


def test_the_rate_follows_the_operator_from_the_next_reservation(ddb: Any) -> None:
    clock = Clock()
    live = LiveLimits(LimitsStore(ddb, "t", WORKER), DEPLOYED, logging.getLogger("t"), refresh_s=0)
    rate = LiveRate(live, ddb, "t", WORKER, clock=clock)
    assert rate.reserve(max_wait=10) == Grant(at=100.0, wait=0.0, tat=100.0)  # no limit: at once
    assert rate.reserve(max_wait=10) == Grant(at=100.0, wait=0.0, tat=100.0)
    store_with(ddb, "callsPerSecond=2")
    first, second = rate.reserve(max_wait=10), rate.reserve(max_wait=10)
    assert isinstance(first, Grant)
    assert isinstance(second, Grant)
    # The stored TAT keeps microseconds: the spacing is the interval to that precision.
    assert second.at - first.at == pytest.approx(interval_for(2), abs=1e-5)


@pytest.fixture
def worker(ddb: Any) -> tuple[Any, list[str]]:
    del ddb  # the same moto
    lam, uuids = deploy_worker(reserved=8, maximum=8)
    env = {
        contract.ENV_QUEUES: json.dumps([{"priority": p} for p in ("HIGH", "BATCH")]),
        contract.ENV_CONCURRENCY: "8",
        contract.ENV_KEYS: KEYS.to_json(),
    }
    lam.update_function_configuration(FunctionName=WORKER, Timeout=30, Environment={"Variables": env})
    return lam, uuids


def mappings(lam: Any, uuids: list[str]) -> list[int]:
    return [lam.get_event_source_mapping(UUID=u)["ScalingConfig"]["MaximumConcurrency"] for u in uuids]


def test_set_and_unset_apply_the_concurrency_to_the_worker(ddb: Any, worker: tuple[Any, list[str]]) -> None:
    lam, uuids = worker
    stack = Stack(WORKER, "t", adaptive=False, region=REGION)
    store = LimitsStore(ddb, "t", WORKER)
    view = Worker(lam, stack)
    changes = change(stack, view, store, lambda o, d: o.setting([("concurrency", "3")], d), by="ops")
    assert changes == [f"mapping {uuids[0]} {{'ScalingConfig': {{'MaximumConcurrency': 3}}}}",
                       f"mapping {uuids[1]} {{'ScalingConfig': {{'MaximumConcurrency': 3}}}}",
                       "reserved 8 -> 3"]  # fmt: skip
    assert view.controls().deployed() == ControlsDeployed(3, dict.fromkeys(uuids, (True, 3)))
    # A change of another limit leaves the control plane alone when it is already right.
    assert change(stack, view, store, lambda o, d: o.setting([("keys.weights.a", "2")], d), by="ops") == []
    change(stack, view, store, lambda o, d: o.unsetting(["concurrency"], d), by="ops")
    assert view.controls().deployed() == ControlsDeployed(8, dict.fromkeys(uuids, (True, 8)))
    shown = report(stack, view, store)
    assert shown["version"] == 3
    assert shown["reservedConcurrency"] == 8
    assert [r["name"] for r in shown["limits"] if r["overridden"]] == ["keys.weights.a"]


def test_with_the_controller_the_command_only_lowers_the_limit_at_once(
    ddb: Any, worker: tuple[Any, list[str]]
) -> None:
    lam, uuids = worker
    stack = Stack(WORKER, "t", adaptive=True, region=REGION)
    store = LimitsStore(ddb, "t", WORKER)
    view = Worker(lam, stack)
    change(stack, view, store, lambda o, d: o.setting([("concurrency", "5")], d), by="ops")
    assert view.controls().deployed() == ControlsDeployed(5, dict.fromkeys(uuids, (True, 5)))
    # Raising is the controller's to do, step by step, as it probes the API.
    assert change(stack, view, store, lambda o, d: o.setting([("concurrency", "7")], d), by="ops") == []
    assert view.applied() == 5
    # A paused (disabled) mapping stays paused: the breaker's, not the command's, to resume.
    lam.update_event_source_mapping(UUID=uuids[0], Enabled=False)
    change(stack, view, store, lambda o, d: o.setting([("concurrency", "2")], d), by="ops")
    assert view.controls().deployed() == ControlsDeployed(2, {uuids[0]: (False, 2), uuids[1]: (True, 2)})
