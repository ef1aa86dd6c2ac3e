"""Dead letters: inspect Sluice's DLQs and redrive them to their source queues."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import ClientError

from sluice_fanout.cli.common import command_parser, read_stack_outputs, run_command
from sluice_fanout.handlers.contract import ATTR_DEAD_LETTER_REASON, FIELD_TOKEN

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import (
        ListMessageMoveTasksResultEntryTypeDef,
        MessageAttributeValueOutputTypeDef,
        MessageAttributeValueTypeDef,
        MessageTypeDef,
        StartMessageMoveTaskRequestTypeDef,
    )

SQS_MAX_RECEIVE_BATCH = 10  # ReceiveMessage MaxNumberOfMessages and *Batch entries maximum
SQS_MAX_MOVE_RATE = 500  # StartMessageMoveTask MaxNumberOfMessagesPerSecond maximum
# Short polling samples a subset of SQS's servers and can answer empty while messages wait;
# a one-second long poll asks them all, so "empty" means empty.
RECEIVE_WAIT_SECONDS = 1
# Long enough to gather one peek; the messages are released to 0 right after, and should the
# release fail they reappear on their own this soon.
PEEK_VISIBILITY_SECONDS = 10
# A --copy batch is sent and deleted within this; a message whose send failed is released at
# once, and one stranded by a crash returns to the DLQ after it.
COPY_VISIBILITY_SECONDS = 30
DEFAULT_PEEK = 5
DEFAULT_BODY_CHARS = 300
DEFAULT_COPY_LIMIT = 10_000


URL_EXAMPLE = "https://sqs.eu-west-1.amazonaws.com/123456789012/sluice-queues-high-dlq"
# The task token resumes a waiting execution; anyone holding it can complete the item.
TOKEN_MASK = "<masked>"  # noqa: S105 - the marker that replaces a token, not a secret
# For bodies that are not a JSON object (the worker dead-letters exactly those): the token
# field up to its closing quote, or to the end of a body cut short.
TOKEN_TEXT = re.compile(r'("' + re.escape(FIELD_TOKEN) + r'"\s*:\s*)"(?:[^"\\]|\\.)*(?:"|\\?$)')
SQS_HOST = re.compile(r"^sqs\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")

HELP_EPILOG = """\
`sluice dlq {inspect,redrive,status}` (or `python -m sluice_fanout.cli dlq ...`).

- `inspect`: each DLQ's approximate depth and a peek at up to `--peek` messages (id, receive
  count, sent time, the worker's dead-letter reason, the body with its task token masked). The
  peeked messages are released at once, so nothing is consumed.
- `redrive`: one SQS message move task (StartMessageMoveTask) per DLQ, back to its source queue.
  `--copy` moves messages by receive, send, delete instead, for endpoints without that API.
- `status`: the move tasks of each DLQ (ListMessageMoveTasks).

Queues come from `--stack-outputs FILE` (the JSON of `pulumi stack output --json`, whose
`dlqUrls` and `queueUrls` are paired by priority) or from `--dlq-url URL [--source-url URL]`
pairs. Credentials come from boto3's default chain; `--region` and `--endpoint-url` override
where the calls go."""
"""The help's text after the options (`sluice dlq --help`)."""

COPY_NOTICE = (
    "--copy: moving messages by receive, send to the source queue, delete. This exists for "
    "endpoints without StartMessageMoveTask (the embedded AWS); on AWS prefer `redrive` without "
    "--copy, which lets SQS move the messages itself and reports progress in `status`."
)


class DlqInputError(Exception):
    """The command line or the stack outputs file cannot be used; the message says the fix."""


class DlqAwsError(Exception):
    """An SQS call failed; the message names the queue, the call and AWS's error."""


# --- pure parts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DlqPair:
    """A dead-letter queue and the queue its messages came from, when known."""

    name: str
    """The priority (from stack outputs) or the DLQ's queue name (from --dlq-url)."""
    dlq_url: str
    source_url: str | None


def check_queue_url(url: str, where: str) -> str:
    """Return `url` if it has the shape of an SQS queue URL, else raise DlqInputError."""
    parsed = urlsplit(url) if isinstance(url, str) else None
    segments = [s for s in parsed.path.split("/") if s] if parsed else []
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc or len(segments) != 2:
        raise DlqInputError(
            f"{where}: expected an SQS queue URL like {URL_EXAMPLE}, got {url!r} "
            "(copy it from `pulumi stack output dlqUrls` or `aws sqs list-queues`)"
        )
    return url


def queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def region_from_url(url: str) -> str | None:
    """The region an AWS queue URL names, so `--region` is needed only when boto3 would guess wrong."""
    match = SQS_HOST.match(urlsplit(url).netloc.split(":")[0])
    return match.group(1) if match else None


def pair_explicit(flags: Sequence[tuple[str, str]]) -> list[DlqPair]:
    """Pair `--dlq-url` / `--source-url` flags given in command-line order.

    A `--source-url` belongs to the `--dlq-url` just before it; without one the source is unknown.
    """
    pairs: list[DlqPair] = []
    for flag, url in flags:
        if flag == "--dlq-url":
            pairs.append(DlqPair(queue_name(check_queue_url(url, flag)), url, None))
            continue
        if not pairs:
            raise DlqInputError(
                f"--source-url {url!r} comes before any --dlq-url (write --dlq-url DLQ --source-url SOURCE)"
            )
        if pairs[-1].source_url is not None:
            raise DlqInputError(
                f"--dlq-url {pairs[-1].dlq_url!r} has two --source-url values "
                f"({pairs[-1].source_url!r}, {url!r}); give one per DLQ"
            )
        pairs[-1] = DlqPair(pairs[-1].name, pairs[-1].dlq_url, check_queue_url(url, flag))
    return pairs


def pair_stack_outputs(outputs: Any, origin: str) -> list[DlqPair]:
    """Pair `dlqUrls` with `queueUrls` by priority, from `pulumi stack output --json`."""
    fix = "(write it with `pulumi stack output --json > FILE` in the Sluice stack)"
    if not isinstance(outputs, dict):
        raise DlqInputError(f"{origin}: expected a JSON object of stack outputs, got {outputs!r:.80} {fix}")
    maps: dict[str, dict[str, Any]] = {}
    for key in ("dlqUrls", "queueUrls"):
        value = outputs.get(key)
        if not isinstance(value, dict) or not value:
            raise DlqInputError(
                f"{origin}: output {key!r} must be a map of priority to queue URL, got {value!r:.80} "
                f"(keys present: {sorted(outputs)}) {fix}"
            )
        maps[key] = value
    pairs = []
    for priority, dlq_url in maps["dlqUrls"].items():
        if priority not in maps["queueUrls"]:
            raise DlqInputError(
                f"{origin}: dlqUrls has priority {priority!r} but queueUrls does not "
                f"(queueUrls has {sorted(maps['queueUrls'])}); export both from the same stack {fix}"
            )
        pairs.append(
            DlqPair(
                priority,
                check_queue_url(dlq_url, f"{origin}: dlqUrls.{priority}"),
                check_queue_url(maps["queueUrls"][priority], f"{origin}: queueUrls.{priority}"),
            )
        )
    return pairs


def mask_tokens(body: str) -> str:
    """The body with its task token replaced by a marker, however malformed the body is."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        if FIELD_TOKEN in data:
            data[FIELD_TOKEN] = TOKEN_MASK
            return json.dumps(data)
        return body
    return TOKEN_TEXT.sub(lambda m: f'{m.group(1)}"{TOKEN_MASK}"', body)


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... (+{len(text) - limit} chars)"


def format_epoch_ms(value: str | int | None) -> str:
    """SQS and the move-task API give times as epoch milliseconds; show them as UTC ISO 8601."""
    if value is None:
        return "?"
    try:
        return datetime.fromtimestamp(int(value) / 1000, UTC).isoformat(timespec="seconds")
    except (ValueError, OverflowError):
        return "?"


@dataclass(frozen=True)
class Peeked:
    """What inspect shows of one dead letter."""

    message_id: str
    receive_count: str
    sent_ms: str | None
    reason: str | None
    body: str


def peeked_from(message: MessageTypeDef) -> Peeked:
    attributes = message.get("Attributes", {})
    reason_attribute = message.get("MessageAttributes", {}).get(ATTR_DEAD_LETTER_REASON)
    reason = reason_attribute.get("StringValue") if reason_attribute else None
    return Peeked(
        message_id=message.get("MessageId", "?"),
        receive_count=attributes.get("ApproximateReceiveCount", "?"),
        sent_ms=attributes.get("SentTimestamp"),
        reason=reason,
        body=message.get("Body", ""),
    )


@dataclass(frozen=True)
class DlqReport:
    pair: DlqPair
    waiting: int
    in_flight: int
    peeked: tuple[Peeked, ...]


def format_report(report: DlqReport, body_chars: int) -> list[str]:
    """Lines for one DLQ. The token is masked before the body is cut, so no cut can expose it."""
    pair = report.pair
    lines = [
        f"{pair.name}: {report.waiting} waiting, {report.in_flight} in flight  {pair.dlq_url}",
        f"  source: {pair.source_url or 'unknown (redrive sends messages to the queue SQS recorded)'}",
    ]
    for p in report.peeked:
        head = f"  - {p.message_id}  receives {p.receive_count}  sent {format_epoch_ms(p.sent_ms)}"
        if p.reason is not None:
            head += f"  {ATTR_DEAD_LETTER_REASON}: {p.reason}"
        lines += [head, f"    {truncate(mask_tokens(p.body), body_chars)}"]
    if report.waiting > len(report.peeked) > 0:
        lines.append(f"  ... about {report.waiting - len(report.peeked)} more not shown")
    return lines


def format_move_task(name: str, task: ListMessageMoveTasksResultEntryTypeDef) -> str:
    line = (
        f"{name}: {task.get('Status', '?')}  moved {task.get('ApproximateNumberOfMessagesMoved', '?')}"
        f" of {task.get('ApproximateNumberOfMessagesToMove', '?')}"
        f"  started {format_epoch_ms(task.get('StartedTimestamp'))}"
        f"  to {task.get('DestinationArn') or 'original source'}"
    )
    if reason := task.get("FailureReason"):
        line += f"  failure: {reason}"
    return line


def sendable_attributes(
    attributes: Mapping[str, MessageAttributeValueOutputTypeDef],
) -> dict[str, MessageAttributeValueTypeDef]:
    """Message attributes as SendMessage takes them back.

    The list-valued fields are reserved by SQS and rejected on send, so only the scalar ones go.
    """
    sendable: dict[str, MessageAttributeValueTypeDef] = {}
    for name, value in attributes.items():
        out: MessageAttributeValueTypeDef = {"DataType": value["DataType"]}
        if "StringValue" in value:
            out["StringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            out["BinaryValue"] = value["BinaryValue"]
        sendable[name] = out
    return sendable


def positive_int(high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= 1 (and <= high)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1 or (high is not None and value > high):
            bound = f"1..{high}" if high is not None else ">= 1"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text!r}")
        return value

    return parse


# --- SQS calls ----------------------------------------------------------------------------------


class DeadLetterQueues:
    """Every SQS call the command makes, on one client."""

    def __init__(self, client: SQSClient) -> None:
        self._client = client

    def arn(self, url: str) -> str:
        attrs = self._client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return attrs["Attributes"]["QueueArn"]

    def depth(self, url: str) -> tuple[int, int]:
        """Approximate (waiting, in flight) message counts."""
        attrs = self._client.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def _receive(self, url: str, count: int, visibility: int) -> list[MessageTypeDef]:
        return self._client.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=min(count, SQS_MAX_RECEIVE_BATCH),
            VisibilityTimeout=visibility,
            WaitTimeSeconds=RECEIVE_WAIT_SECONDS,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        ).get("Messages", [])

    def _release(self, url: str, messages: Sequence[MessageTypeDef]) -> None:
        """Make messages visible again now rather than when their visibility runs out."""
        for start in range(0, len(messages), SQS_MAX_RECEIVE_BATCH):
            chunk = messages[start : start + SQS_MAX_RECEIVE_BATCH]
            self._client.change_message_visibility_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for i, m in enumerate(chunk)
                ],
            )

    def peek(self, url: str, limit: int) -> list[MessageTypeDef]:
        """Up to `limit` messages, released before returning, so none is consumed.

        Each peek adds one to the messages' receive count on the DLQ; a DLQ has no redrive
        policy of its own, so the count moves nothing.
        """
        peeked: list[MessageTypeDef] = []
        try:
            # Received messages stay hidden until released, so each round sees new ones.
            while len(peeked) < limit:
                batch = self._receive(url, limit - len(peeked), PEEK_VISIBILITY_SECONDS)
                if not batch:
                    break
                peeked.extend(batch)
        finally:
            self._release(url, peeked)
        return peeked[:limit]

    def start_move(self, dlq_arn: str, destination_arn: str | None, rate: int | None) -> str:
        """StartMessageMoveTask; returns its task handle. No destination: each message's source."""
        request: StartMessageMoveTaskRequestTypeDef = {"SourceArn": dlq_arn}
        if destination_arn is not None:
            request["DestinationArn"] = destination_arn
        if rate is not None:
            request["MaxNumberOfMessagesPerSecond"] = rate
        return self._client.start_message_move_task(**request)["TaskHandle"]

    def move_tasks(self, dlq_arn: str) -> list[ListMessageMoveTasksResultEntryTypeDef]:
        return self._client.list_message_move_tasks(SourceArn=dlq_arn).get("Results", [])

    def only_source(self, dlq_url: str) -> str:
        """The one queue whose redrive policy names this DLQ (Sluice gives each DLQ one)."""
        sources = self._client.list_dead_letter_source_queues(QueueUrl=dlq_url).get("queueUrls", [])
        if len(sources) != 1:
            raise DlqInputError(
                f"--copy needs the source of {dlq_url!r}: SQS lists {len(sources)} queues using it as "
                f"their DLQ ({sources}); name one with --source-url after this --dlq-url"
            )
        return sources[0]

    def copy_back(self, dlq_url: str, source_url: str, limit: int) -> int:
        """Move up to `limit` messages to `source_url`, body and attributes kept; return how many.

        A message is deleted from the DLQ only after its send succeeded, so a failure leaves it
        in the DLQ. A delete that fails after a good send leaves a duplicate, which the worker
        tolerates: a task token completed twice is reported as already finished.
        """
        moved = 0
        while moved < limit:
            batch = self._receive(dlq_url, limit - moved, COPY_VISIBILITY_SECONDS)
            if not batch:
                break
            for i, message in enumerate(batch):
                try:
                    self._client.send_message(
                        QueueUrl=source_url,
                        MessageBody=message["Body"],
                        MessageAttributes=sendable_attributes(message.get("MessageAttributes", {})),
                    )
                except ClientError as exc:
                    self._release(dlq_url, batch[i:])
                    raise DlqAwsError(
                        f"sending message {message.get('MessageId')} to {source_url} failed after "
                        f"{moved} moved: {exc}; it and the rest of its batch are back on {dlq_url}"
                    ) from exc
                self._client.delete_message(QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"])
                moved += 1
        return moved


# --- command ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    command: str
    pairs: list[DlqPair]
    peek: int = DEFAULT_PEEK
    body_chars: int = DEFAULT_BODY_CHARS
    copy: bool = False
    max_per_second: int | None = None
    max_messages: int = DEFAULT_COPY_LIMIT


def run(options: Options, queues: DeadLetterQueues, out: Callable[[str], None]) -> None:
    """Run one command over every pair. Raises DlqAwsError / DlqInputError.

    Pure parts (pairing, masking, formatting) take plain values; `queues` holds every SQS call,
    on a client the caller builds, so tests pass one pointed at moto or a Stubber.
    """
    if options.command == "redrive" and options.copy:
        out(COPY_NOTICE)
    for pair in options.pairs:
        try:
            _run_one(options, queues, pair, out)
        except ClientError as exc:
            raise DlqAwsError(f"{pair.name} ({pair.dlq_url}): {exc}{_hint(options)}") from exc


def _hint(options: Options) -> str:
    if options.command == "redrive" and not options.copy:
        return " (an endpoint without StartMessageMoveTask, such as the embedded AWS, needs `redrive --copy`)"
    if options.command == "status":
        return " (an endpoint without the message move task API, such as the embedded AWS, has no tasks)"
    return ""


def _run_one(options: Options, queues: DeadLetterQueues, pair: DlqPair, out: Callable[[str], None]) -> None:
    if options.command == "inspect":
        waiting, in_flight = queues.depth(pair.dlq_url)
        peeked = queues.peek(pair.dlq_url, options.peek) if options.peek else []
        report = DlqReport(pair, waiting, in_flight, tuple(peeked_from(m) for m in peeked))
        for line in format_report(report, options.body_chars):
            out(line)
    elif options.command == "redrive" and options.copy:
        source = pair.source_url or queues.only_source(pair.dlq_url)
        moved = queues.copy_back(pair.dlq_url, source, options.max_messages)
        out(f"{pair.name}: moved {moved} messages to {source}")
    elif options.command == "redrive":
        # Sluice lets each DLQ take messages from its own queue only, so when that queue is known
        # naming it changes nothing for messages SQS dead-lettered, and also sends back the ones
        # the worker dead-lettered itself with SendMessage, which carry no source for SQS to use.
        destination = queues.arn(pair.source_url) if pair.source_url else None
        handle = queues.start_move(queues.arn(pair.dlq_url), destination, options.max_per_second)
        out(f"{pair.name}: move task started to {pair.source_url or 'original source'}, handle {handle}")
    else:
        tasks = queues.move_tasks(queues.arn(pair.dlq_url))
        for task in tasks:
            out(format_move_task(pair.name, task))
        if not tasks:
            out(f"{pair.name}: no move tasks")


class _InOrder(argparse.Action):
    """Collects --dlq-url and --source-url in one list, so each source stays with its DLQ."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,  # noqa: ARG002 - argparse's Action signature
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        flags = [*(getattr(namespace, self.dest, None) or []), (option_string, values)]
        setattr(namespace, self.dest, flags)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--stack-outputs",
        type=Path,
        metavar="FILE",
        help="JSON from `pulumi stack output --json`: dlqUrls paired with queueUrls by priority",
    )
    common.add_argument(
        "--dlq-url", action=_InOrder, dest="queue_flags", metavar="URL", help="a DLQ (repeatable)"
    )
    common.add_argument(
        "--source-url",
        action=_InOrder,
        dest="queue_flags",
        metavar="URL",
        help="the source queue of the --dlq-url just before it",
    )
    common.add_argument("--region", help="AWS region (default: from the queue URL, else boto3's chain)")
    common.add_argument("--endpoint-url", help="SQS endpoint, e.g. the embedded AWS's http://127.0.0.1:PORT")
    parser = command_parser("sluice dlq", __doc__, HELP_EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", parents=[common], help="depth and a peek per DLQ, consuming nothing")
    inspect.add_argument("--peek", type=int, default=DEFAULT_PEEK, help="messages shown per DLQ (0: none)")
    inspect.add_argument("--body-chars", type=positive_int(), default=DEFAULT_BODY_CHARS)
    redrive = sub.add_parser("redrive", parents=[common], help="move each DLQ's messages to its source")
    redrive.add_argument(
        "--copy",
        action="store_true",
        help="move by receive, send to the source, delete: for endpoints without StartMessageMoveTask "
        "(the embedded AWS)",
    )
    redrive.add_argument(
        "--max-per-second",
        type=positive_int(SQS_MAX_MOVE_RATE),
        help="move rate cap (default: SQS picks the rate)",
    )
    redrive.add_argument(
        "--max-messages",
        type=positive_int(),
        default=DEFAULT_COPY_LIMIT,
        help="--copy only: stop after this many per DLQ",
    )
    sub.add_parser("status", parents=[common], help="the message move tasks of each DLQ")
    return parser


def options_from(args: argparse.Namespace) -> Options:
    """Check the parsed arguments against each other and resolve the queue pairs."""
    flags: list[tuple[str, str]] = args.queue_flags or []
    if (args.stack_outputs is None) == (not flags):
        raise DlqInputError(
            "name the queues one way: --stack-outputs FILE (from `pulumi stack output --json`) "
            "or --dlq-url URL [--source-url URL] ..."
        )
    if args.stack_outputs is not None:
        outputs = read_stack_outputs(args.stack_outputs, DlqInputError)
        pairs = pair_stack_outputs(outputs, str(args.stack_outputs))
    else:
        pairs = pair_explicit(flags)
    extra: dict[str, Any] = {}
    if args.command == "inspect":
        if args.peek < 0:
            raise DlqInputError(f"--peek must be >= 0, got {args.peek}")
        extra = {"peek": args.peek, "body_chars": args.body_chars}
    elif args.command == "redrive":
        if args.copy and args.max_per_second is not None:
            raise DlqInputError("--max-per-second sets the move task's rate; --copy has none, drop one")
        extra = {"copy": args.copy, "max_per_second": args.max_per_second, "max_messages": args.max_messages}
    return Options(command=args.command, pairs=pairs, **extra)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("dlq", lambda: _run(args), bad_input=(DlqInputError,), aws_errors=(DlqAwsError,))


def _run(args: argparse.Namespace) -> int:
    options = options_from(args)
    region = args.region or region_from_url(options.pairs[0].dlq_url)
    client = boto3.client("sqs", region_name=region, endpoint_url=args.endpoint_url)
    run(options, DeadLetterQueues(client), print)
    return 0
