"""PriorityWorker: the worker Lambda, its role, and its event source mappings: one on the ticket
queue (`ticket` dispatch), or one per priority queue (`yield` dispatch)."""

# No `from __future__ import annotations` here: HttpTargetArgs is part of ThrottledFanOut's
# schema for other languages, and Pulumi's analyzer reads its annotations as objects, not strings
# (a postponed annotation reaches it as a ForwardRef it cannot follow; see sluice_fanout/plugin.py).

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict
from urllib.parse import urlsplit

import pulumi
import pulumi_aws as aws

from sluice_fanout.components import validation as v
from sluice_fanout.components.function import sluice_function
from sluice_fanout.components.policies import build_worker_policy
from sluice_fanout.handlers import contract, limits
from sluice_fanout.handlers.fair import KeysSettings
from sluice_fanout.handlers.rate import longest_rate_wait, rate_wait_allowed
from sluice_fanout.handlers.settings import HttpTargetSettings, WorkerSettings

COMPONENT = "PriorityWorker"
TICKETS = "TICKETS"
"""Key of the ticket queue's mapping in mapping_uuids."""
SQS_MAX_BATCH = 10  # an SQS event source mapping batch above 10 needs a batching window; kept simple
LAMBDA_MAX_TIMEOUT_SECONDS = 900


class HttpTargetArgs(TypedDict):
    url: pulumi.Input[str]
    """The legacy API endpoint the bundled HTTP target POSTs each item to."""
    timeout_seconds: NotRequired[float]
    """Per-call timeout. Default 10."""
    secret_arn: NotRequired[pulumi.Input[str]]
    """Secrets Manager secret whose SecretString is sent as the auth header's value."""
    ssm_parameter_arn: NotRequired[pulumi.Input[str]]
    """SSM parameter (SecureString) whose value is sent as the auth header's value."""
    ssm_parameter_name: NotRequired[pulumi.Input[str]]
    """Name of that SSM parameter (the API takes the name, IAM takes the ARN)."""
    auth_header: NotRequired[str]
    """Header carrying the credential. Default Authorization."""


class PriorityWorkerArgs(TypedDict):
    priorities: Sequence[str]
    """Priority names, highest first (as given to PriorityQueues)."""
    queue_urls: pulumi.Input[Mapping[str, str]]
    queue_arns: pulumi.Input[Mapping[str, str]]
    dlq_urls: pulumi.Input[Mapping[str, str]]
    dlq_arns: pulumi.Input[Mapping[str, str]]
    concurrency: int
    """The legacy API's limit on calls in flight: the function's reserved concurrency."""
    target_dir: NotRequired[str]
    """Directory with the user's target code, placed at the archive root."""
    target_handler: NotRequired[str]
    """The target as `module.function`, e.g. `erp_client.call`."""
    http_target: NotRequired[HttpTargetArgs]
    """Use the bundled HTTP target instead of user code."""
    esm_maximum_concurrency: NotRequired[int]
    """Per-mapping MaximumConcurrency (2..1000). Default max(2, concurrency)."""
    batch_size: NotRequired[int]
    """Messages per invocation, 1..10. Default 1: one invocation is one call in flight."""
    timeout_seconds: NotRequired[int]
    """Function timeout. Default 30."""
    memory_mb: NotRequired[int]
    """Default 256."""
    force_after_receives: NotRequired[int]
    """A lower-priority message is processed anyway from this receive on. Default 3."""
    max_attempts: NotRequired[int]
    """Real attempts at an item before it fails. Default 3."""
    max_receive_count: NotRequired[int]
    """The queues' maxReceiveCount, to check the budgets fit below it. Default 10."""
    yield_delay_seconds: NotRequired[int]
    """How long a yielded message stays invisible. Default 2."""
    retry_base_seconds: NotRequired[float]
    """First backoff after a retryable error; doubles per receive. Default 2."""
    retry_max_seconds: NotRequired[float]
    """Backoff cap. Default 300."""
    calls_per_second: NotRequired[float]
    """The API's published rate (> 0, at most 1000), on top of the concurrency limit: every
    invocation reserves its call's slot on one item of the idempotency table, calls spaced
    (1 s + 50 ms) / rate apart. Needs concurrency / calls_per_second <= half the timeout minus
    a second. Default none: no rate limit."""
    log_retention_days: NotRequired[int]
    """Default 14."""
    dispatch: NotRequired[str]
    """`ticket` or `yield`; `ticket` needs ticket_queue_url and ticket_queue_arn (PriorityQueues
    with ticket_queue). Default ticket."""
    ticket_queue_url: NotRequired[pulumi.Input[str]]
    ticket_queue_arn: NotRequired[pulumi.Input[str]]
    keys: NotRequired[KeysSettings]
    """Fair share between keys (docs/keys.md); needs keyed_table_name and keyed_table_arn (from
    FanOutWorkflow with the same keys). Default: none."""
    keyed_table_name: NotRequired[pulumi.Input[str]]
    keyed_table_arn: NotRequired[pulumi.Input[str]]
    share_period: NotRequired[int]
    """ticket: one item in every share_period gives each lower priority first pick. Default 10."""
    idempotency_ttl_seconds: NotRequired[int]
    """How long an item's idempotency record (its stored outcome) is kept. Default 4 days, the
    queues' default retention: a record must outlive every possible redelivery of its message."""
    results_bucket: NotRequired[pulumi.Input[str]]
    """Bucket where results too large for Step Functions are written (under item-results/);
    without it such results fail the item with the reason."""
    results_bucket_arn: NotRequired[pulumi.Input[str]]
    queue_kms_key_arn: NotRequired[str]
    """The customer KMS key encrypting the queues (as given to PriorityQueues), if any: the role
    may then decrypt what it receives and encrypt what it dead-letters, with that key only."""
    throttle_hold_seconds: NotRequired[float]
    """Least seconds an invocation keeps its slot after a 429: with an AdaptiveController, its
    reaction time (interval + signal delay), so an excess slot is refused about once before the
    controller removes it. Default none: the worker holds for the Retry-After alone."""
    controlled: NotRequired[bool]
    """An AdaptiveController sets the function's reserved concurrency and the mappings'
    MaximumConcurrency and Enabled at run time: Pulumi ignores changes to them, so a later
    `pulumi up --refresh` does not undo the controller. `concurrency` and
    esm_maximum_concurrency are then only the values they start from. Default False."""


class PriorityWorker(pulumi.ComponentResource):
    """The worker function that works the priority queues within the API's limit.

    Reserved concurrency = `concurrency` is the hard cap: never more invocations, hence never more
    calls in flight to the legacy API, than its limit. Each mapping's ScalingConfig.MaximumConcurrency
    = max(2, concurrency) (AWS's minimum is 2):
    - with `ticket`, at a limit of 1 the single mapping's second poller's invokes are throttled and
      retried, but they carry only tickets, so no payload's receive count moves;
    - with `yield`, no single queue's pollers scale far past what the function can take.

    The overpull trap (`yield`): with N queues, the mappings together may try N x MaximumConcurrency
    invocations while reserved concurrency admits `concurrency`. The excess is throttled, the
    throttled messages return to their queue with a higher receive count, and receive counts feed
    both the force rule and the DLQ's maxReceiveCount. Keep max_receive_count well above
    force_after_receives - 1 + max_attempts (validated) to leave room for such receives.
    """

    function_name: pulumi.Output[str]
    function_arn: pulumi.Output[str]
    role_arn: pulumi.Output[str]
    idempotency_table_name: pulumi.Output[str]
    """DynamoDB table of per-item idempotency records (key `id`, TTL attribute `expiration`)."""
    idempotency_table_arn: pulumi.Output[str]
    mapping_uuids: pulumi.Output[dict[str, str]]
    """Event source mapping UUID by priority, or under TICKETS for the ticket dispatch (to pause
    consumption: disable the mapping)."""

    def __init__(
        self, name: str, args: PriorityWorkerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        cfg = check_worker_args(name, args)
        if cfg.runtime.dispatch == contract.DISPATCH_TICKET and not (
            "ticket_queue_url" in args and "ticket_queue_arn" in args
        ):
            raise v.fail(
                COMPONENT,
                name,
                "dispatch",
                "ticket needs ticket_queue_url and ticket_queue_arn (from PriorityQueues with "
                "ticket_queue); give them, or set dispatch to yield",
                cfg.runtime.dispatch,
            )
        super().__init__("sluice:index:PriorityWorker", name, {}, opts)
        child = pulumi.ResourceOptions(parent=self)
        priorities = cfg.priorities

        # One record per (execution, item) so a redelivered message replays the stored outcome
        # instead of calling the legacy API again. On-demand: its traffic follows the worker's.
        table = aws.dynamodb.Table(
            f"{name}-idempotency",
            billing_mode="PAY_PER_REQUEST",
            hash_key=contract.IDEMPOTENCY_KEY_ATTRIBUTE,
            attributes=[{"name": contract.IDEMPOTENCY_KEY_ATTRIBUTE, "type": "S"}],
            ttl={"attribute_name": contract.IDEMPOTENCY_EXPIRY_ATTRIBUTE, "enabled": True},
            server_side_encryption={"enabled": True},
            opts=child,
        )
        http = args.get("http_target")
        queue_arns = pulumi.Output.from_input(args["queue_arns"])
        dlq_arns = pulumi.Output.from_input(args["dlq_arns"])
        queues_env = pulumi.Output.json_dumps(
            pulumi.Output.all(urls=args["queue_urls"], arns=queue_arns, dlq_urls=args["dlq_urls"]).apply(
                lambda a: [
                    {"priority": p, "url": a["urls"][p], "arn": a["arns"][p], "dlq_url": a["dlq_urls"][p]}
                    for p in priorities
                ]
            )
        )
        settings = cfg.runtime
        env: dict[str, pulumi.Input[str]] = {
            **settings.to_env(),
            contract.ENV_QUEUES: queues_env,
            contract.ENV_IDEMPOTENCY_TABLE: table.name,
            contract.ENV_CONCURRENCY: str(cfg.concurrency),
        }
        if "results_bucket" in args:
            env[contract.ENV_RESULTS_BUCKET] = args["results_bucket"]
        if settings.dispatch == contract.DISPATCH_TICKET:
            env[contract.ENV_TICKET_QUEUE_URL] = args["ticket_queue_url"]
        keys = args.get("keys")
        if keys is not None:
            env[contract.ENV_KEYS] = keys.to_json()
            env[contract.ENV_KEYED_TABLE] = args["keyed_table_name"]
        if http is not None:
            env[contract.ENV_HTTP_URL] = http["url"]
            defaults = HttpTargetSettings.defaults()
            env |= HttpTargetSettings(
                timeout_seconds=float(http.get("timeout_seconds", defaults["timeout_seconds"])),
                auth_header=http.get("auth_header", defaults["auth_header"]),
            ).to_env()
            if "secret_arn" in http:
                env[contract.ENV_HTTP_SECRET_ARN] = http["secret_arn"]
            if "ssm_parameter_name" in http:
                env[contract.ENV_HTTP_SSM_PARAMETER] = http["ssm_parameter_name"]

        def worker_policy(logs_arn: pulumi.Output[str]) -> pulumi.Output[dict[str, Any]]:
            return pulumi.Output.all(
                queue_arns=queue_arns,
                ticket_arn=args.get("ticket_queue_arn"),
                dlq_arns=dlq_arns,
                log_group_arn=logs_arn,
                table_arn=table.arn,
                results_bucket_arn=args.get("results_bucket_arn"),
                secret_arn=http.get("secret_arn") if http else None,
                ssm_parameter_arn=http.get("ssm_parameter_arn") if http else None,
                keyed_arn=args.get("keyed_table_arn") if keys is not None else None,
            ).apply(
                lambda a: build_worker_policy(
                    queue_arns=[a["queue_arns"][p] for p in priorities]
                    + ([a["ticket_arn"]] if a["ticket_arn"] else []),
                    dlq_arns=[a["dlq_arns"][p] for p in priorities],
                    log_group_arn=a["log_group_arn"],
                    idempotency_table_arn=a["table_arn"],
                    results_bucket_arn=a["results_bucket_arn"],
                    secret_arn=a["secret_arn"],
                    ssm_parameter_arn=a["ssm_parameter_arn"],
                    kms_key_arn=cfg.kms_key_arn,
                    keyed_table_arn=a["keyed_arn"],
                )
            )

        parts = sluice_function(
            self,
            prefix=name,
            function_name=f"{name}-function",
            handler=contract.WORKER_HANDLER,
            retention_days=cfg.log_retention_days,
            policy=worker_policy,
            timeout_seconds=cfg.timeout_seconds,
            memory_mb=cfg.memory_mb,
            environment=env,
            target_dir=args.get("target_dir"),
            reserved_concurrency=cfg.concurrency,
            ignore_changes=["reserved_concurrent_executions"] if cfg.controlled else None,
        )
        function = parts.function
        # yield: one mapping per priority queue. ticket: only the ticket queue triggers the
        # worker; payloads are pulled by the worker itself, highest priority first.
        sources: dict[str, pulumi.Input[str]] = (
            {TICKETS: args["ticket_queue_arn"]}
            if cfg.runtime.dispatch == contract.DISPATCH_TICKET
            else {p: _entry_of(queue_arns, p) for p in priorities}
        )
        mappings = {
            source: aws.lambda_.EventSourceMapping(
                f"{name}-{source.lower()}-mapping",
                event_source_arn=arn,
                function_name=function.arn,
                batch_size=cfg.batch_size if cfg.runtime.dispatch == contract.DISPATCH_YIELD else 1,
                function_response_types=["ReportBatchItemFailures"],
                scaling_config={"maximum_concurrency": cfg.esm_maximum_concurrency},
                opts=pulumi.ResourceOptions(
                    parent=self, ignore_changes=["scaling_config", "enabled"] if cfg.controlled else None
                ),
            )
            for source, arn in sources.items()
        }

        self.function_name = function.name
        self.function_arn = function.arn
        self.role_arn = parts.role.arn
        self.idempotency_table_name = table.name
        self.idempotency_table_arn = table.arn
        self.mapping_uuids = pulumi.Output.all(**{p: m.uuid for p, m in mappings.items()}).apply(dict)
        self.register_outputs(
            {
                "function_name": self.function_name,
                "function_arn": self.function_arn,
                "role_arn": self.role_arn,
                "idempotency_table_name": self.idempotency_table_name,
                "idempotency_table_arn": self.idempotency_table_arn,
                "mapping_uuids": self.mapping_uuids,
            }
        )


def _entry_of(values: pulumi.Output[Mapping[str, str]], key: str) -> pulumi.Output[str]:
    return values.apply(lambda d: d[key])


def _check_http_target(c: str, name: str, http: Any) -> Mapping[str, Any]:
    """The http_target's shape. Errors show its keys, never its values: a misplaced credential
    must not end up in a preview log."""
    if not isinstance(http, Mapping) or "url" not in http:
        shown = sorted(http) if isinstance(http, Mapping) else http
        raise v.fail(c, name, "http_target", "must be an object with a url", shown)
    # An unknown key is refused rather than ignored: a `token` or `password` given here would
    # otherwise look accepted. Credentials only travel as a Secrets Manager or SSM reference.
    unknown = sorted(set(http) - set(HttpTargetArgs.__annotations__))
    if unknown:
        raise v.fail(
            c,
            name,
            "http_target",
            f"has unknown keys {unknown}; a credential goes in Secrets Manager or SSM and is "
            "given as secret_arn, or ssm_parameter_arn with ssm_parameter_name",
            sorted(http),
        )
    url = http["url"]
    if isinstance(url, str):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise v.fail(c, name, "http_url", "must be an http(s) URL", url)
        if parts.username is not None or parts.password is not None:
            # Not echoed: the part before `@` is a credential that would land in the environment.
            raise v.SluiceConfigError(
                f"{c} {name!r}: http_url must not carry credentials (user:password@host); store "
                "them in Secrets Manager or SSM (set sluice:httpSecretArn)"
            )
    return http


def _check_rate_fits(c: str, name: str, rate: float, concurrency: int, timeout_seconds: int) -> None:
    longest_wait = longest_rate_wait(concurrency, rate)
    if longest_wait > rate_wait_allowed(timeout_seconds):
        raise v.fail(
            c,
            name,
            "calls_per_second",
            f"is too low for concurrency {concurrency}: a call could wait {longest_wait:.1f}s for its "
            f"slot, more than half the worker timeout ({timeout_seconds}s) less 1s; lower the "
            "concurrency (sluice:concurrency) or raise the timeout (sluice:workerTimeoutSeconds)",
            rate,
        )


@dataclass(frozen=True)
class WorkerPlan:
    """The worker as checked at preview: how it is deployed, and the settings it runs with."""

    priorities: list[str]
    concurrency: int
    timeout_seconds: int
    memory_mb: int
    batch_size: int
    esm_maximum_concurrency: int
    log_retention_days: int
    kms_key_arn: str | None
    runtime: WorkerSettings
    """What the handler reads back from the environment (sluice_fanout/handlers/settings.py)."""

    @property
    def controlled(self) -> bool:
        return self.runtime.controlled


def check_worker_args(name: str, args: Mapping[str, Any], component: str = COMPONENT) -> WorkerPlan:
    """Check every plain arg (Inputs are not read); return them with defaults filled in."""
    c = component
    priorities = v.check_priorities(c, name, args.get("priorities"))
    concurrency = v.check_int(c, name, "concurrency", args.get("concurrency"), low=1, high=1_000)
    has_code = "target_dir" in args or "target_handler" in args
    if has_code == ("http_target" in args):
        raise v.SluiceConfigError(
            f"{c} {name!r}: give either target_dir with target_handler (your code) or http_target "
            f"(the bundled HTTP target), not {'both' if has_code else 'neither'} "
            "(set sluice:targetDir and sluice:targetHandler, or sluice:httpUrl)"
        )
    if has_code:
        target = v.check_handler(c, name, "target_handler", args.get("target_handler"))
        target_dir = args.get("target_dir")
        if not isinstance(target_dir, str) or not os.path.isdir(target_dir):
            raise v.fail(c, name, "target_dir", "must be an existing directory", target_dir)
    else:
        target = contract.HTTP_TARGET
        http = _check_http_target(c, name, args["http_target"])
        if "secret_arn" in http and ("ssm_parameter_arn" in http or "ssm_parameter_name" in http):
            raise v.fail(
                c, name, "http_target", "takes a secret_arn or an SSM parameter, not both", sorted(http)
            )
        if ("ssm_parameter_arn" in http) != ("ssm_parameter_name" in http):
            raise v.fail(
                c, name, "http_target", "needs both ssm_parameter_arn and ssm_parameter_name", sorted(http)
            )
        given = {"http_timeout_seconds": http["timeout_seconds"]} if "timeout_seconds" in http else {}
        v.check_setting(c, name, HttpTargetSettings, "timeout_seconds", given)

    def whole(arg: str, default: int, low: int, high: int | None = None) -> int:
        return v.check_int(c, name, arg, args.get(arg, default), low=low, high=high)

    def runtime(field: str) -> Any:
        return v.check_setting(c, name, WorkerSettings, field, args)

    settings = WorkerSettings(
        **{field: runtime(field) for field, spec in WorkerSettings.specs().items() if spec.arg},
        throttle_hold_seconds=runtime("throttle_hold_seconds"),
        controlled=v.check_bool(c, name, "controlled", args.get("controlled", False)),
        target=target,
    )
    max_receive_count = whole("max_receive_count", 10, 1, limits.SQS_MAX_MAX_RECEIVE_COUNT)
    # Throttled invokes also raise receive counts (the overpull trap, see PriorityWorker).
    budget = settings.force_after_receives - 1 + settings.max_attempts
    if max_receive_count <= budget:
        raise v.fail(
            c,
            name,
            "max_receive_count",
            f"must exceed force_after_receives - 1 + max_attempts = {budget}, so the worker fails "
            "an item itself before SQS dead-letters it with its execution still waiting",
            max_receive_count,
        )
    timeout_seconds = whole("timeout_seconds", 30, 1, LAMBDA_MAX_TIMEOUT_SECONDS)
    if settings.calls_per_second is not None:
        _check_rate_fits(c, name, settings.calls_per_second, concurrency, timeout_seconds)
    return WorkerPlan(
        priorities=priorities,
        concurrency=concurrency,
        timeout_seconds=timeout_seconds,
        memory_mb=whole("memory_mb", 256, 128, 10_240),
        batch_size=whole("batch_size", 1, 1, SQS_MAX_BATCH),
        esm_maximum_concurrency=whole(
            "esm_maximum_concurrency",
            max(limits.ESM_MIN_MAXIMUM_CONCURRENCY, concurrency),
            limits.ESM_MIN_MAXIMUM_CONCURRENCY,
            limits.ESM_MAX_MAXIMUM_CONCURRENCY,
        ),
        log_retention_days=v.check_log_retention_days(c, name, args.get("log_retention_days", 14)),
        kms_key_arn=v.check_kms_key_arn(c, name, "queue_kms_key_arn", args.get("queue_kms_key_arn")),
        runtime=settings,
    )
