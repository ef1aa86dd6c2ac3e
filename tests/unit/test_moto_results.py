"""The embedded AWS's ResultWriter output: the record, file and manifest format AWS documents
for a Distributed Map's results in S3, and how results are split across files."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localcloud.moto_results import (
    RESULT_FILE_MAX_BYTES,
    child_record,
    input_too_large_message,
    iso_utc,
    manifest,
    result_files,
    result_prefix,
)

ARN = "arn:aws:states:us-east-1:123456789012:execution:sm/FromS3:c0"
MACHINE = "arn:aws:states:us-east-1:123456789012:stateMachine:sm/FromS3"


def record(status: str, index: int = 0, output: Any = None) -> dict[str, Any]:
    return child_record(
        execution_arn=ARN,
        state_machine_arn=MACHINE,
        name="c0",
        status=status,
        child_input=json.dumps({"index": index}),
        output=json.dumps(output),
        error=None if status == "SUCCEEDED" else "Boom",
        cause=None if status == "SUCCEEDED" else "asked to",
        start=1_700_000_000.0,
        stop=1_700_000_001.5,
    )


def test_a_succeeded_child_record_has_aws_fields() -> None:
    assert record("SUCCEEDED", output={"i": 0}) == {
        "ExecutionArn": ARN,
        "Input": '{"index": 0}',
        "InputDetails": {"Included": True},
        "Name": "c0",
        "Output": '{"i": 0}',
        "OutputDetails": {"Included": True},
        "RedriveCount": 0,
        "RedriveStatus": "NOT_REDRIVABLE",
        "RedriveStatusReason": "Execution is SUCCEEDED and cannot be redriven",
        "StartDate": "2023-11-14T22:13:20.000Z",
        "StateMachineArn": MACHINE,
        "Status": "SUCCEEDED",
        "StopDate": "2023-11-14T22:13:21.500Z",
    }


def test_a_failed_child_record_has_error_and_cause_and_no_output() -> None:
    failed = record("FAILED")
    assert (failed["Error"], failed["Cause"]) == ("Boom", "asked to")
    assert "Output" not in failed
    assert "OutputDetails" not in failed


def test_records_are_grouped_by_status_in_order() -> None:
    records = [record("SUCCEEDED", 0), record("FAILED", 1), record("TIMED_OUT", 2), record("SUCCEEDED", 3)]
    files = result_files(records)
    assert [[r["Input"] for r in json.loads(f)] for f in files["SUCCEEDED"]] == [
        ['{"index": 0}', '{"index": 3}']
    ]
    assert [[r["Status"] for r in json.loads(f)] for f in files["FAILED"]] == [["FAILED", "TIMED_OUT"]]
    assert files["PENDING"] == []


@pytest.mark.parametrize("per_file", [1, 2, 3, 7])
def test_files_are_split_at_the_size_cap_and_lose_nothing(per_file: int) -> None:
    records = [record("SUCCEEDED", i, {"i": i}) for i in range(7)]
    one = len(json.dumps(records[0], separators=(",", ":")).encode())
    # Room for exactly `per_file` records: brackets, records and the commas between them.
    cap = 2 + per_file * one + (per_file - 1)
    files = result_files(records, max_bytes=cap)["SUCCEEDED"]
    assert [len(json.loads(f)) for f in files] == [per_file] * (7 // per_file) + (
        [7 % per_file] if 7 % per_file else []
    )
    assert all(len(f) <= cap for f in files)
    assert [r["Input"] for f in files for r in json.loads(f)] == [json.dumps({"index": i}) for i in range(7)]


def test_a_record_larger_than_the_cap_gets_a_file_of_its_own() -> None:
    files = result_files([record("SUCCEEDED", 0), record("SUCCEEDED", 1)], max_bytes=10)["SUCCEEDED"]
    assert len(files) == 2


def test_the_cap_is_what_one_s3_put_object_can_store() -> None:
    assert RESULT_FILE_MAX_BYTES == 5 * 1024**3


def test_manifest_lists_every_group() -> None:
    assert manifest(bucket="b", map_run_arn="arn:run", files={"SUCCEEDED": [("r/S_0.json", 10)]}) == {
        "DestinationBucket": "b",
        "MapRunArn": "arn:run",
        "ResultFiles": {"FAILED": [], "PENDING": [], "SUCCEEDED": [{"Key": "r/S_0.json", "Size": 10}]},
    }


@pytest.mark.parametrize(
    ("prefix", "expected"), [("results", "results/run-id/"), ("results/", "results/run-id/"), ("", "run-id/")]
)
def test_result_prefix(prefix: str, expected: str) -> None:
    assert result_prefix(prefix, "arn:aws:states:us-east-1:1:mapRun:sm/L:run-id") == expected


def test_iso_utc_has_milliseconds() -> None:
    assert iso_utc(0.25) == "1970-01-01T00:00:00.250Z"


def test_the_input_limit_message_says_where_large_batches_go() -> None:
    message = input_too_large_message(300_000)
    assert "262144" in message
    assert "300000 bytes" in message
    assert '{"source": {"bucket": "...", "key": "..."}}' in message
