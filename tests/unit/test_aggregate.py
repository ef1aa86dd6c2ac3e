"""The aggregate: inline results and ResultWriter output in S3 (moto)."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from localcloud.moto_results import RESULT_FILE_MAX_BYTES, child_record, manifest, result_files
from sluice_fanout.handlers.aggregate import (
    MAX_FAILURES_LISTED,
    SFN_MAX_OUTPUT_BYTES,
    Tally,
    aggregate,
    handle,
    json_array_items,
    result_writer_entries,
)
from sluice_fanout.handlers.contract import ERROR_RESULT_MISSING, RESULT_POINTER_FIELD

ROOT = Path(__file__).resolve().parents[2]

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


def test_a_direct_functions_result_takes_its_index_from_its_position() -> None:
    # The direct function's state cannot see the child's input: its result has no index, and
    # the ResultWriter's record of the child gives it.
    direct = {"status": "SUCCEEDED", "path": "DIRECT", "result": {"v": 1}}
    manifest = {"ResultFiles": {"SUCCEEDED": [{"Key": "k"}]}}
    records = [{"Status": "SUCCEEDED", "Input": json.dumps({"index": 7}), "Output": json.dumps(direct)}]
    entries = list(result_writer_entries(manifest, lambda _key: records))
    tally = Tally()
    assert [tally.add(index, entry) for index, entry in entries] == [direct | {"index": 7}]


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


def _write_results(s3: Any, entries: list[dict[str, Any]], max_bytes: int) -> str:
    """Store `entries` (Sluice child outputs) as the embedded AWS's ResultWriter does; the
    manifest's key."""
    records = [
        child_record(
            execution_arn=f"arn:aws:states:us-east-1:123456789012:execution:sm/Inline:{e['index']}",
            state_machine_arn="arn:aws:states:us-east-1:123456789012:stateMachine:sm/Inline",
            name=str(e["index"]),
            status="SUCCEEDED",
            child_input=json.dumps({"item": {}, "index": e["index"], "execution": "arn:parent"}),
            output=json.dumps(e),
            error=None,
            cause=None,
            start=0.0,
            stop=1.0,
        )
        for e in entries
    ]
    listed: dict[str, list[tuple[str, int]]] = {}
    for group, bodies in result_files(records, max_bytes).items():
        for n, body in enumerate(bodies):
            key = f"results/run/{group}_{n}.json"
            s3.put_object(Bucket="results", Key=key, Body=body)
            listed.setdefault(group, []).append((key, len(body)))
    key = "results/run/manifest.json"
    s3.put_object(
        Bucket="results",
        Key=key,
        Body=json.dumps(manifest(bucket="results", map_run_arn="arn:run", files=listed)),
    )
    return key


def test_aggregate_reads_every_split_result_file(s3: Any) -> None:
    entries = [
        {"status": "SUCCEEDED", "index": i, "priority": "HIGH", "result": {"n": i}}
        if i % 3
        else {
            "status": "FAILED",
            "index": i,
            "priority": "BATCH",
            "error": {"Error": "Sluice.PermanentFailure", "Cause": "400"},
        }
        for i in range(30)
    ]
    key = _write_results(s3, entries, max_bytes=2_000)
    assert (
        len(json.loads(s3.get_object(Bucket="results", Key=key)["Body"].read())["ResultFiles"]["SUCCEEDED"])
        > 3
    )
    out = handle({"map_output": {"ResultWriterDetails": {"Bucket": "results", "Key": key}}}, s3=lambda: s3)
    assert (out["total"], out["succeeded"], out["failed"]) == (30, 20, 10)
    assert out["by_priority"] == {
        "BATCH": {"total": 10, "succeeded": 0, "failed": 10},
        "HIGH": {"total": 20, "succeeded": 20, "failed": 0},
    }
    assert [f["index"] for f in out["failures"]] == list(range(0, 30, 3))


def test_the_aggregate_output_stays_under_256_kib_for_a_large_batch(s3: Any) -> None:
    long_cause = "x" * 5_000
    entries = [
        {
            "status": "FAILED",
            "index": i,
            "priority": "BATCH",
            "error": {"Error": "Sluice.PermanentFailure", "Cause": long_cause},
        }
        for i in range(3_000)
    ]
    key = _write_results(s3, entries, max_bytes=RESULT_FILE_MAX_BYTES)
    out = handle({"map_output": {"ResultWriterDetails": {"Bucket": "results", "Key": key}}}, s3=lambda: s3)
    assert out["failed"] == 3_000
    assert out["failures_not_listed"] == 3_000 - MAX_FAILURES_LISTED
    assert len(json.dumps(out).encode()) < SFN_MAX_OUTPUT_BYTES


# ---- result files parsed one record at a time ------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(items=st.lists(_JSON, max_size=12), indent=st.sampled_from([None, 0, 2]), compact=st.booleans())
def test_a_json_array_is_read_item_by_item_as_json_reads_it_whole(
    items: list[Any], indent: int | None, compact: bool
) -> None:
    text = json.dumps(items, indent=indent, separators=(",", ":") if compact else None)
    assert list(json_array_items(text)) == json.loads(text)
    padded = f" \n{text}\n "
    assert list(json_array_items(padded)) == json.loads(padded)


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


@given(items=st.lists(_JSON, max_size=12), indent=st.sampled_from([None, 2]), size=st.integers(1, 9))
def test_a_json_array_read_in_chunks_of_its_bytes_is_what_json_reads_whole(
    items: list[Any], indent: int | None, size: int
) -> None:
    """Chunks cut anywhere: inside a string, a number, a literal, a multi-byte character."""
    text = json.dumps(items, indent=indent, ensure_ascii=False)
    assert list(json_array_items(_chunks(text.encode(), size))) == json.loads(text)


def test_a_number_cut_at_a_chunk_boundary_is_read_whole() -> None:
    chunks = [b"[12", b"34, tr", b"ue, 0", b".", b"5e", b"-1, 6]"]
    assert list(json_array_items(chunks)) == [1234, True, 0.05, 6]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"not": "an array"}', "one JSON array"),
        ("", "one JSON array"),
        ("[1, 2", "malformed at character 5"),
        ("[1 2]", "malformed at character 3"),
        ("[1, 2] [3]", "malformed at character 5"),
    ],
)
def test_anything_but_one_json_array_is_refused_saying_where(text: str, where: str) -> None:
    with pytest.raises(ValueError, match=where):
        list(json_array_items(text))
    # Counted from the start of the file, however it arrived.
    with pytest.raises(ValueError, match=where):
        list(json_array_items(_chunks(text.encode(), 2)))


def _peak_bytes(read: Any) -> int:
    tracemalloc.start()
    try:
        read()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def peaks_of_result_file_reads() -> None:
    """Run in a process of its own, as `peaks_of_summaries`: prints the peak of a result file
    parsed whole, streamed from its text, streamed from 64 KiB chunks, and the file's size."""
    records = [
        child_record(
            execution_arn=f"arn:aws:states:us-east-1:123456789012:execution:m/run:{n}",
            state_machine_arn="arn:aws:states:us-east-1:123456789012:stateMachine:m/run",
            name=str(n),
            status="SUCCEEDED",
            child_input=json.dumps({"index": n, "item": {"id": f"item-{n}"}}),
            output=json.dumps({"status": "SUCCEEDED", "index": n, "result": {"accepted": n}}),
            error=None,
            cause=None,
            start=0.0,
            stop=1.0,
        )
        for n in range(5_000)
    ]
    text = json.dumps(records)
    del records

    def count(items: Any) -> None:
        assert sum(1 for _ in items) == 5_000

    whole = _peak_bytes(lambda: count(json.loads(text)))
    streamed = _peak_bytes(lambda: count(json_array_items(text)))
    data = text.encode()
    size = 65_536
    chunks = (data[start : start + size] for start in range(0, len(data), size))
    chunked = _peak_bytes(lambda: count(json_array_items(chunks)))
    print(whole, streamed, chunked, len(data))


def _printed_in_own_process(function: str) -> list[int]:
    """The numbers a function of this module prints, run in a fresh interpreter (tracemalloc
    then sees only its allocations)."""
    done = subprocess.run(  # noqa: S603 - this interpreter, and a function name of this module
        [sys.executable, "-c", f"from tests.unit.test_aggregate import {function} as f; f()"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=ROOT,
    )
    return [int(word) for word in done.stdout.split()]


def test_a_result_file_is_never_held_parsed_whole() -> None:
    """100,000 records parsed whole were about four times the file in live objects. Measured in
    a process of its own: in the full run, other tests' servers allocated during the measurement
    and once pushed the chunked read's peak over its bound."""
    whole, streamed, chunked, file_size = _printed_in_own_process("peaks_of_result_file_reads")
    assert streamed * 20 < whole
    # From S3 in chunks, not even the file's bytes or text are held: a chunk and a record.
    assert chunked * 10 < file_size


def _records(count: int) -> Iterator[dict[str, Any]]:
    """Child records made as they are read, as `json_array_items` does from S3; every third failed."""
    for n in reversed(range(count)):
        failed = n % 3 == 0
        yield {
            "Status": "FAILED" if failed else "SUCCEEDED",
            "Input": json.dumps({"index": n, "item": {"id": f"item-{n}"}}),
            "Output": None if failed else json.dumps({"status": "SUCCEEDED", "index": n, "priority": "HIGH"}),
            "Error": "States.TaskFailed" if failed else None,
            "Cause": f"item {n} failed" if failed else None,
        }


def _summarise(count: int) -> dict[str, Any]:
    tally = Tally()
    files = {"ResultFiles": {"SUCCEEDED": [{"Key": "results.json"}]}}
    for position, entry in result_writer_entries(files, lambda _key: _records(count)):
        tally.add(position, entry)
    return tally.summary()


def peaks_of_summaries() -> None:
    """Run in a process of its own: tracemalloc counts every thread's allocations, and other
    tests' servers and pollers may still be running in the test process."""
    print(_peak_bytes(lambda: _summarise(3_000)), _peak_bytes(lambda: _summarise(30_000)))


def test_the_aggregate_holds_what_it_lists_not_the_batch() -> None:
    """A 100,000-item batch's results were all held (and sorted) before being counted."""
    summary = _summarise(3_000)
    assert summary["total"] == 3_000
    assert summary["failed"] == 1_000
    assert [f["index"] for f in summary["failures"]] == list(range(0, 3 * MAX_FAILURES_LISTED, 3))
    small, large = _printed_in_own_process("peaks_of_summaries")
    assert large < small * 1.5
