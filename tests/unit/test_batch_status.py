"""`sluice batch status`: the counts, the estimate and the text, from plain values."""

from __future__ import annotations

import pytest

from sluice_fanout.cli.batch import (
    WATCH_MAX_S,
    BatchInputError,
    Report,
    check_execution,
    format_report,
    stack_from_outputs,
    watch,
)
from sluice_fanout.handlers.progress import Progress, Retry, status

ARN = "arn:aws:states:eu-west-1:123456789012:execution:sluice-workflow-state-machine:batch-42"


def running(**progress: object) -> Report:
    counted = Progress(**progress)  # type: ignore[arg-type]
    result = status(
        execution=ARN,
        state="RUNNING",
        started_at=1_000.0,
        now=1_100.0,
        total=500,
        not_started=100,
        progress=counted,
    )
    return Report(result, {"HIGH": (0, 0), "BATCH": (280, 8)})


def test_the_counts_add_up_to_the_batch_and_the_estimate_is_items_left_over_throughput() -> None:
    s = running(
        succeeded=190, failed=10, retries=(Retry(7, 1_130.0, 2, "HTTP 503"), Retry(9, 1_120.0, 1, "x"))
    ).status
    assert (s.succeeded, s.failed, s.retrying, s.not_started, s.waiting_or_in_flight) == (
        190,
        10,
        2,
        100,
        198,
    )
    assert s.succeeded + s.failed + s.retrying + s.not_started + s.waiting_or_in_flight == s.total
    assert s.next_retry_at == 1_120.0
    assert s.rate_per_s == pytest.approx(2.0)  # 200 items in 100 s
    assert s.eta_s == pytest.approx(150.0)  # 300 left at 2 a second


def test_nothing_finished_means_no_estimate_and_counts_never_go_negative() -> None:
    s = running().status
    assert (s.rate_per_s, s.eta_s) == (None, None)
    skewed = status(
        execution=ARN,
        state="RUNNING",
        started_at=0,
        now=1,
        total=10,
        not_started=10,
        progress=Progress(succeeded=3),
    )
    assert (skewed.not_started, skewed.waiting_or_in_flight) == (7, 0)  # reads a moment apart


def test_once_ended_the_aggregates_counts_win() -> None:
    ended = status(
        execution=ARN,
        state="SUCCEEDED",
        started_at=0,
        now=50,
        total=100,
        not_started=0,
        progress=Progress(succeeded=97, retries=(Retry(1, 5.0, 1, "x"),)),
        final=(96, 4),
    )
    assert (ended.succeeded, ended.failed, ended.retrying, ended.waiting_or_in_flight, ended.eta_s) == (
        96,
        4,
        0,
        0,
        0.0,
    )


def test_a_retry_survives_its_record() -> None:
    retry = Retry(12, 1_764_000_000.5, 3, "HTTPError: 503 Service Unavailable|with a bar")
    assert Retry.decode(12, retry.encode()) == retry


def test_the_report_reads_as_a_person_would_say_it() -> None:
    lines = format_report(running(succeeded=190, failed=10, retries=(Retry(7, 1_130.0, 2, "HTTP 503"),)))
    assert lines == [
        "batch batch-42: RUNNING, started 00:16:40 UTC (1m 40s ago)",
        "items 500: succeeded 190, failed 10, retrying 1 (next at 00:18:50 UTC), waiting or at the API 199, "
        "not started 100",
        "[################........................] 40%",
        "throughput 2.00 items/s since the start; about 2m 30s to finish "
        "(an estimate: items left / throughput)",
        "queues now, all batches: HIGH 0 waiting, 0 in flight, BATCH 280 waiting, 8 in flight",
    ]


def test_watch_stops_when_the_batch_ends() -> None:
    reports = [running(succeeded=1), running(succeeded=2)]
    ended = status(
        execution=ARN, state="SUCCEEDED", started_at=0, now=9, total=3, not_started=0, progress=Progress()
    )
    reports.append(Report(ended, {}))
    shown: list[str] = []
    naps: list[float] = []
    last = watch(lambda: reports.pop(0), shown.append, every_s=2, sleep=naps.append, clock=lambda: 0.0)
    assert last.status.state == "SUCCEEDED"
    assert (len(shown), naps) == (3, [2, 2])
    assert "ended: 0 of 3 items finished" in shown[-1]


def test_watch_is_bounded_in_time() -> None:
    times = iter([0.0, 10.0, WATCH_MAX_S + 1])
    naps: list[float] = []
    watch(running, lambda _: None, every_s=1, sleep=naps.append, clock=lambda: next(times))
    assert naps == [1]


@pytest.mark.parametrize(
    "arn", ["batch-42", "arn:aws:states:eu-west-1:123456789012:stateMachine:sm", "arn:aws:sqs:eu-west-1:1:q"]
)
def test_anything_but_an_execution_arn_is_refused_with_an_example(arn: str) -> None:
    with pytest.raises(BatchInputError, match="is not an execution ARN; expected one like arn:aws:states:"):
        check_execution(arn)
    assert check_execution(ARN) == ARN


def test_the_stack_outputs_need_the_state_machine_table_and_queues() -> None:
    with pytest.raises(BatchInputError, match=r"stack\.json: no idempotencyTable, queueUrls output"):
        stack_from_outputs({"stateMachineArn": "arn:aws:states:eu-west-1:1:stateMachine:s"}, "stack.json")
