"""Run-time limits: show and change the worker's limits without a deploy (docs/limits.md)."""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError

from sluice_fanout.cli.common import command_parser, read_stack_outputs, run_command
from sluice_fanout.handlers import contract
from sluice_fanout.handlers.adapters import LambdaControls, LimitsStore, LimitsUnreadableError
from sluice_fanout.handlers.controller import StateConflict
from sluice_fanout.handlers.fair import KeysSettings
from sluice_fanout.handlers.runtime_limits import (
    CALLS_PER_SECOND,
    CONCURRENCY,
    KEYS_CAP_PREFIX,
    KEYS_CONCURRENCY,
    KEYS_WEIGHT_PREFIX,
    NAMES_HELP,
    NO_LIMIT,
    Deployed,
    Effective,
    LimitsError,
    Overrides,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

SAVE_TRIES = 3
"""Changes by someone else between this command's read and write: each time it reads again and
applies its own assignments over theirs."""

HELP_EPILOG = f"""\
`sluice limits {{show,set,unset}} --stack-outputs FILE` (or `python -m sluice_fanout.cli limits ...`).

- `show`: each limit as deployed, as overridden at run time, and in effect; the worker's reserved
  concurrency as it runs now. `--json` for a machine.
- `set NAME=VALUE ...`: store overrides; `{NO_LIMIT}` lifts a rate limit or a key's cap.
- `unset NAME ...`: back to the deployed value.

Names: {NAMES_HELP}. Workers obey a change within 10 s (they read the overrides every 5 s; an
invocation working an item finishes it first). `concurrency` is also applied at once to the
worker's reserved concurrency and its mappings' MaximumConcurrency; with the adaptive controller
it is the highest limit the controller may set, and the controller moves below it as usual.
The overrides live in the worker's idempotency table (item `{contract.LIMITS_PREFIX}<worker>`);
`pulumi up` never changes them (docs/limits.md says what a deploy does to the concurrency).

The stack comes from `--stack-outputs FILE` (the JSON of `pulumi stack output --json`: its
workerFunctionName, idempotencyTable, stateMachineArn and controllerFunctionName). Credentials
come from boto3's default chain; `--region` and `--endpoint-url` override where the calls go."""


class LimitsInputError(Exception):
    """The command line or the stack outputs cannot be used; the message says the fix."""


@dataclass(frozen=True)
class Stack:
    worker: str
    table: str
    adaptive: bool
    region: str | None


def stack_from_outputs(outputs: Any, origin: str) -> Stack:
    if not isinstance(outputs, dict):
        raise LimitsInputError(f"{origin}: expected the JSON object of `pulumi stack output --json`")
    missing = [k for k in ("workerFunctionName", "idempotencyTable") if not isinstance(outputs.get(k), str)]
    if missing:
        raise LimitsInputError(
            f"{origin}: no {' or '.join(missing)} output; write the file with `pulumi stack output --json` "
            "from a Sluice stack"
        )
    arn = outputs.get("stateMachineArn")
    region = arn.split(":")[3] if isinstance(arn, str) and arn.count(":") >= 4 else None
    return Stack(
        outputs["workerFunctionName"],
        outputs["idempotencyTable"],
        bool(outputs.get("controllerFunctionName")),
        region,
    )


def parse_assignments(texts: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not name or not value:
            raise LimitsInputError(f"{text!r}: write NAME=VALUE, e.g. concurrency=4 or keys.weights.acme=3")
        pairs.append((name.strip(), value.strip()))
    return pairs


def deployed_from(configuration: dict[str, Any]) -> Deployed:
    """The worker's deployed limits, from its function configuration (GetFunctionConfiguration)."""
    env = (configuration.get("Environment") or {}).get("Variables") or {}
    try:
        priorities = [q["priority"] for q in json.loads(env[contract.ENV_QUEUES])]
        keys = (
            KeysSettings.parse(json.loads(env[contract.ENV_KEYS]), priorities, contract.ENV_KEYS)
            if env.get(contract.ENV_KEYS)
            else None
        )
        rate = env.get(contract.ENV_CALLS_PER_SECOND)
        concurrency = env.get(contract.ENV_CONCURRENCY)
    except (KeyError, TypeError, ValueError) as exc:
        raise LimitsInputError(
            f"{configuration.get('FunctionName')!r} is not a Sluice worker this release knows ({exc}); "
            "check workerFunctionName, or `pulumi up` with this release"
        ) from exc
    if concurrency is None:
        raise LimitsInputError(
            f"{configuration.get('FunctionName')!r} has no {contract.ENV_CONCURRENCY}: it was deployed by "
            "an older release; `pulumi up` with this one first"
        )
    return Deployed(
        concurrency=int(concurrency),
        calls_per_second=float(rate) if rate else None,
        keys=keys,
        priorities=tuple(priorities),
        timeout_seconds=int(configuration["Timeout"]),
    )


class Worker:
    """The deployed worker as the command sees it: its settings and its control plane."""

    def __init__(self, lam: Any, stack: Stack) -> None:  # a boto3 Lambda client
        self._lam = lam
        self._stack = stack

    def deployed(self) -> Deployed:
        try:
            configuration = self._lam.get_function_configuration(FunctionName=self._stack.worker)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise LimitsInputError(
                    f"no function {self._stack.worker!r} here; check the stack outputs, --region and "
                    "--endpoint-url"
                ) from exc
            raise
        return deployed_from(configuration)

    def controls(self) -> LambdaControls:
        mappings = self._lam.list_event_source_mappings(FunctionName=self._stack.worker)[
            "EventSourceMappings"
        ]
        return LambdaControls(self._lam, self._stack.worker, tuple(m["UUID"] for m in mappings), _Quiet())

    def applied(self) -> int | None:
        reserved = self._lam.get_function_concurrency(FunctionName=self._stack.worker).get(
            "ReservedConcurrentExecutions"
        )
        return None if reserved is None else int(reserved)


class _Quiet:
    """LambdaControls logs a failed call; the command reports it in its changes instead."""

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        del msg, args, kwargs


def _rows(deployed: Deployed, overrides: Overrides, effective: Effective) -> list[dict[str, Any]]:
    """One row per limit: deployed, override (absent: None) and effective value."""
    rows: list[tuple[str, Any, Any]] = [
        (CONCURRENCY, deployed.concurrency, effective.concurrency),
        (CALLS_PER_SECOND, deployed.calls_per_second, effective.calls_per_second),
    ]
    d_keys, e_keys = deployed.keys, effective.keys
    if d_keys is not None and e_keys is not None:
        rows.append((KEYS_CONCURRENCY, d_keys.concurrency, e_keys.concurrency))
        for key in sorted(set(d_keys.concurrency_per_key) | set(e_keys.concurrency_per_key)):
            d_cap = d_keys.concurrency_per_key.get(key, d_keys.concurrency)
            rows.append(
                (KEYS_CAP_PREFIX + key, d_cap, e_keys.concurrency_per_key.get(key, e_keys.concurrency))
            )
        for key in sorted(set(d_keys.weights) | set(e_keys.weights)):
            rows.append(
                (KEYS_WEIGHT_PREFIX + key, d_keys.weights.get(key, 1.0), e_keys.weights.get(key, 1.0))
            )
    # Whatever else is stored (keys overrides a deploy without keys now ignores), shown as stored.
    named = {name for name, _, _ in rows}
    rows += [(name, None, None) for name in overrides.values if name not in named]
    return [
        {
            "name": name,
            "deployed": dep,
            "override": overrides.values.get(name),
            "overridden": name in overrides.values,
            "effective": eff,
        }
        for name, dep, eff in rows
    ]


def report(stack: Stack, worker: Worker, store: LimitsStore, changes: Sequence[str] = ()) -> dict[str, Any]:
    deployed = worker.deployed()
    stored = store.load()
    overrides = Overrides() if stored is None else stored.overrides
    try:
        effective = overrides.apply(deployed)
        problem = None
    except LimitsError as exc:
        # The worker ignores such overrides (LiveLimits); say so rather than fail to show them.
        effective, problem = Overrides().apply(deployed), str(exc)
    return {
        "worker": stack.worker,
        "table": stack.table,
        "adaptive": stack.adaptive,
        "version": 0 if stored is None else stored.version,
        "updatedAt": None if stored is None else stored.updated_at,
        "updatedBy": None if stored is None else stored.updated_by,
        "limits": _rows(deployed, overrides, effective),
        "reservedConcurrency": worker.applied(),
        "ignored": problem,
        "changes": list(changes),
    }


def _text(value: Any) -> str:
    if value is None:
        return NO_LIMIT
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_report(data: dict[str, Any]) -> list[str]:
    changed = "never changed at run time"
    if data["version"]:
        at = datetime.fromtimestamp(data["updatedAt"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        changed = f"version {data['version']}, changed {at} by {data['updatedBy']}"
    lines = [f"limits of {data['worker']} ({changed})"]
    width = max(len(r["name"]) for r in data["limits"])
    lines.append(f"  {'name':<{width}}  {'deployed':>9}  {'override':>9}  {'in effect':>9}")
    for row in data["limits"]:
        override = _text(row["override"]) if row["overridden"] else "-"
        deployed, effective = _text(row["deployed"]), _text(row["effective"])
        lines.append(f"  {row['name']:<{width}}  {deployed:>9}  {override:>9}  {effective:>9}")
    effective = next(r["effective"] for r in data["limits"] if r["name"] == CONCURRENCY)
    reserved = data["reservedConcurrency"]
    if data["adaptive"]:
        lines.append(
            f"adaptive controller: it moves the limit up to {effective} (now {reserved}); its next step "
            "applies a change"
        )
    elif reserved != effective:
        lines.append(
            f"the worker runs at reserved concurrency {reserved}, not {effective} (a deploy sets the "
            f"stack's value back): `sluice limits set {CONCURRENCY}={effective}` applies it again"
        )
    if data["ignored"]:
        lines.append(f"ignored by the workers, which obey the deployed limits: {data['ignored']}")
    lines += [f"applied: {change}" for change in data["changes"]]
    return lines


def change(
    stack: Stack,
    worker: Worker,
    store: LimitsStore,
    edit: Callable[[Overrides, Deployed], Overrides],
    *,
    by: str,
    clock: Callable[[], float] = time.time,
) -> list[str]:
    """Store the edited overrides (read again if someone else wrote meanwhile), then apply the
    concurrency to the control plane; returns the control-plane changes made."""
    deployed = worker.deployed()
    for _ in range(SAVE_TRIES):
        read = store.load()
        before = Overrides() if read is None else read.overrides
        after = edit(before, deployed)
        try:
            store.save(after, read, by=by, at=clock())
        except StateConflict:
            continue
        break
    else:
        raise LimitsInputError(
            f"the limits kept changing under this command ({SAVE_TRIES} tries); run it again"
        )
    if CONCURRENCY not in before.values and CONCURRENCY not in after.values:
        return []  # the deployed concurrency, and this command did not touch it
    limit = after.apply(deployed).concurrency
    assert limit is not None  # noqa: S101 - deployed_from always knows the deployed concurrency
    controls = worker.controls()
    now = controls.deployed()
    # With a controller, it owns the limit below the ceiling: lower it now if it is above, and let
    # the controller's own steps raise it.
    if stack.adaptive and (now.reserved is None or now.reserved <= limit):
        return []
    return controls.apply(limit, None, now)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--stack-outputs",
        type=Path,
        required=True,
        metavar="FILE",
        help="JSON from `pulumi stack output --json` of the Sluice stack",
    )
    common.add_argument("--region", help="AWS region (default: the state machine's, else boto3's chain)")
    common.add_argument("--endpoint-url", help="AWS endpoint, e.g. the embedded AWS's http://127.0.0.1:PORT")
    common.add_argument("--json", action="store_true", help="print the limits as JSON")
    parser = command_parser("sluice limits", __doc__, HELP_EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("show", parents=[common], help="each limit: deployed, overridden, in effect")
    setter = sub.add_parser("set", parents=[common], help="override limits: NAME=VALUE ...")
    setter.add_argument("assignments", nargs="+", metavar="NAME=VALUE")
    unset = sub.add_parser("unset", parents=[common], help="back to the deployed value: NAME ...")
    unset.add_argument("names", nargs="+", metavar="NAME")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(
        "limits",
        lambda: _run(args),
        bad_input=(LimitsInputError, LimitsError),
        aws_errors=(ClientError, LimitsUnreadableError),
    )


def _run(args: argparse.Namespace) -> int:
    outputs = read_stack_outputs(args.stack_outputs, LimitsInputError)
    stack = stack_from_outputs(outputs, str(args.stack_outputs))
    session = boto3.session.Session(region_name=args.region or stack.region)
    worker = Worker(session.client("lambda", endpoint_url=args.endpoint_url), stack)
    store = LimitsStore(session.client("dynamodb", endpoint_url=args.endpoint_url), stack.table, stack.worker)
    changes: list[str] = []
    by = f"{getpass.getuser()}@{socket.gethostname()}"
    if args.command == "set":
        pairs = parse_assignments(args.assignments)
        changes = change(stack, worker, store, lambda o, d: o.setting(pairs, d), by=by)
    elif args.command == "unset":
        changes = change(stack, worker, store, lambda o, d: o.unsetting(args.names, d), by=by)
    data = report(stack, worker, store, changes)
    print(json.dumps(data, indent=2) if args.json else "\n".join(format_report(data)))
    return 0
