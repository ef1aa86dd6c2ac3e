"""The controller Lambda's adapters against moto: the metric queries it sends, the Lambda control
plane calls that set the limit and pause the mappings, and the versioned state item.

What this cannot prove: CloudWatch's EMF ingestion delay (signal_delay_seconds covers it on AWS),
IAM, and the Updating/Enabling states a real mapping passes through (moto applies at once).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from sluice_fanout.handlers import contract
from sluice_fanout.handlers.adapters import CloudWatchSignals, DynamoStore, LambdaControls
from sluice_fanout.handlers.controller import (
    BreakerMode,
    BreakerState,
    ControllerState,
    Deployed,
    Signal,
    StateConflict,
    Stored,
)
from tests.support.idempotency import create_idempotency_table

REGION = "us-east-1"
WORKER = "orders-worker"


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


def put(cw: Any, priority: str, when: int, **metrics: tuple[str, list[float]]) -> None:
    dimensions = [
        {"Name": "FunctionName", "Value": WORKER},
        {"Name": "Priority", "Value": priority},
        {"Name": "service", "Value": "sluice-worker"},
    ]
    cw.put_metric_data(
        Namespace="Sluice",
        MetricData=[
            {
                "MetricName": name,
                "Dimensions": dimensions,
                "Timestamp": datetime.fromtimestamp(when, UTC),
                "Unit": unit,
                "Values": values,
                "StorageResolution": 1,
            }
            for name, (unit, values) in metrics.items()
        ],
    )


def test_signals_sum_every_priority_of_the_worker_within_the_window(aws: None) -> None:
    cw = boto3.client("cloudwatch", region_name=REGION)
    start = int(datetime.now(UTC).timestamp()) // 60 * 60 - 120
    end = start + 10
    put(
        cw,
        "HIGH",
        start + 2,
        ApiCalls=("Count", [1, 1, 1]),
        ApiThrottled=("Count", [1]),
        ApiLatency=("Milliseconds", [1_000, 2_000]),
    )
    put(
        cw,
        "BATCH",
        start + 9,
        ApiCalls=("Count", [1, 1]),
        ApiErrors=("Count", [1]),
        ApiLatency=("Milliseconds", [3_000, 4_000]),
    )
    # Outside the window (after it, and another function's) count for nothing.
    put(cw, "HIGH", end, ApiCalls=("Count", [1] * 50), ApiThrottled=("Count", [1] * 50))
    cw.put_metric_data(
        Namespace="Sluice",
        MetricData=[
            {
                "MetricName": "ApiCalls",
                "Dimensions": [
                    {"Name": "FunctionName", "Value": "other-worker"},
                    {"Name": "Priority", "Value": "HIGH"},
                    {"Name": "service", "Value": "sluice-worker"},
                ],
                "Timestamp": datetime.fromtimestamp(start + 1, UTC),
                "Value": 99,
            }
        ],
    )
    signals = CloudWatchSignals(cw, WORKER, ("HIGH", "NORMAL", "BATCH"))
    assert signals.read(start, end) == Signal(
        calls=5, throttled=1, errors=1, latency_ms=2_500.0, in_flight=1.0
    )
    assert signals.read(start - 10, start) == Signal(
        calls=0, throttled=0, errors=0, latency_ms=0.0, in_flight=0.0
    )


def deploy_worker(reserved: int, maximum: int) -> tuple[Any, list[str]]:
    lam = boto3.client("lambda", region_name=REGION)
    iam = boto3.client("iam", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    role = iam.create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as zf:
        zf.writestr("h.py", "def handler(event, context):\n    return None\n")
    lam.create_function(
        FunctionName=WORKER,
        Runtime="python3.13",
        Role=role,
        Handler="h.handler",
        Code={"ZipFile": code.getvalue()},
    )
    lam.put_function_concurrency(FunctionName=WORKER, ReservedConcurrentExecutions=reserved)
    uuids = []
    for name in ("tickets", "other"):
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        mapping = lam.create_event_source_mapping(
            EventSourceArn=arn, FunctionName=WORKER, ScalingConfig={"MaximumConcurrency": maximum}
        )
        uuids.append(mapping["UUID"])
    return lam, uuids


def test_controls_set_the_limit_and_pause_and_resume_every_mapping(aws: None) -> None:
    lam, uuids = deploy_worker(reserved=8, maximum=8)
    controls = LambdaControls(lam, WORKER, tuple(uuids), logging.getLogger("test"))
    now = controls.deployed()
    assert now == Deployed(8, dict.fromkeys(uuids, (True, 8)))

    # Going down, the mappings first: the pollers never outnumber the old limit's room.
    changes = controls.apply(3, paused=True, now=now)
    assert changes[-1] == "reserved 8 -> 3"
    assert len(changes) == 3
    assert lam.get_function_concurrency(FunctionName=WORKER)["ReservedConcurrentExecutions"] == 3
    assert controls.deployed() == Deployed(3, dict.fromkeys(uuids, (False, 3)))

    # At limit 1 the pollers stay at AWS's minimum of 2; nothing to change twice.
    controls.apply(1, paused=False, now=controls.deployed())
    assert controls.deployed() == Deployed(1, dict.fromkeys(uuids, (True, 2)))
    assert controls.apply(1, paused=False, now=controls.deployed()) == []
    # Going up, reserved concurrency first.
    assert controls.apply(5, paused=False, now=controls.deployed())[0] == "reserved 1 -> 5"


class BusyMapping:
    """moto's Lambda, except that one mapping is still applying an earlier update."""

    def __init__(self, lam: Any, busy: str) -> None:
        self._lam = lam
        self._busy = busy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lam, name)

    def update_event_source_mapping(self, **kwargs: Any) -> Any:
        if kwargs["UUID"] == self._busy:
            raise ClientError({"Error": {"Code": "ResourceInUseException"}}, "UpdateEventSourceMapping")
        return self._lam.update_event_source_mapping(**kwargs)


def test_a_failed_control_call_is_noted_and_the_others_still_run(aws: None) -> None:
    lam, uuids = deploy_worker(reserved=8, maximum=8)
    busy, free = uuids
    controls = LambdaControls(BusyMapping(lam, busy), WORKER, tuple(uuids), logging.getLogger("test"))
    changes = controls.apply(4, paused=True, now=controls.deployed())
    assert [c for c in changes if "failed" in c] == [
        f"mapping {busy} {{'Enabled': False, 'ScalingConfig': {{'MaximumConcurrency': 4}}}} "
        "failed: ResourceInUseException"
    ]
    # The other mapping was still paused and reserved still lowered; the next step retries.
    assert controls.deployed() == Deployed(4, {busy: (True, 8), free: (False, 4)})


def test_the_state_item_is_versioned_and_a_stale_writer_loses(aws: None) -> None:
    ddb = boto3.client("dynamodb", region_name=REGION)
    create_idempotency_table(ddb, "t")
    store = DynamoStore(ddb, "t", WORKER)
    assert store.load() is None
    first = Stored(5, ControllerState(), BreakerState(BreakerMode.OPEN, 1_000.0), 1_000, 1)
    store.save(first)
    assert store.load() == first
    second = Stored(4, ControllerState(), BreakerState(), 1_005, 2)
    store.save(second)
    assert store.load() == second
    with pytest.raises(StateConflict):
        store.save(Stored(6, ControllerState(), BreakerState(), 1_005, 2))  # read version 1, now 2
    with pytest.raises(StateConflict):
        DynamoStore(ddb, "t", WORKER).save(
            Stored(6, ControllerState(), BreakerState(), 1_000, 1)
        )  # no item assumed
    item = ddb.get_item(TableName="t", Key={"id": {"S": contract.CONTROLLER_STATE_PREFIX + WORKER}})["Item"]
    assert json.loads(item["state"]["S"])["limit"] == 4
    assert "expiration" not in item  # never expires: the idempotency table's TTL must not drop it
