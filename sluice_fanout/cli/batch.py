"""Batches: how far one is (`sluice batch status`), from its Map run, its progress record and
the queues; and re-running its failed items (`sluice batch redrive`)."""

from __future__ import annotations

import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError

from sluice_fanout.cli.common import add_stack_arguments, command_parser, read_stack_outputs, run_command
from sluice_fanout.handlers.adapters import BatchCounts
from sluice_fanout.handlers.aggregate import (
    READ_CHUNK_BYTES,
    error_and_cause,
    json_array_items,
    normalise,
    result_writer_entries,
)
from sluice_fanout.handlers.contract import STATUS_FAILED
from sluice_fanout.handlers.order import BatchSourceError, read_items
from sluice_fanout.handlers.progress import Progress, Status, status
from sluice_fanout.handlers.redrive import (
    MAX_REDRIVES,
    REDRIVE_PREFIX,
    Failed,
    Plan,
    describe,
    plan,
    redrive_name,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator, Sequence

EXECUTION_ARN = re.compile(r"^arn:aws[a-z-]*:states:([a-z0-9-]+):\d{12}:execution:[^:]+:[^:]+$")
ARN_EXAMPLE = "arn:aws:states:eu-west-1:123456789012:execution:sluice-workflow-state-machine:batch-42"
DEFAULT_WATCH_S = 5.0
WATCH_MAX_S = 86_400.0
"""--watch ends when the batch does, or after this long."""
BAR_WIDTH = 40
READS_AT_ONCE = 8
"""A command's independent AWS reads run at once, on this many threads."""

HELP_EPILOG = """\
`sluice batch status EXECUTION --stack-outputs FILE` (or `python -m sluice_fanout.cli batch ...`).

For one parent execution (a batch): items succeeded, failed, retrying (with the soonest next
attempt), waiting in a queue or at the API, and not started yet by the Map; the throughput
since the batch started and the time to finish at that rate (an estimate by Little's law:
items left / throughput). `--watch` refreshes it until the batch ends; `--json` prints it for a
machine. The queues' depths are the stack's, all batches together.

Counts come from the Map run (total, not started), the worker's progress record of the batch
(`batch#<execution ARN>` in the idempotency table: one write per item's outcome and one per
retry) and, once the execution has ended, its output (exact).

`sluice batch redrive EXECUTION --stack-outputs FILE [--error NAME] [--dry-run]` runs the failed
items of an ended batch again (all, or those that failed with the error NAME, e.g.
Sluice.RetriesExhausted), as a new execution of the same state machine whose input links back to
the first (`redrive_of`). Items that succeeded are not in it and are never called again. It
reads every result of the batch once (the Map's result files in S3), writes the failed items to
the results bucket under redrive/, and says what it will do before it does it; --dry-run stops
there.

Credentials come from boto3's default chain; `--region` and `--endpoint-url` override where the
calls go."""


class BatchInputError(Exception):
    """The command line or the stack outputs cannot be used; the message says the fix."""


@dataclass(frozen=True)
class Stack:
    state_machine: str
    table: str
    queue_urls: dict[str, str]
    region: str | None
    results_bucket: str | None = None


def stack_from_outputs(outputs: Any, origin: str) -> Stack:
    if not isinstance(outputs, dict):
        raise BatchInputError(f"{origin}: expected the JSON object of `pulumi stack output --json`")
    missing = [k for k in ("stateMachineArn", "idempotencyTable", "queueUrls") if not outputs.get(k)]
    if missing:
        raise BatchInputError(
            f"{origin}: no {', '.join(missing)} output; write the file with `pulumi stack output --json` "
            "from a Sluice stack"
        )
    arn = str(outputs["stateMachineArn"])
    region = arn.split(":")[3] if arn.count(":") >= 4 else None
    bucket = outputs.get("resultsBucket")
    return Stack(
        arn,
        str(outputs["idempotencyTable"]),
        dict(outputs["queueUrls"]),
        region,
        bucket if isinstance(bucket, str) and bucket else None,
    )


def check_execution(arn: str) -> str:
    if not EXECUTION_ARN.match(arn):
        raise BatchInputError(
            f"{arn!r} is not an execution ARN; expected one like {ARN_EXAMPLE} "
            "(`aws stepfunctions list-executions --state-machine-arn ...`)"
        )
    return arn


@dataclass(frozen=True)
class Report:
    status: Status
    queues: dict[str, tuple[int, int]]
    """Priority -> (visible, in flight or waiting to retry), all batches."""
    progress: Progress = field(default_factory=Progress)


class Batches:
    """One stack's batches as the command reads them."""

    def __init__(
        self, stack: Stack, sfn: Any, sqs: Any, counts: BatchCounts, s3: Any = None
    ) -> None:  # boto3 clients
        self._stack = stack
        self._sfn = sfn
        self._sqs = sqs
        self._counts = counts
        self._s3 = s3

    def describe(self, execution: str) -> dict[str, Any]:
        """The execution, checked to be one of this stack's (DescribeExecution)."""
        try:
            described: dict[str, Any] = self._sfn.describe_execution(executionArn=execution)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("ExecutionDoesNotExist", "InvalidArn"):
                raise BatchInputError(
                    f"no execution {execution} here; check the ARN, --region and --endpoint-url"
                ) from exc
            raise
        if described.get("stateMachineArn") != self._stack.state_machine:
            raise BatchInputError(
                f"{execution} is an execution of {described.get('stateMachineArn')}, not of this stack's "
                f"{self._stack.state_machine}; give the stack outputs of the stack that ran it"
            )
        return described

    def report(self, execution: str, now: float, described: dict[str, Any] | None = None) -> Report:
        if described is None:
            described = self.describe(execution)
        # Independent reads, at once: the command waits for the slowest, not for their sum.
        with ThreadPoolExecutor(max_workers=READS_AT_ONCE) as pool:
            map_counts = pool.submit(self._map_counts, execution)
            progress = pool.submit(self._counts.load, execution)
            depths = {p: pool.submit(self._depth, url) for p, url in self._stack.queue_urls.items()}
            seen, pending = map_counts.result()
            queues = {p: depth.result() for p, depth in depths.items()}
        # The Map run counts items as it reads them: an inline batch's size is known at once.
        total = max(seen, _inline_size(described.get("input")))
        not_started = total - (seen - pending)
        final = None
        if described["status"] == "SUCCEEDED":
            output = json.loads(described.get("output") or "{}")
            if isinstance(output, dict) and {"total", "succeeded", "failed"} <= set(output):
                total = int(output["total"])
                final = (int(output["succeeded"]), int(output["failed"]))
        result = status(
            execution=execution,
            state=str(described["status"]),
            started_at=described["startDate"].timestamp(),
            now=now,
            total=total,
            not_started=not_started,
            progress=progress.result(),
            final=final,
        )
        return Report(result, queues, progress.result())

    def _map_counts(self, execution: str) -> tuple[int, int]:
        """Items the batch's Map runs have read, and of those not started yet."""
        seen = pending = 0
        for run in self._sfn.list_map_runs(executionArn=execution).get("mapRuns", []):
            counts = self._sfn.describe_map_run(mapRunArn=run["mapRunArn"])["itemCounts"]
            seen += int(counts.get("total", 0))
            pending += int(counts.get("pending", 0))
        return seen, pending

    def redrive_plan(self, execution: str, error: str | None) -> tuple[Plan, dict[str, Any]]:
        """The failed items of an ended batch (all, or those with `error`), read from every one
        of its results once; and the execution as described."""
        described = self.describe(execution)
        if described["status"] == "RUNNING":
            raise BatchInputError(
                f"{execution} is still running; redrive its failed items once it has ended "
                "(`sluice batch status --watch` waits for that)"
            )
        try:
            output = json.loads(described.get("output") or "{}")
        except ValueError:
            output = {}
        location = output.get("results_location") if isinstance(output, dict) else None
        if not isinstance(location, dict):
            raise BatchInputError(
                f"{execution} ended {described['status']} without its results (no aggregate output), "
                "so which items failed is not known; start the items again as a new batch"
            )
        return plan(execution, self._failures(location), error), described

    def _failures(self, location: dict[str, Any]) -> Iterator[Failed]:
        bucket = location["bucket"]

        def read_records(key: str) -> Iterator[Any]:
            body = self._s3.get_object(Bucket=bucket, Key=key)["Body"]
            return json_array_items(body.iter_chunks(READ_CHUNK_BYTES))

        manifest = json.loads(self._s3.get_object(Bucket=bucket, Key=location["manifest_key"])["Body"].read())
        for position, entry in result_writer_entries(manifest, read_records):
            result = normalise(entry, position)
            if result["status"] == STATUS_FAILED:
                failed_with, cause = error_and_cause(result)
                yield Failed(int(result["index"]), failed_with, cause)

    def free_name(self, execution: str) -> str:
        """The first redrive name of this batch not taken yet (one DescribeExecution each)."""
        name = execution.rsplit(":", 1)[-1]
        prefix = execution.rsplit(":", 1)[0]
        for n in range(1, MAX_REDRIVES + 1):
            candidate = redrive_name(name, n)
            try:
                self._sfn.describe_execution(executionArn=f"{prefix}:{candidate}")
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ExecutionDoesNotExist":
                    return candidate
                raise
        raise BatchInputError(
            f"{name} has been redriven {MAX_REDRIVES} times; start its failed items as a new batch"
        )

    def start_redrive(self, planned: Plan, described: dict[str, Any], name: str) -> str:
        """Write the failed items (and their first indexes) to the results bucket and start the
        new execution on them."""
        if self._stack.results_bucket is None:
            raise BatchInputError(
                "the stack outputs have no resultsBucket; write them with `pulumi stack output --json`"
            )
        try:
            items = read_items(json.loads(described.get("input") or "{}"), lambda: self._s3)
        except BatchSourceError as exc:
            raise BatchInputError(f"the first batch's items cannot be read again: {exc}") from exc
        bucket = self._stack.results_bucket
        batch_key, indexes_key = f"{REDRIVE_PREFIX}{name}.json", f"{REDRIVE_PREFIX}{name}.indexes.json"
        chosen = [items[f.index] for f in planned.items]
        self._s3.put_object(Bucket=bucket, Key=batch_key, Body=json.dumps(chosen).encode())
        first = [f.index for f in planned.items]
        self._s3.put_object(Bucket=bucket, Key=indexes_key, Body=json.dumps(first).encode())
        started: str = self._sfn.start_execution(
            stateMachineArn=self._stack.state_machine,
            name=name,
            input=json.dumps(
                {
                    "source": {"bucket": bucket, "key": batch_key},
                    "redrive_of": {
                        "execution": planned.execution,
                        "indexes": {"bucket": bucket, "key": indexes_key},
                    },
                }
            ),
        )["executionArn"]
        return started

    def _depth(self, url: str) -> tuple[int, int]:
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]), int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )


def _inline_size(text: str | None) -> int:
    """Items in an inline batch's input (`{"items": [...]}`); 0 for a batch from S3."""
    try:
        items = json.loads(text or "{}").get("items")
    except (ValueError, AttributeError):
        return 0
    return len(items) if isinstance(items, list) else 0


def _clock(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%H:%M:%S")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes}m {secs}s" if hours else (f"{minutes}m {secs}s" if minutes else f"{secs}s")


def format_report(report: Report) -> list[str]:
    s = report.status
    name = s.execution.rsplit(":", 1)[-1]
    lines = [
        f"batch {name}: {s.state}, started {_clock(s.started_at)} UTC ({_duration(s.now - s.started_at)} ago)"
    ]
    retry = f" (next at {_clock(s.next_retry_at)} UTC)" if s.next_retry_at is not None else ""
    lines.append(
        f"items {s.total:,}: succeeded {s.succeeded:,}, failed {s.failed:,}, retrying {s.retrying:,}{retry}, "
        f"waiting or at the API {s.waiting_or_in_flight:,}, not started {s.not_started:,}"
    )
    share = s.done / s.total if s.total else 0.0
    filled = round(share * BAR_WIDTH)
    lines.append(f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share:.0%}")
    if s.state != "RUNNING":
        lines.append(f"ended: {s.done:,} of {s.total:,} items finished")
    elif s.rate_per_s is None:
        lines.append("throughput: no item finished yet, so no estimate of the time left")
    else:
        assert s.eta_s is not None  # noqa: S101 - set with the rate while running
        lines.append(
            f"throughput {s.rate_per_s:.2f} items/s since the start; about {_duration(s.eta_s)} to finish "
            "(an estimate: items left / throughput)"
        )
    queues = ", ".join(
        f"{p} {visible:,} waiting, {hidden:,} in flight" for p, (visible, hidden) in report.queues.items()
    )
    lines.append(f"queues now, all batches: {queues}")
    return lines


def as_json(report: Report) -> dict[str, Any]:
    return asdict(report.status) | {
        "queues": {p: {"waiting": v, "in_flight_or_retrying": h} for p, (v, h) in report.queues.items()}
    }


def watch(
    show: Callable[[], Report],
    out: Callable[[str], None],
    *,
    every_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    clear: bool = False,
) -> Report:
    """Show the report every `every_s` until the batch ends (or WATCH_MAX_S)."""
    started = clock()
    while True:
        report = show()
        text = "\n".join(format_report(report))
        out(("\x1b[2J\x1b[H" if clear else "") + text)
        if report.status.state != "RUNNING" or clock() - started >= WATCH_MAX_S:
            return report
        sleep(every_s)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("sluice batch", __doc__, HELP_EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("status", help="how far one batch is, and when it should finish")
    show.add_argument("execution", metavar="EXECUTION", help="the batch's execution ARN")
    show.add_argument("--json", action="store_true", help="print it as JSON")
    show.add_argument(
        "--watch",
        nargs="?",
        const=DEFAULT_WATCH_S,
        type=float,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_WATCH_S:g}) until the batch ends",
    )
    add_stack_arguments(show)
    again = sub.add_parser("redrive", help="run an ended batch's failed items again, as a new execution")
    again.add_argument("execution", metavar="EXECUTION", help="the batch's execution ARN")
    again.add_argument(
        "--error", metavar="NAME", help="only items that failed with this error, e.g. Sluice.RetriesExhausted"
    )
    again.add_argument("--dry-run", action="store_true", help="say what it would do, and start nothing")
    add_stack_arguments(again)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("batch", lambda: _run(args), bad_input=(BatchInputError,), aws_errors=(ClientError,))


def _redrive(batches: Batches, execution: str, error: str | None, *, dry_run: bool) -> int:
    planned, described = batches.redrive_plan(execution, error)
    if not planned.items:
        print("\n".join(describe(planned, new_name="", started=None)))
        return 0
    name = batches.free_name(execution)
    if dry_run:
        print("\n".join(describe(planned, new_name=name, started=None)))
        return 0
    started = batches.start_redrive(planned, described, name)
    print("\n".join(describe(planned, new_name=name, started=started)))
    return 0


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "watch", None) is not None and not args.watch > 0:
        raise BatchInputError(f"--watch {args.watch:g}: give a number of seconds above 0")
    execution = check_execution(args.execution)
    outputs = read_stack_outputs(args.stack_outputs, BatchInputError)
    stack = stack_from_outputs(outputs, str(args.stack_outputs))
    session = boto3.session.Session(region_name=args.region or stack.region)
    batches = Batches(
        stack,
        session.client("stepfunctions", endpoint_url=args.endpoint_url),
        session.client("sqs", endpoint_url=args.endpoint_url),
        BatchCounts(session.client("dynamodb", endpoint_url=args.endpoint_url), stack.table, ttl_s=0),
        session.client("s3", endpoint_url=args.endpoint_url),
    )
    if args.command == "redrive":
        return _redrive(batches, execution, args.error, dry_run=args.dry_run)
    if args.command == "status" and args.watch is not None and not args.json:
        clear = sys.stdout.isatty()
        watch(lambda: batches.report(execution, time.time()), print, every_s=args.watch, clear=clear)
        return 0
    report = batches.report(execution, time.time())
    print(json.dumps(as_json(report), indent=2) if args.json else "\n".join(format_report(report)))
    return 0
