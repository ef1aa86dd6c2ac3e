"""Why one item is where it is (`sluice explain EXECUTION ITEM`): the reads behind the sentence
that handlers/explain.py writes."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError

from sluice_fanout.cli.batch import (
    READS_AT_ONCE,
    Batches,
    BatchInputError,
    Stack,
    check_execution,
    stack_from_outputs,
)
from sluice_fanout.cli.common import add_stack_arguments, command_parser, read_stack_outputs, run_command
from sluice_fanout.cli.limits import deployed_from
from sluice_fanout.handlers import contract
from sluice_fanout.handlers.adapters import BatchCounts, DynamoStore, KeyedItems, LimitsStore, sfn_time
from sluice_fanout.handlers.adaptive import AdaptiveConfig
from sluice_fanout.handlers.contract import DEFAULT_THROTTLE_RULE
from sluice_fanout.handlers.controller import BreakerMode, BreakerSettings, StateUnreadable, Stored
from sluice_fanout.handlers.explain import Breaker, Evidence, KeyHold, Queue, Slots, explain
from sluice_fanout.handlers.once import item_persistence, stored_item
from sluice_fanout.handlers.order import BatchSourceError, order, placed_item, read_items
from sluice_fanout.handlers.runtime_limits import LimitsError, Overrides, StoredLimits
from sluice_fanout.handlers.worker_config import WorkerConfig

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from sluice_fanout.handlers.runtime_limits import Effective

HELP_EPILOG = """\
`sluice explain EXECUTION ITEM --stack-outputs FILE` (or `python -m sluice_fanout.cli explain ...`).

ITEM is the item's index in the batch (0 for the first) or, with --id-field, the value of that
field in one item. Prints where the item is and why, in a sentence: succeeded or failed (when,
after how many attempts, the error), dead-lettered, at the API now, retrying (the error, the
attempt, the next one's time), paused by the breaker, held by its key, waiting in its priority's
queue (how many items wait with or ahead of it, whether the API's slots are all busy or the
calls-per-second limit holds it, and an estimate of the time left), or not started by the Map.

It reads, whatever the batch's size: the execution, its state machine and Map run, the item's
idempotency record and its ended record (one GetItem each, by key), the batch's progress record,
the worker's settings and run-time limits, the queues' depths, the breaker's state and, for a
keyed item, its wait record and its key's ledger: 15 requests, in three waves at once. An item
of a batch the Map reads in priority order (from S3, or larger than the Map opens at once) is
read with two ranged GETs through the order function's lookup; --id-field reads the whole batch
once. --json prints the sentence with what it was made from."""


class ExplainInputError(BatchInputError):
    """The command line, the stack outputs or the item cannot be used; the message says the fix."""


@dataclass(frozen=True)
class Routing:
    """What the state machine's Route does with an item, read from its definition."""

    default_rule: bool
    """The stack throttles by the default rule (an item with a `priority` is throttled)."""
    default_priority: str | None
    map_max_concurrency: int | None


def routing_of(definition: dict[str, Any]) -> Routing:
    """From the inline Map's item workflow: its Route's rule and where items without a priority
    go; items larger than the Map's concurrency are fanned out in priority order."""
    fan_out = definition.get("States", {}).get("FanOutInline", {})
    states = fan_out.get("ItemProcessor", {}).get("States", {})
    # State names carry their Map's prefix (definition.INLINE_PREFIX).
    route: dict[str, Any] = next((state for name, state in states.items() if name.endswith("Route")), {})
    default_rule, default_priority = True, None
    for choice in route.get("Choices", []):
        both = choice.get("And")
        # Throttled choices are And(throttle rule, priority rule).
        if not isinstance(both, list) or len(both) != 2:
            continue
        default_rule = default_rule and both[0] == DEFAULT_THROTTLE_RULE
        if both[1] == {"Not": {"Variable": "$.item.priority", "IsPresent": True}}:
            step = str(choice.get("Next", "")).rsplit("-", 1)[-1]
            default_priority = step.removeprefix("Ticket").removeprefix("Enqueue")
    limit = fan_out.get("MaxConcurrency")
    return Routing(default_rule, default_priority or None, int(limit) if isinstance(limit, int) else None)


def parse_index(ref: str) -> int:
    if not ref.isdigit():
        raise ExplainInputError(
            f"ITEM {ref!r} is not an index; give the item's index (0 for the first), or its id "
            "with --id-field NAME"
        )
    return int(ref)


def find_index(items: Sequence[Any], ref: str, id_field: str | None) -> int:
    """The item's index from ITEM: an index, or (with `id_field`) the value of that field."""
    if id_field is None:
        index = parse_index(ref)
        if index >= len(items):
            raise ExplainInputError(
                f"item {index} is not in this batch of {len(items):,} items (indexes 0 to {len(items) - 1})"
            )
        return index
    for index, item in enumerate(items):
        if isinstance(item, dict) and str(item.get(id_field)) == ref:
            return index
    raise ExplainInputError(
        f"no item of this batch has {id_field} = {ref!r}; check the id, or give its index"
    )


class Explainer:
    """One stack's items as the command reads them."""

    def __init__(self, stack: Stack, outputs: dict[str, Any], session: Any, endpoint_url: str | None) -> None:
        def client(name: str) -> Any:
            return session.client(name, endpoint_url=endpoint_url)

        self._stack = stack
        self._outputs = outputs
        self._sfn = client("stepfunctions")
        self._sqs = client("sqs")
        self._ddb = client("dynamodb")
        self._lam = client("lambda")
        self._s3 = client("s3")
        self._counts = BatchCounts(self._ddb, stack.table, ttl_s=0)
        self._batches = Batches(stack, self._sfn, self._sqs, self._counts)

    def evidence(self, execution: str, ref: str, id_field: str | None, now: float) -> Evidence:
        # First and alone: an execution that is not this stack's is refused before anything else.
        described = self._batches.describe(execution)
        persistence = item_persistence(self._ddb, self._stack.table)
        # The rest in three waves of reads at once, each needing the one before: the command
        # waits for about six round trips, not for its twenty reads one after another.
        with ThreadPoolExecutor(max_workers=READS_AT_ONCE) as pool:
            definition = pool.submit(self._definition)
            worker = pool.submit(self._worker)
            reported = pool.submit(self._batches.report, execution, now, described)
            overrides = pool.submit(self._stored_limits)
            controller = pool.submit(self._controller)
            known = parse_index(ref) if id_field is None else None
            if known is not None:
                stored = pool.submit(stored_item, persistence, execution, known)
                ended = pool.submit(self._counts.ended_item, execution, known)
            routing = routing_of(definition.result())
            worker_env, deployed = worker.result()
            config = WorkerConfig.from_env(worker_env, ExplainInputError)
            priorities = tuple(config.priorities)
            default = routing.default_priority or priorities[-1]
            located = pool.submit(self._locate, described, ref, id_field, routing, (priorities, default))
            tickets = (
                pool.submit(self._tickets_busy, config.ticket_queue_url) if config.ticket_queue_url else None
            )
            breaker = pool.submit(self._breaker, controller.result(), now)
            index, item, position = located.result()
            if known is None:
                stored = pool.submit(stored_item, persistence, execution, index)
                ended = pool.submit(self._counts.ended_item, execution, index)
            named = item.get(contract.FIELD_PRIORITY) if isinstance(item, dict) else None
            priority = named if isinstance(named, str) else None
            queue_priority = priority if priority in priorities else default
            effective = _effective(deployed, overrides.result())
            key = pool.submit(
                self._key, config, effective, item, queue_priority, described, index=index, now=now
            )
            report = reported.result()
            busy = tickets.result() if tickets is not None else sum(h for _, h in report.queues.values())
            evidence_parts = (stored.result(), ended.result(), breaker.result(), key.result())
        status = report.status
        rank = priorities.index(queue_priority)
        started = status.total - status.not_started
        controlled = controller.result()
        limit = (
            effective.concurrency
            if controlled is None
            else min(controlled.limit, effective.concurrency or controlled.limit)
        )
        return Evidence(
            index=index,
            total=status.total,
            state=status.state,
            started_at=status.started_at,
            now=now,
            priority=priority,
            priorities=priorities,
            throttled=priority is not None or not routing.default_rule,
            stored=evidence_parts[0],
            ended=evidence_parts[1],
            retry=next((r for r in report.progress.retries if r.index == index), None),
            not_started=status.state == "RUNNING" and position >= started,
            started=started,
            queue=Queue(
                queue_priority,
                sum(report.queues.get(p, (0, 0))[0] for p in priorities[: rank + 1]),
                priorities[: rank + 1],
            ),
            slots=Slots(busy, limit, effective.calls_per_second),
            breaker=evidence_parts[2],
            key=evidence_parts[3],
            rate_per_s=status.rate_per_s,
            listed_failure=_listed_failure(described, index),
        )

    def _definition(self) -> dict[str, Any]:
        described = self._sfn.describe_state_machine(stateMachineArn=self._stack.state_machine)
        definition: dict[str, Any] = json.loads(described["definition"])
        return definition

    def _locate(
        self,
        described: dict[str, Any],
        ref: str,
        id_field: str | None,
        routing: Routing,
        order_by: tuple[tuple[str, ...], str],
    ) -> tuple[int, Any, int]:
        """The item's index, the item, and its place in the order the Map opens the batch.

        A batch the Map reads sorted by priority (from S3, or larger than the Map opens at once)
        has a lookup beside its ordered copy: two ranged GETs find one item by its index,
        whatever the batch's size. Otherwise, or to find an item by its id, the batch is read
        once: inline (at most 256 KiB) or its S3 file."""
        try:
            batch_input = json.loads(described.get("input") or "{}")
        except ValueError:
            batch_input = {}
        inline = batch_input.get("items") if isinstance(batch_input, dict) else None
        limit = routing.map_max_concurrency
        ordered = not isinstance(inline, list) or (limit is not None and len(inline) > limit)
        name = described["executionArn"].rsplit(":", 1)[-1]
        if ordered and id_field is None and self._stack.results_bucket is not None:
            index = parse_index(ref)
            placed = placed_item(self._s3, self._stack.results_bucket, name, index)
            if placed is not None:
                return index, placed.item, placed.position
        try:
            items = inline if isinstance(inline, list) else read_items(batch_input, lambda: self._s3)
        except BatchSourceError as exc:
            raise ExplainInputError(f"{described['executionArn']}: its batch cannot be read: {exc}") from exc
        index = find_index(items, ref, id_field)
        if not ordered:
            return index, items[index], index
        priorities, default = order_by
        position = next(
            n for n, entry in enumerate(order(items, priorities, default)) if entry["index"] == index
        )
        return index, items[index], position

    def _worker(self) -> tuple[dict[str, str], Any]:
        name = self._outputs.get("workerFunctionName")
        if not isinstance(name, str):
            raise ExplainInputError(
                "the stack outputs have no workerFunctionName; write them with `pulumi stack output --json`"
            )
        try:
            configuration = self._lam.get_function_configuration(FunctionName=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise ExplainInputError(
                    f"no function {name!r} here; check --region and --endpoint-url"
                ) from exc
            raise
        env = (configuration.get("Environment") or {}).get("Variables") or {}
        return env, deployed_from(configuration)

    def _stored_limits(self) -> StoredLimits | None:
        return LimitsStore(self._ddb, self._stack.table, self._outputs["workerFunctionName"]).load()

    def _controller(self) -> Stored | None:
        """The adaptive controller's state, if the stack has one and it is readable (the
        controller starts afresh from an unreadable one, so the command ignores it too)."""
        if not self._outputs.get("controllerFunctionName"):
            return None
        try:
            return DynamoStore(self._ddb, self._stack.table, self._outputs["workerFunctionName"]).load()
        except StateUnreadable:
            return None

    def _tickets_busy(self, ticket_queue_url: str) -> int:
        # A ticket is in flight while its worker holds a slot: one per busy slot.
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=ticket_queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessagesNotVisible"])

    def _breaker(self, state: Stored | None, now: float) -> Breaker | None:
        if state is None or state.breaker.mode != BreakerMode.OPEN or state.breaker.opened_at is None:
            return None
        controller_name = self._outputs["controllerFunctionName"]
        env = (
            self._lam.get_function_configuration(FunctionName=controller_name).get("Environment") or {}
        ).get("Variables") or {}
        settings = AdaptiveConfig.from_env(env).breaker or BreakerSettings()
        opened = float(state.breaker.opened_at)
        until = opened + settings.open_seconds
        return Breaker(opened, until) if until > now else None

    def _key(
        self,
        config: WorkerConfig,
        effective: Effective,
        item: Any,
        priority: str,
        described: dict[str, Any],
        *,
        index: int,
        now: float,
    ) -> KeyHold | None:
        keys = effective.keys or config.keys
        if keys is None or not isinstance(item, dict) or not isinstance(item.get(keys.field), str):
            return None
        key = item[keys.field]
        # The sequence the state machine's keyed wait step gave it (definition._keyed_wait).
        submitted = sfn_time(described["startDate"].timestamp())
        seq = f"{submitted}#{described['executionArn']}#{index + contract.KEYED_INDEX_OFFSET}"
        spot = KeyedItems(self._ddb, config.keyed_table, keys.rule, lease_s=0).spot(priority, key, seq, now)
        rule = keys.rule(key, priority)
        return KeyHold(key, priority, spot.waiting, spot.pending, spot.busy, rule.cap, rule.ordered)


def _effective(deployed: Any, stored: StoredLimits | None) -> Effective:
    try:
        return (stored.overrides if stored else Overrides()).apply(deployed)
    except LimitsError:
        return Overrides().apply(deployed)  # the workers ignore overrides that no longer fit


def _listed_failure(described: dict[str, Any], index: int) -> tuple[str, str] | None:
    """The item's failure as the batch's output lists it (the first failures only)."""
    try:
        output = json.loads(described.get("output") or "{}")
    except ValueError:
        return None
    for failure in output.get("failures", []) if isinstance(output, dict) else []:
        if isinstance(failure, dict) and failure.get("index") == index:
            return str(failure.get("error", "")), str(failure.get("cause", ""))
    return None


def evidence_json(evidence: Evidence) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if hasattr(value, "__dataclass_fields__"):
            return {name: plain(getattr(value, name)) for name in value.__dataclass_fields__}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return {"explanation": explain(evidence), "evidence": plain(evidence)}


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("sluice explain", __doc__, HELP_EPILOG)
    parser.add_argument("execution", metavar="EXECUTION", help="the batch's execution ARN")
    parser.add_argument(
        "item", metavar="ITEM", help="the item's index (0 for the first), or its id with --id-field"
    )
    parser.add_argument("--id-field", metavar="NAME", help="find the item whose field NAME equals ITEM")
    parser.add_argument("--json", action="store_true", help="print the sentence and what it was made from")
    add_stack_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("explain", lambda: _run(args), bad_input=(BatchInputError,), aws_errors=(ClientError,))


def _run(args: argparse.Namespace) -> int:
    execution = check_execution(args.execution)
    outputs = read_stack_outputs(args.stack_outputs, ExplainInputError)
    stack = stack_from_outputs(outputs, str(args.stack_outputs))
    session = boto3.session.Session(region_name=args.region or stack.region)
    explainer = Explainer(stack, outputs, session, args.endpoint_url)
    evidence = explainer.evidence(execution, args.item, args.id_field, time.time())
    name = execution.rsplit(":", 1)[-1]
    if args.json:
        print(json.dumps(evidence_json(evidence), indent=2, default=str))
    else:
        print(f"item {evidence.index} of batch {name}: {explain(evidence)}")
    return 0
