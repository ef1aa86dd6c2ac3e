"""Both ways to start a batch, within Step Functions' limits, on the embedded AWS.

Real parts: the deployed stack, moto's interpreter running the real definition (S3 ItemReader,
ResultWriter with the embedded AWS's result files), the real aggregate and worker from their
zips. What this cannot prove: AWS's own result-file split (the embedded AWS caps a file at what
one PutObject stores), IAM on the buckets (moto does not enforce it), and the 256 KiB limit on a
state's output, which the embedded AWS does not enforce (Sluice's design keeps outputs small).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from localcloud.cloud import EmbeddedAws, embedded_aws
from localcloud.legacy_api import ApiProfile
from localcloud.report import build_report, first_calls
from localcloud.runner import RunResult, run_scenario
from localcloud.scenario import Batch, Scenario

pytestmark = pytest.mark.slow

FROM_S3 = Scenario(
    name="from-s3",
    batches=(Batch(start_s=0, counts={"HIGH": 10, "BATCH": 30}, direct=260, reject={"BATCH": 4, "HIGH": 1}),),
    api=ApiProfile(concurrency_limit=8, service_time_s=0.005),
    source="s3",
    deadline_s=100,
)


@pytest.fixture(scope="module")
def from_s3() -> RunResult:
    return run_scenario(FROM_S3)


def test_a_batch_from_s3_is_aggregated_exactly(from_s3: RunResult) -> None:
    (execution,) = from_s3.executions
    assert execution.source == "s3"
    assert execution.status == "SUCCEEDED"
    summary = execution.output
    assert (summary["total"], summary["succeeded"], summary["failed"]) == (300, 295, 5)
    assert summary["by_priority"] == {
        "BATCH": {"total": 30, "succeeded": 26, "failed": 4},
        "DIRECT": {"total": 260, "succeeded": 260, "failed": 0},
        "HIGH": {"total": 10, "succeeded": 9, "failed": 1},
    }
    assert summary["results_location"]["manifest_key"].startswith("results/")
    # Every item's own outcome, read back from the result files, agrees with the API's record.
    assert [r["index"] for r in execution.results or []] == list(range(300))
    ok = {
        f"{execution.arn}#{r['index']}"
        for r in execution.results or []
        if r["status"] == "SUCCEEDED" and "priority" in r
    }
    assert ok == {c.key for c in from_s3.calls if c.status == 200}


def test_the_report_counts_an_s3_run_item_by_item(from_s3: RunResult) -> None:
    report = build_report(from_s3)
    assert report["items"] == {
        "total": 300,
        "throttled": 40,
        "direct": 260,
        "succeeded": 295,
        "failed": 5,
        "lost": 0,
    }
    assert {p: (v["count"], v["succeeded"], v["failed"]) for p, v in report["by_priority"].items()} == {
        "BATCH": (30, 26, 4),
        "HIGH": (10, 9, 1),
    }


# More inline items than the Map opens at once, the HIGH ones last: the state machine sends the
# batch through the order function (`$.items[10]` is present), so the HIGH items open first.
INLINE_LARGER_THAN_MAP = Scenario(
    name="inline-larger-than-map",
    batches=(Batch(start_s=0, counts={"BATCH": 40, "HIGH": 5}),),
    api=ApiProfile(concurrency_limit=2, service_time_s=0.02),
    source="inline",
    stack_config={"sluice:mapMaxConcurrency": "10"},
    deadline_s=100,
)


def test_an_inline_batch_larger_than_the_map_is_worked_in_priority_order() -> None:
    result = run_scenario(INLINE_LARGER_THAN_MAP)
    (execution,) = result.executions
    assert execution.source == "inline"
    assert execution.status == "SUCCEEDED"
    assert (execution.output["total"], execution.output["succeeded"]) == (45, 45)
    # Outcomes keep the batch's own indexes, whatever order the Map opened the items in.
    assert [(r["index"], r["priority"]) for r in execution.results or []] == [
        (i, "BATCH" if i < 40 else "HIGH") for i in range(45)
    ]
    # Unsorted, the HIGH items (indexes 40-44) would open only after 31 items were done.
    positions = [n for n, call in enumerate(first_calls(result.calls)) if call.priority == "HIGH"]
    assert len(positions) == 5
    assert max(positions) < 10


PASS_MACHINE = {"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}}


@pytest.fixture(scope="module")
def aws() -> Iterator[EmbeddedAws]:
    with embedded_aws() as cloud:
        yield cloud


def _input_of(size: int) -> str:
    """A JSON input of exactly `size` bytes in UTF-8."""
    envelope = json.dumps({"items": [""]})
    return json.dumps({"items": ["x" * (size - len(envelope))]})


def test_an_inline_input_over_256_kib_is_refused_pointing_to_s3(aws: EmbeddedAws) -> None:
    sfn = aws.client("stepfunctions")
    machine = sfn.create_state_machine(
        name="pass", definition=json.dumps(PASS_MACHINE), roleArn="arn:aws:iam::123456789012:role/sfn"
    )["stateMachineArn"]
    assert len(_input_of(262_144).encode()) == 262_144
    sfn.start_execution(stateMachineArn=machine, input=_input_of(262_144))  # exactly the limit: accepted
    with pytest.raises(ClientError) as refused:
        sfn.start_execution(stateMachineArn=machine, input=_input_of(262_145))
    error = refused.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert "less than or equal to 262144 (got 262145 bytes in UTF-8)" in error["Message"]
    assert 'start the execution with {"source": {"bucket": "...", "key": "..."}}' in error["Message"]
    assert len(sfn.list_executions(stateMachineArn=machine)["executions"]) == 1  # none for the refused one
