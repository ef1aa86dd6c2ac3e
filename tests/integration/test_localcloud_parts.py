"""The embedded AWS's own parts: sandboxes run zips, mappings keep SQS semantics, deploy builds
the real stack in moto. What this cannot prove: the real Lambda service's scaling and timings."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from localcloud import lambda_runner
from localcloud.cloud import EmbeddedAws, embedded_aws
from localcloud.deploy import MappingSpec, deploy
from localcloud.esm import EventSourceMappings
from localcloud.runner import is_log_message
from localcloud.sandbox import SANDBOX_NICENESS

pytestmark = pytest.mark.slow

HANDLER = """
import json, os, time
def handler(event, context):
    if isinstance(event, dict) and "Records" in event:
        failures = []
        for record in event["Records"]:
            body = json.loads(record["body"])
            time.sleep(body.get("sleep", 0))
            if body.get("fail"):
                failures.append({"itemIdentifier": record["messageId"]})
            if body.get("crash"):
                raise RuntimeError("crashed on purpose")
        return {"batchItemFailures": failures}
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("raise"):
        raise ValueError("bad input " + str(event["raise"]))
    if event.get("niceness"):
        return {"niceness": os.nice(0)}
    return {"env": os.environ.get("GREETING"), "remaining_ok": context.get_remaining_time_in_millis() > 0}
"""


def _zip_of(handler: str) -> bytes:
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as zf:
        zf.writestr("fn.py", handler)
    return code.getvalue()


@pytest.fixture(scope="module")
def aws() -> Iterator[EmbeddedAws]:
    with embedded_aws() as cloud:
        cloud.runner.register(
            name="fn",
            arn="arn:aws:lambda:us-east-1:123456789012:function:fn",
            zip_bytes=_zip_of(HANDLER),
            handler="fn.handler",
            env={"GREETING": "hi"},
            timeout_s=1.0,
            memory_mb=128,
            reserved=1,
        )
        yield cloud


def test_a_sandbox_runs_the_zip_with_the_function_environment(aws: EmbeddedAws) -> None:
    result = aws.runner.invoke("fn", {}, wait_for_slot=True)
    assert (result.payload, result.error) == ({"env": "hi", "remaining_ok": True}, None)


def test_log_records_are_the_json_lines_and_the_run_keeps_messages_not_metric_blobs(
    aws: EmbeddedAws,
) -> None:
    message = {"level": "INFO", "message": "processed", "tag": "log-records"}
    blob = {"_aws": {"Timestamp": 1, "CloudWatchMetrics": []}, "tag": "log-records", "Calls": 1.0}
    with aws.runner.log_path("fn").open("a") as log:
        log.write(f"{json.dumps(message)}\nnot json at all\n{json.dumps(blob)}\n[1, 2]\n")
    every = [r for r in aws.runner.log_records("fn") if r.get("tag") == "log-records"]
    kept = [r for r in aws.runner.log_records("fn", keep=is_log_message) if r.get("tag") == "log-records"]
    assert (every, kept) == ([message, blob], [message])


def test_a_sandbox_yields_the_cpu_to_the_emulated_aws(aws: EmbeddedAws) -> None:
    """On 2 shared cores, 16 sandboxes importing boto3 at once stalled the state machine."""
    result = aws.runner.invoke("fn", {"niceness": True}, wait_for_slot=True)
    assert result.payload == {"niceness": os.nice(0) + SANDBOX_NICENESS}
    assert SANDBOX_NICENESS > 0


def test_byte_compile_writes_a_package_s_bytecode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "runtime_probe_pkg"
    (package / "sub").mkdir(parents=True)
    sources = [package / "__init__.py", package / "sub" / "__init__.py", package / "sub" / "mod.py"]
    for source in sources:
        source.write_text("VALUE = 1\n")
    (tmp_path / "runtime_probe_mod.py").write_text("VALUE = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    lambda_runner.byte_compile(("runtime_probe_pkg", "runtime_probe_mod", "not_installed_anywhere"))
    for source in [*sources, tmp_path / "runtime_probe_mod.py"]:
        assert Path(importlib.util.cache_from_source(str(source))).is_file(), source
    assert "runtime_probe_pkg" not in sys.modules  # found, not imported


def test_a_cold_start_finds_the_runtime_compiled(aws: EmbeddedAws) -> None:
    """Lambda's runtime ships boto3 compiled; the first sandbox start compiles it once."""
    with (
        mock.patch.object(lambda_runner, "_compiled", lambda_runner.threading.Event()),
        mock.patch.object(lambda_runner, "byte_compile") as compiled,
    ):
        aws.runner.register(
            name="fresh",
            arn="arn:aws:lambda:us-east-1:123456789012:function:fresh",
            zip_bytes=_zip_of(HANDLER),
            handler="fn.handler",
            env={},
            timeout_s=1.0,
            memory_mb=128,
            reserved=1,
        )
        for _ in range(2):
            assert aws.runner.invoke("fresh", {}, wait_for_slot=True).error is None
    compiled.assert_called_once_with(lambda_runner.RUNTIME_PACKAGES)
    assert {"boto3", "botocore"} <= set(lambda_runner.RUNTIME_PACKAGES)


def test_errors_come_back_in_lambdas_shape(aws: EmbeddedAws) -> None:
    result = aws.runner.invoke("fn", {"raise": 7}, wait_for_slot=True)
    assert result.error is not None
    assert (result.error["errorType"], result.error["errorMessage"]) == ("ValueError", "bad input 7")


def test_a_function_past_its_timeout_is_killed(aws: EmbeddedAws) -> None:
    aws.runner.invoke("fn", {}, wait_for_slot=True)  # warm, so the timeout is the function's own
    started = time.monotonic()
    result = aws.runner.invoke("fn", {"sleep": 5}, wait_for_slot=True)
    assert result.error is not None
    assert result.error["errorType"] == "Sandbox.Timedout"
    assert time.monotonic() - started < 4


def _queue(aws: EmbeddedAws, name: str, visibility: int) -> tuple[Any, str, str]:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": str(visibility)})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return sqs, url, arn


def _drain_wait(sqs: Any, url: str, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        attrs = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        if attrs["ApproximateNumberOfMessages"] == attrs["ApproximateNumberOfMessagesNotVisible"] == "0":
            return
        time.sleep(0.1)


def test_mapping_deletes_successes_keeps_failures_and_retries_throttles(aws: EmbeddedAws) -> None:
    sqs, url, arn = _queue(aws, "esm-semantics", visibility=30)
    for body in ({"sleep": 0.3}, {"sleep": 0.3}, {"sleep": 0.3}, {"fail": True}):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
    spec = MappingSpec("m1", arn, "fn", batch_size=1, maximum_concurrency=3, report_batch_item_failures=True)
    mappings = EventSourceMappings([spec], aws.runner, sqs)
    mappings.start()
    try:
        _drain_wait(sqs, url, deadline_s=8)
    finally:
        mappings.stop()
    stats = mappings.stats["m1"]
    # Reserved concurrency 1 against 3 pollers: invokes were refused and retried, none lost.
    assert stats.throttled_invokes > 0
    assert stats.deleted == 3
    assert stats.returned == 1
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    assert (
        attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"
    )  # the failed one, until it lapses


def test_a_function_error_returns_the_batch_with_a_raised_receive_count(aws: EmbeddedAws) -> None:
    sqs, url, arn = _queue(aws, "esm-crash", visibility=1)
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"crash": True}))
    seen: list[str] = []
    spec = MappingSpec("m2", arn, "fn", batch_size=1, maximum_concurrency=2, report_batch_item_failures=True)
    mappings = EventSourceMappings(
        [spec], aws.runner, sqs, on_receive=lambda m: seen.append(m["Attributes"]["ApproximateReceiveCount"])
    )
    mappings.start()
    try:
        deadline = time.monotonic() + 8
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        mappings.stop()
    assert seen[:2] == ["1", "2"]
    assert mappings.stats["m2"].function_errors >= 2


def test_deploy_builds_the_stack_in_moto(aws: EmbeddedAws) -> None:
    stack = deploy(aws, {"sluice:concurrency": "3", "sluice:httpUrl": "http://127.0.0.1:9/api"})
    sqs, lam, sfn = aws.client("sqs"), aws.client("lambda"), aws.client("stepfunctions")
    high = stack.outputs["queueUrls"]["HIGH"]
    attrs = sqs.get_queue_attributes(QueueUrl=high, AttributeNames=["All"])["Attributes"]
    assert json.loads(attrs["RedrivePolicy"])["maxReceiveCount"] == 10
    assert attrs["VisibilityTimeout"] == "180"
    assert "aws:SecureTransport" in attrs["Policy"]
    worker = stack.outputs["workerFunctionName"]
    assert lam.get_function_concurrency(FunctionName=worker)["ReservedConcurrentExecutions"] == 3
    described = sfn.describe_state_machine(stateMachineArn=stack.outputs["stateMachineArn"])
    assert "FanOutInline" in json.loads(described["definition"])["States"]
    # The default ticket dispatch: one mapping, on the ticket queue, capped at the limit.
    (mapping,) = stack.mappings
    assert mapping.queue_arn.endswith("sluice-queues-dispatch-tickets")
    assert (mapping.maximum_concurrency, mapping.batch_size) == (3, 1)
    cloudwatch = aws.client("cloudwatch")
    board = cloudwatch.get_dashboard(DashboardName=stack.outputs["dashboardName"])
    assert "ApproximateAgeOfOldestMessage" in board["DashboardBody"]
    alarms = {a["AlarmName"]: a for a in cloudwatch.describe_alarms()["MetricAlarms"]}
    # A DLQ alarm per priority and for tickets, HIGH age, worker errors: each under its ARN.
    assert len(alarms) == 6
    assert sorted(alarms) == sorted(a.rsplit(":", 1)[-1] for a in stack.outputs["alarmArns"].values())
    dlq = alarms["sluice-observability-alarm-dlq-tickets"]
    assert (dlq["MetricName"], dlq["Threshold"], dlq["TreatMissingData"]) == (
        "ApproximateNumberOfMessagesVisible",
        0.0,
        "ignore",
    )


def test_deploy_builds_the_adaptive_controller_and_records_its_schedule() -> None:
    """Its own embedded AWS: the stack's names would collide with the other deploy's. What moto
    cannot show: EventBridge firing the rule (a local timer reads `schedules` for that)."""
    with embedded_aws() as aws:
        stack = deploy(
            aws,
            {
                "sluice:concurrency": "4",
                "sluice:httpUrl": "http://127.0.0.1:9/api",
                "sluice:adaptive": {"minConcurrency": 2},
            },
        )
        lam, events = aws.client("lambda"), aws.client("events")
        controller = stack.outputs["controllerFunctionName"]
        assert controller == "sluice-controller-function"
        assert [(s.function_name, s.expression) for s in stack.schedules] == [(controller, "rate(1 minute)")]
        config = lam.get_function(FunctionName=controller)
        assert config["Configuration"]["Handler"] == "sluice_fanout.handlers.adaptive.lambda_handler"
        assert config["Concurrency"]["ReservedConcurrentExecutions"] == 1
        env = config["Configuration"]["Environment"]["Variables"]
        assert json.loads(env["SLUICE_CONTROLLER_MAPPINGS"]) == [m.uuid for m in stack.mappings]
        assert json.loads(env["SLUICE_CONTROLLER_SETTINGS"])["min_limit"] == 2
        (target,) = events.list_targets_by_rule(Rule="sluice-controller-schedule")["Targets"]
        assert target["Arn"] == config["Configuration"]["FunctionArn"]
        policy = json.loads(lam.get_policy(FunctionName=controller)["Policy"])
        (statement,) = policy["Statement"]
        assert statement["Principal"] == {"Service": "events.amazonaws.com"}
        invoke = lam.get_function_event_invoke_config(FunctionName=controller)
        assert (invoke["MaximumRetryAttempts"], invoke["MaximumEventAgeInSeconds"]) == (0, 60)
        assert stack.resources["sluice-controller"] == "sluice:index:AdaptiveController"
