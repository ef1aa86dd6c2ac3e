"""The DLQ command's pure parts (pairing, masking, formatting, argument checks) and, through a
botocore Stubber, the exact move-task calls `redrive` and `status` make."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from sluice_fanout.cli import dlq
from sluice_fanout.cli.dlq import (
    DeadLetterQueues,
    DlqInputError,
    DlqPair,
    DlqReport,
    Options,
    Peeked,
)

BASE = "https://sqs.eu-west-1.amazonaws.com/123456789012"
TOKEN = "AQCEAAAAKgAAAAMAAAAAAAAAAb7Wk+very/secret=="
OUTPUTS = {
    "dlqUrls": {"HIGH": f"{BASE}/high-dlq", "BATCH": f"{BASE}/batch-dlq"},
    "queueUrls": {"HIGH": f"{BASE}/high", "BATCH": f"{BASE}/batch"},
    "stateMachineArn": "arn:aws:states:eu-west-1:123456789012:stateMachine:sluice",
}


def arn(name: str) -> str:
    return f"arn:aws:sqs:eu-west-1:123456789012:{name}"


# --- pairing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([("--dlq-url", f"{BASE}/a-dlq")], [DlqPair("a-dlq", f"{BASE}/a-dlq", None)]),
        (
            [("--dlq-url", f"{BASE}/a-dlq"), ("--source-url", f"{BASE}/a"), ("--dlq-url", f"{BASE}/b-dlq")],
            [DlqPair("a-dlq", f"{BASE}/a-dlq", f"{BASE}/a"), DlqPair("b-dlq", f"{BASE}/b-dlq", None)],
        ),
        (
            [("--dlq-url", "http://127.0.0.1:5000/123456789012/x-dlq")],
            [DlqPair("x-dlq", "http://127.0.0.1:5000/123456789012/x-dlq", None)],
        ),
    ],
)
def test_explicit_flags_pair_each_source_with_the_dlq_before_it(
    flags: list[tuple[str, str]], expected: list[DlqPair]
) -> None:
    assert dlq.pair_explicit(flags) == expected


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([("--source-url", f"{BASE}/a")], f"--source-url '{BASE}/a' comes before any --dlq-url"),
        (
            [("--dlq-url", f"{BASE}/a-dlq"), ("--source-url", f"{BASE}/a"), ("--source-url", f"{BASE}/b")],
            f"--dlq-url '{BASE}/a-dlq' has two --source-url values ('{BASE}/a', '{BASE}/b')",
        ),
        ([("--dlq-url", "high-dlq")], "--dlq-url: expected an SQS queue URL like https://sqs."),
        ([("--dlq-url", f"{BASE}/a-dlq"), ("--source-url", "ftp://x/1/a")], "got 'ftp://x/1/a'"),
    ],
)
def test_explicit_flags_errors_name_the_value_and_the_fix(flags: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(DlqInputError) as caught:
        dlq.pair_explicit(flags)
    assert message in str(caught.value)


def test_stack_outputs_pair_by_priority_and_ignore_other_outputs() -> None:
    assert dlq.pair_stack_outputs(OUTPUTS, "out.json") == [
        DlqPair("HIGH", f"{BASE}/high-dlq", f"{BASE}/high"),
        DlqPair("BATCH", f"{BASE}/batch-dlq", f"{BASE}/batch"),
    ]


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (["not", "a", "map"], "out.json: expected a JSON object of stack outputs"),
        ({"queueUrls": OUTPUTS["queueUrls"]}, "out.json: output 'dlqUrls' must be a map of priority"),
        ({"dlqUrls": OUTPUTS["dlqUrls"], "queueUrls": {}}, "output 'queueUrls' must be a map"),
        (
            {"dlqUrls": OUTPUTS["dlqUrls"], "queueUrls": {"HIGH": f"{BASE}/high"}},
            "dlqUrls has priority 'BATCH' but queueUrls does not (queueUrls has ['HIGH'])",
        ),
        (
            {"dlqUrls": {"HIGH": "high-dlq"}, "queueUrls": {"HIGH": f"{BASE}/high"}},
            "out.json: dlqUrls.HIGH: expected an SQS queue URL",
        ),
    ],
)
def test_stack_output_errors_name_the_value_and_the_fix(outputs: Any, message: str) -> None:
    with pytest.raises(DlqInputError) as caught:
        dlq.pair_stack_outputs(outputs, "out.json")
    assert message in str(caught.value)
    assert "pulumi stack output" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "region"),
    [
        (f"{BASE}/q", "eu-west-1"),
        ("https://sqs.cn-north-1.amazonaws.com.cn/1/q", "cn-north-1"),
        ("http://127.0.0.1:5000/123456789012/q", None),
        ("https://queue.example.com/1/q", None),
    ],
)
def test_region_comes_from_an_aws_queue_url_only(url: str, region: str | None) -> None:
    assert dlq.region_from_url(url) == region


# --- masking and formatting ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            json.dumps({"token": TOKEN, "item": {"id": "o-1"}, "index": 3}),
            json.dumps({"token": "<masked>", "item": {"id": "o-1"}, "index": 3}),
        ),
        ('{"item": 1}', '{"item": 1}'),
        ("not json at all", "not json at all"),
        # Not JSON (the kind the worker dead-letters), escaped quotes inside the token.
        ('{"token": "ab\\"cd", "item": ', '{"token": "<masked>", "item": '),
        # Cut inside the token.
        ('{"index": 1, "token":"AQCEAAAAKgAAAAMAAA', '{"index": 1, "token":"<masked>"'),
        ('[{"token": "x"}]', '[{"token": "<masked>"}]'),
    ],
)
def test_mask_tokens(body: str, expected: str) -> None:
    assert dlq.mask_tokens(body) == expected


def test_truncate_says_how_much_was_cut() -> None:
    assert dlq.truncate("abcdef", 6) == "abcdef"
    assert dlq.truncate("abcdefgh", 3) == "abc... (+5 chars)"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1700000000123", "2023-11-14T22:13:20+00:00"),
        (0, "1970-01-01T00:00:00+00:00"),
        (None, "?"),
        ("x", "?"),
    ],
)
def test_epoch_ms_shows_as_utc(value: str | int | None, expected: str) -> None:
    assert dlq.format_epoch_ms(value) == expected


def test_peeked_from_reads_the_reason_attribute() -> None:
    message: Any = {
        "MessageId": "m-1",
        "Body": "b",
        "Attributes": {"ApproximateReceiveCount": "4", "SentTimestamp": "1700000000000"},
        "MessageAttributes": {"SluiceDeadLetterReason": {"DataType": "String", "StringValue": "no token"}},
    }
    assert dlq.peeked_from(message) == Peeked("m-1", "4", "1700000000000", "no token", "b")
    assert dlq.peeked_from({"MessageId": "m-2", "Body": "b"}) == Peeked("m-2", "?", None, None, "b")


def test_report_masks_the_token_before_cutting_the_body() -> None:
    body = json.dumps({"token": TOKEN, "item": {"id": "o-1"}})
    report = DlqReport(
        DlqPair("HIGH", f"{BASE}/high-dlq", f"{BASE}/high"),
        waiting=3,
        in_flight=1,
        peeked=(
            Peeked("m-1", "11", "1700000000000", None, body),
            Peeked("m-2", "1", "1700000000000", "body is not JSON", '{"token": "' + TOKEN),
        ),
    )
    assert dlq.format_report(report, body_chars=24) == [
        f"HIGH: 3 waiting, 1 in flight  {BASE}/high-dlq",
        f"  source: {BASE}/high",
        "  - m-1  receives 11  sent 2023-11-14T22:13:20+00:00",
        '    {"token": "<masked>", "i... (+20 chars)',
        "  - m-2  receives 1  sent 2023-11-14T22:13:20+00:00  SluiceDeadLetterReason: body is not JSON",
        '    {"token": "<masked>"',
        "  ... about 1 more not shown",
    ]


def test_report_without_source_or_messages() -> None:
    report = DlqReport(DlqPair("q-dlq", f"{BASE}/q-dlq", None), waiting=0, in_flight=0, peeked=())
    assert dlq.format_report(report, 100) == [
        f"q-dlq: 0 waiting, 0 in flight  {BASE}/q-dlq",
        "  source: unknown (redrive sends messages to the queue SQS recorded)",
    ]


def test_move_task_line() -> None:
    task: Any = {
        "Status": "FAILED",
        "ApproximateNumberOfMessagesMoved": 7,
        "ApproximateNumberOfMessagesToMove": 9,
        "StartedTimestamp": 1700000000000,
        "FailureReason": "AccessDenied",
    }
    assert dlq.format_move_task("HIGH", task) == (
        "HIGH: FAILED  moved 7 of 9  started 2023-11-14T22:13:20+00:00  to original source  "
        "failure: AccessDenied"
    )


def test_sendable_attributes_keep_scalars_and_drop_reserved_lists() -> None:
    received: Any = {
        "SluiceDeadLetterReason": {"DataType": "String", "StringValue": "r", "StringListValues": []},
        "Blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01", "BinaryListValues": []},
        "N": {"DataType": "Number.int", "StringValue": "3"},
    }
    assert dlq.sendable_attributes(received) == {
        "SluiceDeadLetterReason": {"DataType": "String", "StringValue": "r"},
        "Blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        "N": {"DataType": "Number.int", "StringValue": "3"},
    }


# --- arguments ----------------------------------------------------------------------------------


def options(argv: list[str]) -> Options:
    return dlq.options_from(dlq.build_parser().parse_args(argv))


def test_options_from_stack_outputs_file(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    path.write_text(json.dumps(OUTPUTS))
    assert options(["redrive", "--stack-outputs", str(path), "--max-per-second", "20"]) == Options(
        command="redrive", pairs=dlq.pair_stack_outputs(OUTPUTS, str(path)), max_per_second=20
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect"], "name the queues one way: --stack-outputs FILE"),
        (["inspect", "--stack-outputs", "x.json", "--dlq-url", f"{BASE}/a"], "name the queues one way"),
        (["inspect", "--dlq-url", f"{BASE}/a", "--peek", "-1"], "--peek must be >= 0, got -1"),
        (
            ["redrive", "--dlq-url", f"{BASE}/a", "--copy", "--max-per-second", "5"],
            "--max-per-second sets the move task's rate; --copy has none",
        ),
        (["status", "--stack-outputs", "{missing}"], "--stack-outputs {missing}: cannot read it"),
        (["status", "--stack-outputs", "{bad}"], "--stack-outputs {bad}: not JSON"),
    ],
)
def test_argument_errors(tmp_path: Path, argv: list[str], message: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("queueUrls: x")
    paths = {"missing": str(tmp_path / "missing.json"), "bad": str(bad)}
    argv = [a.format(**paths) for a in argv]
    with pytest.raises(DlqInputError) as caught:
        options(argv)
    assert message.format(**paths) in str(caught.value)


def test_move_rate_above_the_sqs_maximum_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        options(["redrive", "--dlq-url", f"{BASE}/a", "--max-per-second", "501"])
    assert "must be an integer 1..500, got '501'" in capsys.readouterr().err


def test_main_reports_bad_input_on_stderr_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert dlq.main(["inspect", "--dlq-url", "high-dlq"]) == 2
    assert capsys.readouterr().err.startswith("sluice dlq: --dlq-url: expected an SQS queue URL")


# --- the move-task calls, exactly ---------------------------------------------------------------


def stubbed() -> tuple[Stubber, DeadLetterQueues]:
    client = boto3.client("sqs", region_name="eu-west-1")
    return Stubber(client), DeadLetterQueues(client)


def expect_arn(stub: Stubber, name: str) -> None:
    stub.add_response(
        "get_queue_attributes",
        {"Attributes": {"QueueArn": arn(name)}},
        {"QueueUrl": f"{BASE}/{name}", "AttributeNames": ["QueueArn"]},
    )


def test_redrive_starts_one_move_task_per_dlq_from_its_arn_to_its_source() -> None:
    stub, queues = stubbed()
    for name in ("high", "batch"):
        expect_arn(stub, name)
        expect_arn(stub, f"{name}-dlq")
        stub.add_response(
            "start_message_move_task",
            {"TaskHandle": f"handle-{name}"},
            {"SourceArn": arn(f"{name}-dlq"), "DestinationArn": arn(name)},
        )
    lines: list[str] = []
    with stub:
        dlq.run(Options("redrive", dlq.pair_stack_outputs(OUTPUTS, "out.json")), queues, lines.append)
        stub.assert_no_pending_responses()
    assert lines == [
        f"HIGH: move task started to {BASE}/high, handle handle-high",
        f"BATCH: move task started to {BASE}/batch, handle handle-batch",
    ]


def test_redrive_without_a_known_source_leaves_the_destination_to_sqs() -> None:
    stub, queues = stubbed()
    expect_arn(stub, "x-dlq")
    stub.add_response(
        "start_message_move_task",
        {"TaskHandle": "h"},
        {"SourceArn": arn("x-dlq"), "MaxNumberOfMessagesPerSecond": 50},
    )
    lines: list[str] = []
    with stub:
        dlq.run(
            options(["redrive", "--dlq-url", f"{BASE}/x-dlq", "--max-per-second", "50"]), queues, lines.append
        )
        stub.assert_no_pending_responses()
    assert lines == ["x-dlq: move task started to original source, handle h"]


def test_a_failed_move_task_start_names_the_queue_and_points_to_copy() -> None:
    stub, queues = stubbed()
    expect_arn(stub, "x-dlq")
    stub.add_client_error("start_message_move_task", "UnsupportedOperation", "not here")
    with stub, pytest.raises(dlq.DlqAwsError) as caught:
        dlq.run(options(["redrive", "--dlq-url", f"{BASE}/x-dlq"]), queues, print)
    assert str(caught.value).startswith(f"x-dlq ({BASE}/x-dlq): An error occurred (UnsupportedOperation)")
    assert str(caught.value).endswith("needs `redrive --copy`)")


def test_status_lists_each_dlqs_move_tasks() -> None:
    stub, queues = stubbed()
    expect_arn(stub, "x-dlq")
    stub.add_response(
        "list_message_move_tasks",
        {
            "Results": [
                {
                    "Status": "RUNNING",
                    "ApproximateNumberOfMessagesMoved": 2,
                    "ApproximateNumberOfMessagesToMove": 5,
                    "StartedTimestamp": 1700000000000,
                    "DestinationArn": arn("x"),
                }
            ]
        },
        {"SourceArn": arn("x-dlq")},
    )
    expect_arn(stub, "y-dlq")
    stub.add_response("list_message_move_tasks", {"Results": []}, {"SourceArn": arn("y-dlq")})
    lines: list[str] = []
    with stub:
        dlq.run(
            options(["status", "--dlq-url", f"{BASE}/x-dlq", "--dlq-url", f"{BASE}/y-dlq"]),
            queues,
            lines.append,
        )
        stub.assert_no_pending_responses()
    assert lines == [
        f"x-dlq: RUNNING  moved 2 of 5  started 2023-11-14T22:13:20+00:00  to {arn('x')}",
        "y-dlq: no move tasks",
    ]
