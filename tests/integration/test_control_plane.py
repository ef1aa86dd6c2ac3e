"""Limits that change at run time: reserved concurrency, a mapping's MaximumConcurrency and
Enabled, moto's Lambda settings followed by the data plane, EMF lines extracted into CloudWatch,
the legacy API's capacity. Real threads, real sandboxes, real moto.

What the emulator cannot prove: how long AWS takes to apply a new limit or to make extracted
metrics queryable, AWS's gradual poller scaling and transitional mapping states, IAM on the
controller's calls, and the account's concurrency pool.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from localcloud.cloud import EmbeddedAws, embedded_aws
from localcloud.control_plane import ControlPlaneSync, mirror_mappings
from localcloud.deploy import MappingSpec
from localcloud.emf import EmfForwarder
from localcloud.esm import LONG_POLL_S, EventSourceMappings, MappingState
from localcloud.lambda_runner import Invocation
from localcloud.legacy_api import ApiProfile, LegacyApi
from sluice_fanout.handlers import contract
from sluice_fanout.handlers.metrics import WorkerMetrics

pytestmark = pytest.mark.slow

# Prints one span line per record (or direct event) so a test can count overlapping invokes.
HANDLER = """
import json, time
def handler(event, context):
    for item in [json.loads(r["body"]) for r in event["Records"]] if "Records" in event else [event]:
        start = time.time()
        time.sleep(item.get("sleep", 0))
        print(json.dumps({"tag": item.get("tag"), "span": [start, time.time()]}), flush=True)
    return {"batchItemFailures": []}
"""


def _zip() -> bytes:
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as zf:
        zf.writestr("fn.py", HANDLER)
    return code.getvalue()


def _register(aws: EmbeddedAws, name: str, reserved: int | None) -> None:
    aws.runner.register(
        name=name,
        arn=f"arn:aws:lambda:us-east-1:123456789012:function:{name}",
        zip_bytes=_zip(),
        handler="fn.handler",
        env={},
        timeout_s=10.0,
        memory_mb=128,
        reserved=reserved,
    )


@pytest.fixture(scope="module")
def aws() -> Iterator[EmbeddedAws]:
    with embedded_aws() as cloud:
        yield cloud


def wait_until(check: Callable[[], bool], deadline_s: float) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def max_overlap(aws: EmbeddedAws, name: str, tag: str) -> int:
    """Most spans tagged `tag` running at one moment, from the function's log."""
    spans = [r["span"] for r in aws.runner.log_records(name) if r.get("tag") == tag]
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(target()), daemon=True)
    thread.start()
    return thread, out


def test_reserved_concurrency_changes_while_invokes_run(aws: EmbeddedAws) -> None:
    runner = aws.runner
    _register(aws, "rc", reserved=1)

    def slow() -> Invocation:
        return runner.invoke("rc", {"sleep": 2.0}, wait_for_slot=True)

    first, first_out = in_thread(slow)
    assert wait_until(lambda: runner.in_flight("rc") == 1, 2)
    assert runner.invoke("rc", {}, wait_for_slot=False).throttled
    waiter, waiter_out = in_thread(slow)
    time.sleep(0.3)
    assert runner.in_flight("rc") == 1  # the synchronous invoke waits for a slot
    runner.set_reserved("rc", 2)
    assert wait_until(lambda: runner.in_flight("rc") == 2, 1)  # a raise admits the waiter at once
    # Lowered below what runs: nothing is stopped, nothing new is admitted.
    runner.set_reserved("rc", 1)
    assert runner.invoke("rc", {}, wait_for_slot=False).throttled
    assert runner.in_flight("rc") == 2
    first.join(timeout=30)
    waiter.join(timeout=30)
    assert [r.error for r in first_out + waiter_out] == [None, None]
    assert not runner.invoke("rc", {}, wait_for_slot=False).throttled
    runner.set_reserved("rc", 0)
    assert runner.invoke("rc", {}, wait_for_slot=False).throttled
    runner.set_reserved("rc", None)
    assert runner.reserved("rc") is None
    assert not runner.invoke("rc", {}, wait_for_slot=False).throttled
    assert runner.stats("rc")["throttles"] == 3
    assert runner.stats("rc")["max_in_flight"] == 2


def _queue(aws: EmbeddedAws, name: str) -> tuple[Any, str, str]:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return sqs, url, arn


def _counts(sqs: Any, url: str) -> tuple[str, str]:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return attrs["ApproximateNumberOfMessages"], attrs["ApproximateNumberOfMessagesNotVisible"]


def _send(sqs: Any, url: str, tag: str, n: int, sleep: float) -> None:
    for _ in range(n):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"tag": tag, "sleep": sleep}))


def _spans(aws: EmbeddedAws, name: str, tag: str) -> int:
    return sum(1 for r in aws.runner.log_records(name) if r.get("tag") == tag)


def test_mapping_pollers_follow_maximum_concurrency_and_enabled(aws: EmbeddedAws) -> None:
    _register(aws, "mc", reserved=None)
    # Three warm sandboxes first, so overlaps below measure pollers, not cold starts.
    warm = [in_thread(lambda: aws.runner.invoke("mc", {"sleep": 0.5}, wait_for_slot=True)) for _ in range(3)]
    for thread, _ in warm:
        thread.join(timeout=30)
    sqs, url, arn = _queue(aws, "esm-dynamic")
    spec = MappingSpec("dyn", arn, "mc", batch_size=1, maximum_concurrency=1, report_batch_item_failures=True)
    mappings = EventSourceMappings([spec], aws.runner, sqs, max_pollers={"dyn": 3})
    assert (mappings.pollers("dyn"), mappings.state("dyn")) == (3, MappingState(1, enabled=True))
    mappings.start()
    try:
        _send(sqs, url, "one", 3, sleep=0.6)
        assert wait_until(lambda: _spans(aws, "mc", "one") == 3, 15)
        assert max_overlap(aws, "mc", "one") == 1

        mappings.configure("dyn", maximum_concurrency=3)
        _send(sqs, url, "three", 3, sleep=1.0)
        assert wait_until(lambda: _spans(aws, "mc", "three") == 3, 15)
        assert max_overlap(aws, "mc", "three") == 3

        assert mappings.configure("dyn", enabled=False) == MappingState(3, enabled=False)
        time.sleep(LONG_POLL_S + 0.5)  # receives already waiting end
        receives = mappings.stats["dyn"].receives
        _send(sqs, url, "off", 2, sleep=0.5)
        time.sleep(2 * LONG_POLL_S + 0.5)
        assert mappings.stats["dyn"].receives == receives  # a disabled mapping does not poll
        assert _counts(sqs, url) == ("2", "0")

        mappings.configure("dyn", maximum_concurrency=2, enabled=True)
        assert wait_until(lambda: _spans(aws, "mc", "off") == 2, 15)
        _send(sqs, url, "two", 3, sleep=1.0)
        assert wait_until(lambda: _spans(aws, "mc", "two") == 3, 15)
        assert max_overlap(aws, "mc", "two") == 2
    finally:
        mappings.stop()
    assert mappings.stats["dyn"].deleted == 11


def test_the_data_plane_follows_lambda_settings_changed_in_moto(aws: EmbeddedAws) -> None:
    lam = aws.client("lambda")
    role = aws.client("iam").create_role(RoleName="cp", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    lam.create_function(
        FunctionName="cp", Runtime="python3.11", Role=role, Handler="fn.handler", Code={"ZipFile": _zip()}
    )
    lam.put_function_concurrency(FunctionName="cp", ReservedConcurrentExecutions=2)
    _register(aws, "cp", reserved=2)
    sqs, url, arn = _queue(aws, "esm-controlled")
    spec = MappingSpec(
        "local", arn, "cp", batch_size=1, maximum_concurrency=2, report_batch_item_failures=True
    )
    mappings = EventSourceMappings([spec], aws.runner, sqs, max_pollers={"local": 4})
    ids = mirror_mappings(lam, [spec])
    (moto_uuid,) = ids
    # The mirror only holds settings: moto does not deliver to it inside SendMessage.
    sqs.send_message(QueueUrl=url, MessageBody="{}")
    assert (aws.runner.stats("cp")["invocations"], _counts(sqs, url)) == (0, ("1", "0"))

    sync = ControlPlaneSync(lam, aws.runner, mappings, functions=["cp"], mapping_ids=ids, interval_s=0.1)
    sync.start()
    try:
        assert wait_until(lambda: len(sync.timeline) == 3, 5)
        lam.put_function_concurrency(FunctionName="cp", ReservedConcurrentExecutions=5)
        assert wait_until(lambda: aws.runner.reserved("cp") == 5, 5)
        updated = lam.update_event_source_mapping(
            UUID=moto_uuid, Enabled=False, ScalingConfig={"MaximumConcurrency": 4}
        )
        # moto applies an update at once: no Disabling state in between.
        assert updated["State"] == lam.get_event_source_mapping(UUID=moto_uuid)["State"] == "Disabled"
        assert wait_until(lambda: mappings.state("local") == MappingState(4, enabled=False), 5)
        lam.delete_function_concurrency(FunctionName="cp")
        assert wait_until(lambda: aws.runner.reserved("cp") is None, 5)
        lam.update_event_source_mapping(UUID=moto_uuid, Enabled=True, ScalingConfig={})
        # No MaximumConcurrency: no mapping cap, so every poller started may receive.
        assert wait_until(lambda: mappings.state("local") == MappingState(4, enabled=True), 5)
    finally:
        sync.stop()
    assert [(c.what, c.value) for c in sync.timeline] == [
        ("reserved:cp", 2),
        ("maximum_concurrency:local", 2),
        ("enabled:local", True),
        ("reserved:cp", 5),
        ("maximum_concurrency:local", 4),
        ("enabled:local", False),
        ("reserved:cp", None),
        ("enabled:local", True),
    ]
    times = [c.t for c in sync.timeline]
    assert times == sorted(times)
    assert sync.errors == 0


def _print_to(path: Any, metrics: WorkerMetrics) -> None:
    with path.open("a") as log, contextlib.redirect_stdout(log):
        metrics.flush()


def _metric(cloudwatch: Any, name: str, stat: str, dimensions: list[dict[str, str]]) -> list[float]:
    now = datetime.now(UTC).replace(microsecond=0)
    query = {
        "Id": "q",
        "MetricStat": {
            "Metric": {"Namespace": contract.METRICS_NAMESPACE, "MetricName": name, "Dimensions": dimensions},
            "Period": 300,
            "Stat": stat,
        },
    }
    result = cloudwatch.get_metric_data(
        MetricDataQueries=[query], StartTime=now - timedelta(seconds=120), EndTime=now + timedelta(seconds=60)
    )
    return list(result["MetricDataResults"][0]["Values"])


def test_emf_lines_from_powertools_become_cloudwatch_metrics(aws: EmbeddedAws) -> None:
    cloudwatch = aws.client("cloudwatch")
    path = aws.runner.log_path("emf-fn")
    metrics = WorkerMetrics("emf-fn")
    for _ in range(7):
        metrics.count(contract.METRIC_API_CALLS, "HIGH")
    _print_to(path, metrics)  # before the forwarder starts: not this run's

    forwarder = EmfForwarder(cloudwatch, aws.runner, ["emf-fn"], interval_s=0.1).start()
    for _ in range(3):
        metrics.count(contract.METRIC_API_CALLS, "HIGH")
    metrics.count(contract.METRIC_API_THROTTLED, "HIGH")
    metrics.milliseconds(contract.METRIC_API_LATENCY, "HIGH", 10.0)
    metrics.milliseconds(contract.METRIC_API_LATENCY, "HIGH", 30.0)
    metrics.count(contract.METRIC_API_CALLS, "LOW")
    _print_to(path, metrics)
    assert wait_until(lambda: forwarder.records == 2, 5)
    with path.open("a") as log:
        log.write("not json\n")
    metrics.count(contract.METRIC_API_CALLS, "HIGH")
    metrics.count(contract.METRIC_API_CALLS, "HIGH")
    _print_to(path, metrics)
    forwarder.stop()  # forwards the last line
    assert (forwarder.records, forwarder.errors) == (3, 0)

    def dims(priority: str) -> list[dict[str, str]]:
        return [
            {"Name": contract.DIMENSION_FUNCTION, "Value": "emf-fn"},
            {"Name": contract.DIMENSION_PRIORITY, "Value": priority},
            {"Name": contract.DIMENSION_SERVICE, "Value": contract.METRICS_SERVICE},
        ]

    high = dims("HIGH")
    assert _metric(cloudwatch, contract.METRIC_API_CALLS, "Sum", high) == [5.0]
    assert _metric(cloudwatch, contract.METRIC_API_CALLS, "SampleCount", high) == [5.0]
    # CloudWatch names a metric by its set of dimensions, in any order.
    assert _metric(cloudwatch, contract.METRIC_API_CALLS, "Sum", high[::-1]) == [5.0]
    assert _metric(cloudwatch, contract.METRIC_API_CALLS, "Sum", dims("LOW")) == [1.0]
    assert _metric(cloudwatch, contract.METRIC_API_THROTTLED, "Sum", high) == [1.0]
    assert _metric(cloudwatch, contract.METRIC_API_LATENCY, "Sum", high) == [40.0]
    assert _metric(cloudwatch, contract.METRIC_API_LATENCY, "SampleCount", high) == [2.0]
    assert _metric(cloudwatch, contract.METRIC_API_CALLS, "Sum", high[:2]) == []  # another dimension set


def _post(url: str, key: str) -> int:
    request = urllib.request.Request(
        url, data=json.dumps({"id": key}).encode(), headers={"Idempotency-Key": key}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_legacy_api_capacity_changes_without_touching_admitted_calls() -> None:
    api = LegacyApi(ApiProfile(concurrency_limit=1, service_time_s=1.0, service_jitter=0.0)).start()
    try:
        first, first_out = in_thread(lambda: _post(api.url, "a"))
        assert wait_until(lambda: api.in_flight == 1, 2)
        assert _post(api.url, "b") == 429
        api.set_concurrency_limit(2)
        second, second_out = in_thread(lambda: _post(api.url, "c"))
        assert wait_until(lambda: api.in_flight == 2, 2)
        api.set_concurrency_limit(1)
        assert _post(api.url, "d") == 429
        first.join(timeout=10)
        second.join(timeout=10)
        assert first_out + second_out == [200, 200]
        assert _post(api.url, "e") == 200
    finally:
        api.stop()
    assert [n for _, n in api.capacity_snapshot()] == [1, 2, 1]
    assert api.concurrency_limit == 1
    calls = {c.key: (c.status, c.in_flight) for c in api.snapshot()}
    assert calls == {"a": (200, 1), "b": (429, 0), "c": (200, 2), "d": (429, 0), "e": (200, 1)}
