"""Report helpers, and the report over results read from S3."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from localcloud.deploy import DeployedStack
from localcloud.moto_results import child_record, manifest, result_files
from localcloud.report import build_report, percentile
from localcloud.results import results_from_files
from localcloud.runner import ExecutionRecord, RunResult, batch_items, batch_source
from localcloud.scenario import Batch, Scenario


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 50, None), ([3.0], 95, 3.0), ([1, 2, 3, 4], 50, 2), ([1, 2, 3, 4], 95, 4), ([5, 1, 3], 50, 3)],
)
def test_percentile_nearest_rank(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


# ---- per-item outcomes from a Map Run's result files (inline and S3-source batches alike) ----


def _child(index: int, output: dict[str, Any] | None, status: str = "SUCCEEDED") -> dict[str, Any]:
    return child_record(
        execution_arn=f"arn:aws:states:us-east-1:123456789012:execution:sm/FromS3:{index}",
        state_machine_arn="arn:aws:states:us-east-1:123456789012:stateMachine:sm/FromS3",
        name=str(index),
        status=status,
        child_input=json.dumps({"item": {"id": f"i{index}"}, "index": index, "execution": "arn:parent"}),
        output=json.dumps(output),
        error=None if status == "SUCCEEDED" else "States.Runtime",
        cause=None if status == "SUCCEEDED" else "boom",
        start=0.0,
        stop=1.0,
    )


def _stored(records: list[dict[str, Any]], max_bytes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and the files a ResultWriter would store, split at `max_bytes`."""
    objects: dict[str, Any] = {}
    listed: dict[str, list[tuple[str, int]]] = {}
    for group, bodies in result_files(records, max_bytes).items():
        for n, body in enumerate(bodies):
            objects[f"results/run/{group}_{n}.json"] = json.loads(body)
            listed.setdefault(group, []).append((f"results/run/{group}_{n}.json", len(body)))
    return manifest(bucket="b", map_run_arn="arn:run", files=listed), objects


def test_outcomes_come_from_every_result_file_in_item_order() -> None:
    # Five items: 0-2 throttled, 3 direct, 4 a child that failed outright (no structured result).
    records = [
        _child(2, {"status": "FAILED", "index": 2, "priority": "BATCH", "error": {"Error": "x"}}),
        _child(0, {"status": "SUCCEEDED", "index": 0, "priority": "HIGH", "result": 1}),
        _child(3, {"status": "SUCCEEDED", "index": 3, "path": "DIRECT", "result": 2}),
        _child(1, {"status": "SUCCEEDED", "index": 1, "priority": "BATCH", "result": 3}),
        _child(4, None, status="FAILED"),
    ]
    listing, objects = _stored(records, max_bytes=900)  # a few records per file
    assert len(listing["ResultFiles"]["SUCCEEDED"]) > 1
    read: list[str] = []

    def read_json(key: str) -> Any:
        read.append(key)
        return objects[key]

    outcomes = results_from_files(listing, read_json)
    assert [(e["index"], e["status"], e.get("priority")) for e in outcomes] == [
        (0, "SUCCEEDED", "HIGH"),
        (1, "SUCCEEDED", "BATCH"),
        (2, "FAILED", "BATCH"),
        (3, "SUCCEEDED", None),
        (4, "FAILED", None),
    ]
    assert outcomes[4]["error"] == "States.Runtime"
    assert sorted(read) == sorted(objects)  # each file read once


def _run(scenario: Scenario, record: ExecutionRecord) -> RunResult:
    return RunResult(
        scenario=scenario,
        executions=[record],
        calls=[],
        enqueued_at={},
        worker_stats={"invocations": 0},
        mapping_stats=[],
        worker_logs=[],
        stack=DeployedStack(outputs={}, mappings=[]),
        wall_s=1.0,
        requests={},
        parent_transitions=0,
    )


def test_an_s3_source_run_is_counted_exactly_by_priority() -> None:
    scenario = Scenario(
        name="s3", batches=(Batch(start_s=0, counts={"HIGH": 2, "BATCH": 2}, direct=1),), source="s3"
    )
    items = batch_items(scenario, 0)
    outcomes = [
        {"status": "SUCCEEDED", "index": 0, "priority": "HIGH"},
        {"status": "FAILED", "index": 1, "priority": "HIGH"},
        {"status": "SUCCEEDED", "index": 2, "priority": "BATCH"},
        {"status": "SUCCEEDED", "index": 3, "priority": "BATCH"},
        {"status": "SUCCEEDED", "index": 4, "path": "DIRECT"},
    ]
    record = ExecutionRecord(
        "arn:e",
        0,
        items,
        0.0,
        status="SUCCEEDED",
        output={
            "total": 5,
            "succeeded": 4,
            "failed": 1,
            "results_location": {"bucket": "b", "manifest_key": "k"},
        },
        source="s3",
        results=outcomes,
    )
    report = build_report(_run(scenario, record))
    assert report["items"] == {
        "total": 5,
        "throttled": 4,
        "direct": 1,
        "succeeded": 4,
        "failed": 1,
        "lost": 0,
    }
    assert {p: (v["succeeded"], v["failed"]) for p, v in report["by_priority"].items()} == {
        "BATCH": (2, 0),
        "HIGH": (1, 1),
    }


@pytest.mark.parametrize(
    ("requested", "inline_bytes", "chosen"),
    [
        ("auto", 262_144, "inline"),
        ("auto", 262_145, "s3"),
        ("inline", 10_000_000, "inline"),  # sent as asked: Step Functions refuses it
        ("s3", 10, "s3"),
    ],
)
def test_batch_source(requested: str, inline_bytes: int, chosen: str) -> None:
    assert batch_source(requested, inline_bytes) == chosen


def test_the_report_counts_the_workers_events_by_their_structured_field() -> None:
    scenario = Scenario(name="events", batches=(Batch(start_s=0, counts={"HIGH": 1}, direct=0),))
    record = ExecutionRecord("arn:e", 0, batch_items(scenario, 0), 0.0, status="SUCCEEDED", output={})
    logs = [
        {"message": "yielded to higher priority work", "event": "yielded"},
        {"message": "worded differently one day", "event": "yielded"},
        {"message": "forced past waiting higher priority work", "event": "forced"},
        {"message": "empty ticket returned", "event": "empty_ticket"},
        {"message": "orphan ticket dropped", "event": "orphan_ticket"},
        # Text alone is not an event (a debug line quoting it, say).
        {"message": "yielded to higher priority work"},
        {"message": "yielded to higher priority work"},
    ]
    run = _run(scenario, record)
    run.worker_logs = logs
    worker = build_report(run)["worker"]
    assert (worker["yields"], worker["forced"], worker["empty_tickets"]) == (2, 1, 2)


def test_the_reports_event_names_are_the_workers() -> None:
    from localcloud import report
    from sluice_fanout.handlers import contract

    assert report.LOG_EVENT == contract.LOG_EVENT
    assert report.YIELD_EVENT == contract.EVENT_YIELDED
    assert report.FORCED_EVENT == contract.EVENT_FORCED
    assert set(report.EMPTY_TICKET_EVENTS) == {contract.EVENT_EMPTY_TICKET, contract.EVENT_ORPHAN_TICKET}
    assert report.SLOT_TIME_EVENT == contract.EVENT_SLOT_TIME


def test_the_benchmarks_result_names_are_the_contracts() -> None:
    from localcloud import bench
    from sluice_fanout.handlers import contract

    assert bench.DIRECT_PATH == contract.DIRECT_PATH
    assert bench.ERROR_UNKNOWN_PRIORITY == contract.ERROR_UNKNOWN_PRIORITY


def test_saturated_utilization_counts_only_while_an_item_waits() -> None:
    from localcloud.legacy_api import Call

    # Limit 2 (the scenario's API), 4 items. Calls: a [0, 1] and b [0, 1] fill both slots; c waits
    # from 0.5 and starts at 1.2 (0.2 s idle with work waiting); d waits from 0.5 and starts at
    # 1.0; nothing waits after 1.2, and the slot idle from 2.0 to 3.0 is the tail.
    scenario = Scenario(name="sat", batches=(Batch(start_s=0, counts={"BATCH": 4}, direct=0),))
    record = ExecutionRecord("arn:e", 0, batch_items(scenario, 0), 0.0, status="SUCCEEDED", output={})
    run = _run(
        dataclasses.replace(scenario, api=dataclasses.replace(scenario.api, concurrency_limit=2)), record
    )
    run.calls = [
        Call(0.0, 1.0, "arn:e#0", 0, "BATCH", 1, 200),
        Call(0.0, 1.0, "arn:e#1", 1, "BATCH", 2, 200),
        Call(1.0, 3.0, "arn:e#3", 3, "BATCH", 1, 200),
        Call(1.2, 2.0, "arn:e#2", 2, "BATCH", 2, 200),
    ]
    run.enqueued_at = {"arn:e#0": 0.0, "arn:e#1": 0.0, "arn:e#2": 0.5, "arn:e#3": 0.5}
    down = build_report(run)["downstream"]
    # Waiting from 0.5 to 1.2: busy 2 x 0.5 (a, b) + 0.2 (d from 1.0) = 1.2 of 2 x 0.7.
    assert down["saturated_s"] == 0.7
    assert down["saturated_utilization"] == round(1.2 / 1.4, 3)
    assert down["utilization"] == round(4.8 / 6.0, 3)


def test_the_report_adds_up_the_workers_slot_time() -> None:
    scenario = Scenario(name="slots", batches=(Batch(start_s=0, counts={"HIGH": 1}, direct=0),))
    record = ExecutionRecord("arn:e", 0, batch_items(scenario, 0), 0.0, status="SUCCEEDED", output={})
    run = _run(scenario, record)
    run.worker_logs = [
        {
            "event": "slot_time",
            "invocation_ms": 1500.0,
            "parts_ms": {"api_call": 1000.0, "ReceiveMessage": 20.0},
        },
        {"event": "slot_time", "invocation_ms": 500.0, "parts_ms": {"ReceiveMessage": 5.0}},
        {"message": "slot time"},  # text alone is not the event
    ]
    assert build_report(run)["worker"]["slot_time"] == {
        "invocations_s": 2.0,
        "parts_s": {"ReceiveMessage": 0.025, "api_call": 1.0},
    }
