"""The aggregate: inline results and ResultWriter output in S3 (moto)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from sluice_fanout.handlers.aggregate import aggregate, handle
from sluice_fanout.handlers.contract import ERROR_RESULT_MISSING, RESULT_POINTER_FIELD

SUCCESS_HIGH = {"status": "SUCCEEDED", "index": 0, "priority": "HIGH", "result": {"n": 1}}
FAILED_BATCH = {
    "status": "FAILED",
    "index": 1,
    "priority": "BATCH",
    "error": {"Error": "Sluice.PermanentFailure", "Cause": "HTTP 400"},
}
DIRECT = {"status": "SUCCEEDED", "index": 2, "path": "DIRECT", "result": {"id": "x"}}
UNKNOWN = {"status": "FAILED", "index": 3, "error": {"Error": "Sluice.UnknownPriority", "Cause": "bad"}}


def test_aggregate_counts_by_status_and_priority() -> None:
    summary = aggregate([SUCCESS_HIGH, FAILED_BATCH, DIRECT, UNKNOWN, None])
    assert summary == {
        "total": 5,
        "succeeded": 2,
        "failed": 3,
        "by_priority": {
            "BATCH": {"total": 1, "succeeded": 0, "failed": 1},
            "DIRECT": {"total": 3, "succeeded": 1, "failed": 2},
            "HIGH": {"total": 1, "succeeded": 1, "failed": 0},
        },
        "failures": [
            {"index": 1, "priority": "BATCH", "error": "Sluice.PermanentFailure", "cause": "HTTP 400"},
            {"index": 3, "priority": None, "error": "Sluice.UnknownPriority", "cause": "bad"},
            {
                "index": 4,
                "priority": None,
                "error": "Sluice.ChildExecutionFailed",
                "cause": "child execution returned null",
            },
        ],
        "failures_not_listed": 0,
    }


def test_handle_inline_keeps_results_and_execution() -> None:
    out = handle({"map_output": [SUCCESS_HIGH], "execution": "arn:exec"}, s3=None)
    assert out["results"] == [SUCCESS_HIGH]
    assert out["execution"] == "arn:exec"
    assert out["total"] == 1


def test_inline_results_too_big_for_the_output_are_omitted_with_the_fix() -> None:
    big = [{"status": "SUCCEEDED", "index": i, "result": {"blob": "x" * 1_000}} for i in range(300)]
    out = handle({"map_output": big, "execution": "arn:exec"}, s3=None)
    assert out["total"] == 300
    assert "results" not in out
    assert '"source"' in out["results_omitted"]
    assert len(json.dumps(out)) < 262_144


def test_failure_causes_are_cut_short() -> None:
    failed = {"status": "FAILED", "index": 0, "error": {"Error": "E", "Cause": "c" * 10_000}}
    assert len(aggregate([failed])["failures"][0]["cause"]) == 500


def test_handle_refuses_an_unknown_shape() -> None:
    with pytest.raises(ValueError, match="map_output"):
        handle({"map_output": "nope"}, s3=None)


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="results")
        yield client


def _record(status: str, index: int, output: Any = None, error: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "ExecutionArn": f"arn:aws:states:us-east-1:123456789012:execution:sm/run:{index}",
        "Input": json.dumps({"item": {}, "index": index, "execution": "arn:parent"}),
        "Status": status,
    }
    if output is not None:
        record["Output"] = json.dumps(output)
    if error is not None:
        record["Error"] = error
        record["Cause"] = "boom"
    return record


def test_handle_reads_result_writer_output_in_batch_order(s3: Any) -> None:
    """The manifest and result-file shapes AWS documents for a Distributed Map ResultWriter."""
    s3.put_object(
        Bucket="results",
        Key="results/run/SUCCEEDED_0.json",
        Body=json.dumps([_record("SUCCEEDED", 2, DIRECT), _record("SUCCEEDED", 0, SUCCESS_HIGH)]),
    )
    s3.put_object(
        Bucket="results",
        Key="results/run/FAILED_0.json",
        Body=json.dumps([_record("FAILED", 1, error="States.Runtime")]),
    )
    manifest = {
        "DestinationBucket": "results",
        "MapRunArn": "arn:aws:states:us-east-1:123456789012:mapRun:sm/run:x",
        "ResultFiles": {
            "FAILED": [{"Key": "results/run/FAILED_0.json", "Size": 1}],
            "PENDING": [],
            "SUCCEEDED": [{"Key": "results/run/SUCCEEDED_0.json", "Size": 1}],
        },
    }
    s3.put_object(Bucket="results", Key="results/run/manifest.json", Body=json.dumps(manifest))

    out = handle(
        {
            "map_output": {"ResultWriterDetails": {"Bucket": "results", "Key": "results/run/manifest.json"}},
            "execution": "arn:exec",
        },
        s3=lambda: s3,
    )
    assert out["total"] == 3
    assert out["succeeded"] == 2
    assert out["failures"] == [{"index": 1, "priority": None, "error": "States.Runtime", "cause": "boom"}]
    assert out["results_location"] == {"bucket": "results", "manifest_key": "results/run/manifest.json"}
    assert "results" not in out


def pointer_entry(index: int, key: str) -> dict[str, Any]:
    return {
        "status": "SUCCEEDED",
        "index": index,
        "priority": "NORMAL",
        "result": {RESULT_POINTER_FIELD: {"bucket": "results", "key": key, "bytes": 300_000}},
    }


def test_spilled_results_are_checked_and_listed_with_their_location(s3: Any) -> None:
    s3.create_bucket(Bucket="results")
    s3.put_object(Bucket="results", Key="item-results/sm/ex/0.json", Body=b"x" * 300_000)
    entries = [pointer_entry(0, "item-results/sm/ex/0.json"), pointer_entry(1, "item-results/sm/ex/1.json")]

    out = handle({"map_output": entries, "execution": "arn:exec"}, s3=lambda: s3)

    assert out["results_in_s3"] == [
        {"index": 0, "bucket": "results", "key": "item-results/sm/ex/0.json", "bytes": 300_000}
    ]
    # A pointer to nothing is no result: the item is a recorded failure, not a silent success.
    assert (out["succeeded"], out["failed"]) == (1, 1)
    assert out["failures"][0]["index"] == 1
    assert out["failures"][0]["error"] == ERROR_RESULT_MISSING
