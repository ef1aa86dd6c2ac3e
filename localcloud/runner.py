"""Run a scenario end to end on the embedded AWS: deploy, start the simulator and the mappings,
start each batch's execution, wait for every execution, and collect what happened."""

from __future__ import annotations

import json
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from unittest import mock

from moto.sqs.models import SQSBackend

from localcloud.cloud import EmbeddedAws, embedded_aws
from localcloud.control_plane import ControlPlaneSync
from localcloud.deploy import DeployedStack, deploy
from localcloud.emf import EmfForwarder
from localcloud.esm import EventSourceMappings, MappingStats, message_key
from localcloud.faults import CompletionFaults
from localcloud.legacy_api import Call, LegacyApi
from localcloud.results import read_results
from localcloud.scenario import FIFO_QUEUE, SOURCE_AUTO, SOURCE_INLINE, SOURCE_S3
from localcloud.scheduler import Fired, Schedules

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from localcloud.scenario import Scenario

POLL_S = 0.25
FEED_BATCH = -1
"""ExecutionRecord.batch of the executions a scenario's feed started."""
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
"""API answers after which the worker tries the item again: it is still waiting."""
# The attribute the worker puts on what it dead-letters itself (handlers/contract.py; localcloud
# does not import the handlers it runs).
DEAD_LETTER_REASON_ATTRIBUTE = "SluiceDeadLetterReason"
SFN_MAX_INPUT_BYTES = 262_144  # StartExecution's input: at most 256 KiB in UTF-8
BATCHES_PREFIX = "batches/"
"""Where in the stack's results bucket a batch too large to go inline is uploaded (the state
machine may read that bucket: its policy lists it among the input buckets)."""


@dataclass
class ExecutionRecord:
    arn: str
    batch: int
    items: list[dict[str, Any]]
    started: float
    stopped: float | None = None
    status: str = "RUNNING"
    output: Any = None
    source: str = SOURCE_INLINE
    """How the batch was started: `inline` (`{"items": [...]}`) or `s3` (`{"source": ...}`)."""
    results: list[dict[str, Any]] | None = None
    """Each item's outcome in item order, read once from the Map Run's result files when the
    execution succeeded (None until then, or when it did not)."""


@dataclass
class RunResult:
    scenario: Scenario
    executions: list[ExecutionRecord]
    calls: list[Call]
    enqueued_at: dict[str, float]
    """First SentTimestamp (epoch s) per `execution#index` key."""
    worker_stats: dict[str, int]
    mapping_stats: list[MappingStats]
    worker_logs: list[dict[str, Any]]
    """The worker's structured log lines (`is_log_message`: EMF metric blobs left out)."""
    stack: DeployedStack
    wall_s: float
    requests: dict[str, int]
    """Requests the embedded AWS served during the run (deploy excluded), by `service:Action`."""
    parent_transitions: int
    """State transitions in the parent executions' histories."""
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    """What the DLQs hold after the run: `queue` (its priority), `body`, `reason` (if the worker
    dead-lettered it itself)."""
    completion_calls: dict[str, int] = field(default_factory=dict)
    """SendTaskSuccess calls per item named in the scenario's completion faults."""
    limits: list[tuple[float, str, int | bool | None]] = field(default_factory=list)
    """With the adaptive controller: (epoch s, setting, value) as the data plane applied them
    (`reserved:<fn>`, `maximum_concurrency:<uuid>`, `enabled:<uuid>`)."""
    capacity: list[tuple[float, int]] = field(default_factory=list)
    """(epoch s, limit): the simulated API's concurrency limit over the run."""
    controller_logs: list[dict[str, Any]] = field(default_factory=list)
    scheduled: list[Fired] = field(default_factory=list)
    """Each scheduled invocation and its outcome."""


def is_log_message(record: dict[str, Any]) -> bool:
    """A structured log line, not an EMF metric blob (which carries `_aws`, per the EMF
    specification): the run's metrics come through CloudWatch, and at 100,000 items the blobs
    were half of the worker's log."""
    return "_aws" not in record


def batch_items(scenario: Scenario, batch_no: int) -> list[dict[str, Any]]:
    batch = scenario.batches[batch_no]
    items: list[dict[str, Any]] = []
    for priority, count in batch.counts.items():
        rejected = batch.reject.get(priority, 0)
        # `class` is the priority the item would have; the fifo baseline routes on it without
        # giving the item a priority, so every item shares one queue.
        items += [
            {"id": f"b{batch_no}-{priority.lower()}-{i}", "class": priority}
            | ({} if scenario.dispatch == "fifo" else {"priority": priority})
            | ({"reject": True} if i < rejected else {})
            for i in range(count)
        ]
    items += [{"id": f"b{batch_no}-direct-{i}"} for i in range(batch.direct)]
    return items + [dict(item) for item in batch.items]


def stack_config(scenario: Scenario, api_url: str) -> dict[str, Any]:
    """Stack config for local runs: short timers so a run takes seconds, not minutes."""
    mode: dict[str, Any] = (
        {
            "sluice:dispatch": "yield",
            "sluice:priorities": [FIFO_QUEUE],
            "sluice:throttleRule": {"Variable": "$.item.class", "IsPresent": True},
        }
        if scenario.dispatch == "fifo"
        else {"sluice:dispatch": scenario.dispatch}
    )
    return {
        "sluice:concurrency": str(scenario.api.concurrency_limit),
        **mode,
        "sluice:httpUrl": api_url,
        "sluice:httpTimeoutSeconds": "5",
        "sluice:workerTimeoutSeconds": "10",
        "sluice:yieldDelaySeconds": "1",
        "sluice:retryBaseSeconds": "1",
        "sluice:retryMaxSeconds": "4",
        "sluice:callbackTimeoutSeconds": str(int(scenario.deadline_s) + 60),
        **scenario.stack_config,
    }


def batch_source(requested: str, inline_bytes: int) -> str:
    """`inline` or `s3`: `auto` sends a batch inline when its input fits in 256 KiB."""
    if requested == SOURCE_AUTO:
        return SOURCE_INLINE if inline_bytes <= SFN_MAX_INPUT_BYTES else SOURCE_S3
    return requested


def start_batch(
    sfn: Any, s3: Any, stack: DeployedStack, *, source: str, name: str, items: list[dict[str, Any]]
) -> tuple[str, str]:
    """Start one execution of `items`; returns its ARN and the source used.

    A batch whose inline input would pass 256 KiB (or any batch, with source `s3`) is uploaded
    as a JSON array to the stack's results bucket and started with `{"source": {bucket, key}}`.
    An `inline` batch over the limit is sent as asked: Step Functions refuses it.
    """
    inline = json.dumps({"items": items})
    chosen = batch_source(source, len(inline.encode()))
    if chosen == SOURCE_S3:
        bucket, key = stack.outputs["resultsBucket"], f"{BATCHES_PREFIX}{name}.json"
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(items).encode())
        execution_input = json.dumps({"source": {"bucket": bucket, "key": key}})
    else:
        execution_input = inline
    arn = sfn.start_execution(
        stateMachineArn=stack.outputs["stateMachineArn"], name=name, input=execution_input
    )["executionArn"]
    return arn, chosen


@contextmanager
def observed_sends(observers: list[Callable[[str], None]]) -> Iterator[None]:
    """Tell each observer the body of every SQS message sent while it is in the list."""
    send_message = SQSBackend.send_message

    def observed(self: SQSBackend, queue_name: str, message_body: str, *args: Any, **kwargs: Any) -> Any:
        message = send_message(self, queue_name, message_body, *args, **kwargs)
        for observer in observers:
            observer(message_body)
        return message

    with mock.patch.object(SQSBackend, "send_message", observed):
        yield


def run_scenario(
    scenario: Scenario,
    on_tick: Callable[[LegacyApi, list[ExecutionRecord]], None] | None = None,
    on_deployed: Callable[[str, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run `scenario` on a fresh embedded AWS. `on_tick` is called every poll with the API and
    the executions so far; `on_deployed` once with the endpoint and the stack outputs, before the
    first batch (for operator commands run against the stack mid-run)."""
    # A hang must outlast the worker's timeout to kill it mid-item, and stay bounded.
    worker_timeout = float(stack_config(scenario, "")["sluice:workerTimeoutSeconds"])
    faults = CompletionFaults(scenario.completion_faults, hang_s=worker_timeout + 2)
    sends: list[Callable[[str], None]] = []
    with embedded_aws() as aws, faults.installed(), observed_sends(sends):
        api = LegacyApi(scenario.api).start()
        try:
            result = _run(aws, api, scenario, on_tick, sends, on_deployed)
        finally:
            api.stop()
    result.completion_calls = dict(faults.calls)
    return result


def _run(  # noqa: PLR0917 - the run's parts, passed through from run_scenario
    aws: EmbeddedAws,
    api: LegacyApi,
    scenario: Scenario,
    on_tick: Callable[[LegacyApi, list[ExecutionRecord]], None] | None,
    sends: list[Callable[[str], None]],
    on_deployed: Callable[[str, dict[str, Any]], None] | None,
) -> RunResult:
    stack = deploy(aws, stack_config(scenario, api.url))
    if on_deployed is not None:
        on_deployed(aws.endpoint, stack.outputs)
    before = aws.snapshot()
    sfn, sqs, s3 = aws.client("stepfunctions"), aws.client("sqs"), aws.client("s3")
    enqueued_at: dict[str, float] = {}
    lock = threading.Lock()

    def on_send(body: str) -> None:
        # Every send, whoever makes it: the worker takes tickets and payloads itself (not only
        # through the mappings), so a receive hook would miss items. An item's ticket comes first.
        key = message_key(body)
        if key is not None:
            with lock:
                enqueued_at.setdefault(f"{key[0]}#{key[1]}", time.time())

    for url in stack.outputs["queueUrls"].values():
        for n in range(scenario.malformed_payloads):
            # Alternately not JSON and JSON without a token: neither names an execution to tell.
            sqs.send_message(QueueUrl=url, MessageBody="{not json" if n % 2 else json.dumps({"item": n}))
    sends.append(on_send)
    mappings = EventSourceMappings(stack.mappings, aws.runner, sqs)
    mappings.start()
    worker = stack.outputs["workerFunctionName"]
    control = _Control(aws, stack, mappings)
    executions: list[ExecutionRecord] = []
    t0 = time.time()
    deadline = t0 + scenario.deadline_s
    pending = sorted(range(len(scenario.batches)), key=lambda n: scenario.batches[n].start_s)
    capacity_changes = list(scenario.capacity_changes)
    try:
        while time.time() < deadline:
            now = time.time()
            while capacity_changes and now - t0 >= capacity_changes[0][0]:
                api.set_concurrency_limit(capacity_changes.pop(0)[1])
            if scenario.feed is not None and now - t0 < scenario.feed.until_s:
                _feed(scenario, sfn, stack, api, executions)
            while pending and now - t0 >= scenario.batches[pending[0]].start_s:
                n = pending.pop(0)
                items = batch_items(scenario, n)
                name = f"{scenario.name}-{n}-{uuid.uuid4().hex[:8]}"
                arn, source = start_batch(sfn, s3, stack, source=scenario.source, name=name, items=items)
                executions.append(ExecutionRecord(arn, n, items, time.time(), source=source))
            _refresh(sfn, s3, executions)
            if on_tick is not None:
                on_tick(api, executions)
            feeding = scenario.feed is not None and time.time() - t0 < scenario.feed.until_s
            if not pending and not feeding and all(r.status != "RUNNING" for r in executions):
                break
            time.sleep(POLL_S)
    finally:
        # Executions still running at the deadline would keep calling into this process's moto
        # (and the next run's server): stop them before leaving.
        for record in executions:
            if record.status == "RUNNING":
                sfn.stop_execution(executionArn=record.arn, error="Sluice.RunDeadline")
        mappings.stop()
        control.stop()
    dead_letters = [
        {"queue": priority, "body": m["Body"], "reason": _reason(m)}
        for priority, url in stack.outputs["dlqUrls"].items()
        for m in _drain(sqs, url)
    ]
    requests = {k: n - before.get(k, 0) for k, n in aws.snapshot().items() if n - before.get(k, 0)}
    return RunResult(
        scenario=scenario,
        executions=executions,
        calls=api.snapshot(),
        enqueued_at=enqueued_at,
        worker_stats=aws.runner.stats(worker),
        mapping_stats=list(mappings.stats.values()),
        worker_logs=aws.runner.log_records(worker, keep=is_log_message),
        stack=stack,
        wall_s=max((r.stopped or time.time()) for r in executions) - t0 if executions else 0.0,
        requests=requests,
        parent_transitions=sum(_transitions(sfn, r.arn) for r in executions),
        dead_letters=dead_letters,
        limits=control.limits(),
        capacity=api.capacity_snapshot(),
        controller_logs=control.logs(),
        scheduled=list(control.schedules.fired) if control.schedules else [],
    )


class _Control:
    """The control plane on the embedded AWS: the runner and mappings follow what is set through
    the Lambda API (by the adaptive controller or `sluice limits set`); with a controller, its
    schedule fires (the first time at once, so a short run need not wait a minute) and the
    worker's EMF lines become CloudWatch metrics."""

    def __init__(self, aws: EmbeddedAws, stack: DeployedStack, mappings: EventSourceMappings) -> None:
        self._aws = aws
        worker = stack.outputs["workerFunctionName"]
        self._functions = sorted({s.function_name for s in stack.schedules})
        # Monotonic times of the sync, as epoch seconds like the API's calls.
        self._epoch_offset = time.time() - time.monotonic()
        adaptive = bool(stack.schedules)
        self.emf = EmfForwarder(aws.client("cloudwatch"), aws.runner, [worker]).start() if adaptive else None
        self.sync = ControlPlaneSync(
            aws.client("lambda"),
            aws.runner,
            mappings,
            functions=[worker],
            mapping_ids={m.uuid: m.uuid for m in stack.mappings},
        ).start()
        self.schedules = (
            Schedules(
                [(s.function_name, s.expression) for s in stack.schedules], aws.runner, fire_now=True
            ).start()
            if adaptive
            else None
        )

    def stop(self) -> None:
        if self.schedules is not None:
            self.schedules.stop()
        self.sync.stop()
        if self.emf is not None:
            self.emf.stop()

    def limits(self) -> list[tuple[float, str, int | bool | None]]:
        return [(c.t + self._epoch_offset, c.what, c.value) for c in self.sync.timeline]

    def logs(self) -> list[dict[str, Any]]:
        return [r for name in self._functions for r in self._aws.runner.log_records(name)]


def _feed(
    scenario: Scenario, sfn: Any, stack: DeployedStack, api: LegacyApi, executions: list[ExecutionRecord]
) -> None:
    """Top the feed's items waiting for their API call back up to its `outstanding`."""
    feed = scenario.feed
    assert feed is not None  # noqa: S101 - the caller checked
    fed = [r for r in executions if r.batch == FEED_BATCH]
    answered = {c.key for c in api.snapshot() if c.status not in RETRIED_STATUSES}
    waiting = sum(1 for r in fed for i in range(len(r.items)) if f"{r.arn}#{i}" not in answered)
    while waiting < feed.outstanding:
        n = len(fed)
        items = [{"id": f"feed-{n}-{i}", "priority": feed.priority} for i in range(feed.batch_size)]
        arn = sfn.start_execution(
            stateMachineArn=stack.outputs["stateMachineArn"],
            name=f"{scenario.name}-feed-{n}-{uuid.uuid4().hex[:8]}",
            input=json.dumps({"items": items}),
        )["executionArn"]
        record = ExecutionRecord(arn, FEED_BATCH, items, time.time())
        executions.append(record)
        fed.append(record)
        waiting += feed.batch_size


def _refresh(sfn: Any, s3: Any, executions: list[ExecutionRecord]) -> None:
    for record in executions:
        if record.status == "RUNNING":
            described = sfn.describe_execution(executionArn=record.arn)
            if described["status"] != "RUNNING":
                record.status = described["status"]
                record.stopped = time.time()
                record.output = json.loads(described.get("output") or "null")
                record.results = read_results(s3, record.output)


def _drain(sqs: Any, url: str, limit: int = 1_000) -> list[dict[str, Any]]:
    """Every message on a queue (bounded), received once and left invisible: the run is over."""
    messages: list[dict[str, Any]] = []
    while len(messages) < limit:
        batch = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=60
        ).get("Messages", [])
        if not batch:
            return messages
        messages += batch
    return messages


def _reason(message: dict[str, Any]) -> str | None:
    attribute = message.get("MessageAttributes", {}).get(DEAD_LETTER_REASON_ATTRIBUTE)
    return attribute.get("StringValue") if attribute else None


def _transitions(sfn: Any, execution_arn: str) -> int:
    """State entries in an execution's history (what Step Functions bills as transitions)."""
    count, token = 0, None
    while True:
        page = sfn.get_execution_history(
            executionArn=execution_arn, maxResults=1000, **({"nextToken": token} if token else {})
        )
        count += sum(1 for e in page["events"] if e["type"].endswith("StateEntered"))
        token = page.get("nextToken")
        if not token:
            return count
