"""Batches: how far one is (`sluice batch status`), from its Map run, its progress record and
the queues."""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError

from sluice_fanout.cli.common import command_parser, read_stack_outputs, run_command
from sluice_fanout.handlers.adapters import BatchCounts
from sluice_fanout.handlers.progress import Status, status

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

EXECUTION_ARN = re.compile(r"^arn:aws[a-z-]*:states:([a-z0-9-]+):\d{12}:execution:[^:]+:[^:]+$")
ARN_EXAMPLE = "arn:aws:states:eu-west-1:123456789012:execution:sluice-workflow-state-machine:batch-42"
DEFAULT_WATCH_S = 5.0
WATCH_MAX_S = 86_400.0
"""--watch ends when the batch does, or after this long."""
BAR_WIDTH = 40

HELP_EPILOG = """\
`sluice batch status EXECUTION --stack-outputs FILE` (or `python -m sluice_fanout.cli batch ...`).

For one parent execution (a batch): items succeeded, failed, retrying (with the soonest next
attempt), waiting in a queue or at the API, and not started yet by the Map; the throughput
since the batch started and the time to finish at that rate (an estimate by Little's law:
items left / throughput). `--watch` refreshes it until the batch ends; `--json` prints it for a
machine. The queues' depths are the stack's, all batches together.

Counts come from the Map run (total, not started), the worker's progress record of the batch
(`batch#<execution ARN>` in the idempotency table: one write per item's outcome and one per
retry) and, once the execution has ended, its output (exact). Credentials come from boto3's
default chain; `--region` and `--endpoint-url` override where the calls go."""


class BatchInputError(Exception):
    """The command line or the stack outputs cannot be used; the message says the fix."""


@dataclass(frozen=True)
class Stack:
    state_machine: str
    table: str
    queue_urls: dict[str, str]
    region: str | None


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
    return Stack(arn, str(outputs["idempotencyTable"]), dict(outputs["queueUrls"]), region)


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


class Batches:
    """One stack's batches as the command reads them."""

    def __init__(self, stack: Stack, sfn: Any, sqs: Any, counts: BatchCounts) -> None:  # boto3 clients
        self._stack = stack
        self._sfn = sfn
        self._sqs = sqs
        self._counts = counts

    def report(self, execution: str, now: float) -> Report:
        try:
            described = self._sfn.describe_execution(executionArn=execution)
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
        seen = pending = 0
        for run in self._sfn.list_map_runs(executionArn=execution).get("mapRuns", []):
            counts = self._sfn.describe_map_run(mapRunArn=run["mapRunArn"])["itemCounts"]
            seen += int(counts.get("total", 0))
            pending += int(counts.get("pending", 0))
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
            progress=self._counts.load(execution),
            final=final,
        )
        return Report(result, {p: self._depth(url) for p, url in self._stack.queue_urls.items()})

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
    show.add_argument(
        "--stack-outputs", type=Path, required=True, metavar="FILE", help="`pulumi stack output --json`"
    )
    show.add_argument("--json", action="store_true", help="print it as JSON")
    show.add_argument(
        "--watch",
        nargs="?",
        const=DEFAULT_WATCH_S,
        type=float,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_WATCH_S:g}) until the batch ends",
    )
    show.add_argument("--region", help="AWS region (default: the state machine's)")
    show.add_argument("--endpoint-url", help="AWS endpoint, e.g. the embedded AWS's http://127.0.0.1:PORT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("batch", lambda: _run(args), bad_input=(BatchInputError,), aws_errors=(ClientError,))


def _run(args: argparse.Namespace) -> int:
    if args.watch is not None and not args.watch > 0:
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
    )
    if args.watch is not None and not args.json:
        clear = sys.stdout.isatty()
        watch(lambda: batches.report(execution, time.time()), print, every_s=args.watch, clear=clear)
        return 0
    report = batches.report(execution, time.time())
    print(json.dumps(as_json(report), indent=2) if args.json else "\n".join(format_report(report)))
    return 0
