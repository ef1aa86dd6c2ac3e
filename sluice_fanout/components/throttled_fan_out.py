"""ThrottledFanOut: the top component. Queues, workflow and worker wired together."""

# No `from __future__ import annotations` here: Pulumi's analyzer builds the schema other
# languages see from these annotations as objects, not strings (see sluice_fanout/plugin.py).

from collections.abc import Mapping, Sequence
from typing import Any, NotRequired, TypedDict, cast

import pulumi

from sluice_fanout.components import validation as v
from sluice_fanout.components.adaptive_controller import (
    AdaptiveArgs,
    AdaptiveController,
    AdaptiveControllerArgs,
    check_adaptive_args,
)
from sluice_fanout.components.fan_out_workflow import (
    FanOutWorkflow,
    FanOutWorkflowArgs,
    check_workflow_args,
)
from sluice_fanout.components.observability import Observability
from sluice_fanout.components.observability_documents import DEFAULT_HIGH_AGE_ALARM_SECONDS
from sluice_fanout.components.priority_queues import PriorityQueues, PriorityQueuesArgs, check_queue_args
from sluice_fanout.components.priority_worker import (
    TICKETS,
    HttpTargetArgs,
    PriorityWorker,
    PriorityWorkerArgs,
    check_worker_args,
)
from sluice_fanout.handlers import limits
from sluice_fanout.handlers.contract import DISPATCH_TICKET
from sluice_fanout.handlers.fair import KeyRuleError, KeysSettings
from sluice_fanout.handlers.settings import DEFAULT_PRIORITIES, WorkerSettings

COMPONENT = "ThrottledFanOut"
# An alarm on the age of urgent work: from a minute (SQS's metric period) to 14 days (the
# longest an SQS message can wait).
HIGH_AGE_ALARM_RANGE = (60, 1_209_600)

# Args handed through unchanged to one sub-component; validated there.
_QUEUE_ARGS = ("visibility_timeout_seconds", "message_retention_seconds", "dlq_retention_seconds")
_WORKER_ARGS = (
    "share_period",
    "target_dir",
    "target_handler",
    "http_target",
    "esm_maximum_concurrency",
    "batch_size",
    "memory_mb",
    "force_after_receives",
    "max_attempts",
    "yield_delay_seconds",
    "retry_base_seconds",
    "retry_max_seconds",
    "calls_per_second",
    "idempotency_ttl_seconds",
)
_WORKFLOW_ARGS = (
    "throttle_rule",
    "default_priority",
    "callback_timeout_seconds",
    "map_max_concurrency",
    "tolerated_failure_percentage",
    "direct_function_arn",
    "input_bucket_arns",
    "log_level",
)


class ThrottledFanOutArgs(TypedDict):
    concurrency: int
    """The legacy API's limit on calls in flight. Required."""
    priorities: NotRequired[Sequence[str]]
    """Priority names, highest first. Default HIGH, NORMAL, BATCH."""
    dispatch: NotRequired[str]
    """How the worker honours priority: `ticket` or `yield` (see docs/dispatch.md). Default ticket."""
    share_period: NotRequired[int]
    """ticket: one item in every share_period gives each lower priority first pick. Default 10."""
    target_dir: NotRequired[str]
    """Directory with your target code (see handlers/target.py for the contract)."""
    target_handler: NotRequired[str]
    """Your target as `module.function` inside target_dir."""
    http_target: NotRequired[HttpTargetArgs]
    """Use the bundled HTTP target: POST each item to a URL."""
    worker_timeout_seconds: NotRequired[int]
    """Worker function timeout. Default 30."""
    memory_mb: NotRequired[int]
    """Worker memory. Default 256."""
    batch_size: NotRequired[int]
    """Messages per worker invocation. Default 1."""
    esm_maximum_concurrency: NotRequired[int]
    """Per-queue mapping MaximumConcurrency. Default max(2, concurrency). Not with `adaptive`,
    whose controller sets it."""
    force_after_receives: NotRequired[int]
    """Receive count from which a lower-priority message no longer yields. Default 3."""
    max_attempts: NotRequired[int]
    """Real attempts per item before it fails. Default 3."""
    yield_delay_seconds: NotRequired[int]
    """Delay before a yielded message is visible again. Default 2."""
    retry_base_seconds: NotRequired[float]
    """First backoff after a retryable error. Default 2."""
    retry_max_seconds: NotRequired[float]
    """Backoff cap. Default 300."""
    keys: NotRequired[Mapping[str, Any]]
    """Fair share between keys within a priority (docs/keys.md; `ticket` dispatch only):
    `field` (default `key`), `weights` {key: weight}, `concurrency` (a cap per key),
    `concurrency_per_key` {key: cap}, `ordered_priorities`. Default: none, items are worked in
    arrival order within a priority."""
    adaptive: NotRequired[AdaptiveArgs]
    """Let a scheduled controller move the worker's concurrency limit between
    adaptive.min_concurrency and `concurrency` from the API's 429s, errors and latency, and
    pause the worker while the API is failing (see docs/adaptive.md). Default
    none: the limit is `concurrency`, fixed."""
    calls_per_second: NotRequired[float]
    """The legacy API's published rate, enforced alongside `concurrency` across all worker
    invocations (a limiter on the idempotency table). Default none."""
    max_receive_count: NotRequired[int]
    """Receives before a message is dead-lettered. Default 10."""
    idempotency_ttl_seconds: NotRequired[int]
    """How long each item's stored outcome is kept to answer redeliveries without calling the
    API again. Default 4 days or callback_timeout_seconds if longer; at least the latter."""
    visibility_timeout_seconds: NotRequired[int]
    """Queue visibility timeout. Default 6x worker_timeout_seconds."""
    message_retention_seconds: NotRequired[int]
    """Default 4 days."""
    dlq_retention_seconds: NotRequired[int]
    """Default 14 days."""
    throttle_rule: NotRequired[Mapping[str, Any]]
    """ASL Choice rule selecting the items that go through the queues. Default: items with a
    `priority`."""
    default_priority: NotRequired[str]
    """Queue for selected items without a priority. Default: the lowest."""
    callback_timeout_seconds: NotRequired[int]
    """Longest an item may wait for the worker, queueing included. Default 86400."""
    map_max_concurrency: NotRequired[int]
    """Child executions at once. Default 1000."""
    tolerated_failure_percentage: NotRequired[float]
    """Default 5."""
    direct_function_arn: NotRequired[pulumi.Input[str]]
    """Lambda for items that skip the queues. Default none (item passes through)."""
    input_bucket_arns: NotRequired[Sequence[pulumi.Input[str]]]
    """Extra buckets batches may be read from."""
    log_level: NotRequired[str]
    """State machine log level. Default ERROR."""
    log_retention_days: NotRequired[int]
    """Default 14."""
    queue_kms_key_arn: NotRequired[str]
    """Customer KMS key (key or alias ARN) encrypting every queue and DLQ; the worker and state
    machine roles get kms:Decrypt and kms:GenerateDataKey on it alone. Default none: SQS-managed
    encryption."""
    dashboard: NotRequired[bool]
    """Create the CloudWatch dashboard. Default True."""
    alarms: NotRequired[bool]
    """Create the CloudWatch alarms (every DLQ not empty, the highest priority's age, worker
    errors). Default True."""
    high_age_alarm_seconds: NotRequired[int]
    """Alarm when the highest priority's oldest message is older than this for 3 minutes.
    Default 300."""
    wait_objectives: NotRequired[Mapping[str, int]]
    """The longest wait each priority should see, in seconds, e.g. {"HIGH": 60, "NORMAL": 900}:
    an alarm when its oldest waiting item is older for 3 minutes, and a line on the dashboard's
    age widget. The highest priority's defaults to `high_age_alarm_seconds` (name it here or
    there, not both). Default: that one alone."""
    alarm_topic_arn: NotRequired[str]
    """An existing SNS topic (ARN) notified on ALARM and OK. Default none: alarms only change
    state (visible on the dashboard and in the console)."""


class ThrottledFanOut(pulumi.ComponentResource):
    """Fan a batch out with Step Functions and feed a rate-limited API by priority."""

    state_machine_arn: pulumi.Output[str]
    """Start an execution here with `{"items": [...]}` or `{"source": {"bucket", "key"}}`."""
    queue_urls: pulumi.Output[dict[str, str]]
    """Queue URL by priority."""
    dlq_urls: pulumi.Output[dict[str, str]]
    """Dead-letter queue URL by priority."""
    worker_function_name: pulumi.Output[str]
    """Name of the worker Lambda function (its logs, metrics and reserved concurrency)."""
    results_bucket: pulumi.Output[str]
    """Map results (`results/`), batches read from S3 (`inputs/`), and item results too large for
    Step Functions (`item-results/`)."""
    idempotency_table_name: pulumi.Output[str]
    """DynamoDB table holding each item's stored outcome, which answers redeliveries."""
    dashboard_name: pulumi.Output[str] | None
    """The CloudWatch dashboard, or None when disabled."""
    alarm_arns: pulumi.Output[dict[str, str]]
    """Alarm ARN by role (`dlq-<priority>`, `dlq-tickets`, `age-<highest>`, `worker-errors`)."""
    controller_function_name: pulumi.Output[str] | None
    """The adaptive controller's Lambda function (its logs show each step's signal and
    decision), or None without `adaptive`."""

    def __init__(
        self, name: str, args: ThrottledFanOutArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        dispatch = v.check_setting(COMPONENT, name, WorkerSettings, "dispatch", args)
        priorities = v.check_priorities(COMPONENT, name, args.get("priorities", DEFAULT_PRIORITIES))
        known = {
            "concurrency",
            "priorities",
            "dispatch",
            "worker_timeout_seconds",
            "max_receive_count",
            "log_retention_days",
            "queue_kms_key_arn",
            "dashboard",
            "alarms",
            "high_age_alarm_seconds",
            "wait_objectives",
            "alarm_topic_arn",
            "adaptive",
            "keys",
            *_QUEUE_ARGS,
            *_WORKER_ARGS,
            *_WORKFLOW_ARGS,
        }
        unknown = sorted(set(args) - known)
        if unknown:
            raise v.SluiceConfigError(
                f"{COMPONENT} {name!r}: unknown args {unknown!r}; known args are {sorted(known)!r}"
            )
        callback_timeout = args.get("callback_timeout_seconds", 86_400)
        # Only a timeout the workflow accepts is compared: a bad one is reported as itself.
        waits = (
            isinstance(callback_timeout, int)
            and not isinstance(callback_timeout, bool)
            and 1 <= callback_timeout <= limits.SFN_MAX_TIMEOUT_SECONDS
        )
        ttl = args.get("idempotency_ttl_seconds", max(345_600, callback_timeout) if waits else 345_600)
        if waits and isinstance(ttl, int) and ttl < callback_timeout:
            # The worker skips items whose task has ended, so a record is only needed while the
            # task can still wait; a shorter one lets a late redelivery call the API twice.
            raise v.fail(
                COMPONENT,
                name,
                "idempotency_ttl_seconds",
                f"must be at least callback_timeout_seconds ({callback_timeout})",
                ttl,
            )
        worker_timeout = args.get("worker_timeout_seconds", 30)
        max_receive_count = args.get("max_receive_count", 10)
        retention = args.get("log_retention_days", 14)
        # Every sub-component needs the key: the queues encrypt with it, both roles use it.
        kms = {"queue_kms_key_arn": args["queue_kms_key_arn"]} if "queue_kms_key_arn" in args else {}

        def pick(keys: Sequence[str]) -> dict[str, Any]:
            return {k: args[k] for k in keys if k in args}  # type: ignore[literal-required]  # keys are from the TypedDict

        queue_args = {
            "priorities": priorities,
            "ticket_queue": dispatch == DISPATCH_TICKET,
            "worker_timeout_seconds": worker_timeout,
            "max_receive_count": max_receive_count,
            **kms,
            **pick(_QUEUE_ARGS),
        }
        worker_args_plain = {
            "priorities": priorities,
            "dispatch": dispatch,
            "concurrency": args.get("concurrency"),
            "timeout_seconds": worker_timeout,
            "max_receive_count": max_receive_count,
            "log_retention_days": retention,
            **kms,
            **pick(_WORKER_ARGS),
            "idempotency_ttl_seconds": ttl,
        }
        workflow_args_plain = {
            "priorities": priorities,
            "log_retention_days": retention,
            **kms,
            **pick(_WORKFLOW_ARGS),
        }
        if "keys" in args:
            keys = _check_keys(name, args["keys"], priorities, dispatch)
            worker_args_plain["keys"] = keys
            workflow_args_plain["keys"] = keys
        # Check every sub-component's args before any resource exists, so a bad stack is
        # rejected whole at preview instead of half-built.
        check_queue_args(name, queue_args, COMPONENT)
        worker_settings = check_worker_args(name, worker_args_plain, COMPONENT)
        check_workflow_args(name, workflow_args_plain, COMPONENT)
        adaptive = "adaptive" in args
        if adaptive:
            if "esm_maximum_concurrency" in args:
                raise v.fail(
                    COMPONENT,
                    name,
                    "esm_maximum_concurrency",
                    "must not be set with adaptive: the controller sets each mapping's MaximumConcurrency",
                    args["esm_maximum_concurrency"],
                )
            adaptive_settings = check_adaptive_args(
                COMPONENT,
                name,
                args["adaptive"],
                concurrency=worker_settings.concurrency,
                callback_timeout_seconds=callback_timeout if waits else None,
            )
            worker_args_plain["controlled"] = True
            worker_args_plain["throttle_hold_seconds"] = float(
                adaptive_settings.interval_seconds + adaptive_settings.signal_delay_seconds
            )
        dashboard = v.check_bool(COMPONENT, name, "dashboard", args.get("dashboard", True))
        alarms = v.check_bool(COMPONENT, name, "alarms", args.get("alarms", True))
        high_age = v.check_int(
            COMPONENT,
            name,
            "high_age_alarm_seconds",
            args.get("high_age_alarm_seconds", DEFAULT_HIGH_AGE_ALARM_SECONDS),
            low=HIGH_AGE_ALARM_RANGE[0],
            high=HIGH_AGE_ALARM_RANGE[1],
        )
        topic = v.check_sns_topic_arn(COMPONENT, name, "alarm_topic_arn", args.get("alarm_topic_arn"))
        objectives = _check_wait_objectives(name, args.get("wait_objectives", {}), priorities)
        if priorities[0] in objectives and "high_age_alarm_seconds" in args:
            raise v.fail(
                COMPONENT,
                name,
                "wait_objectives",
                f"names {priorities[0]!r}, whose objective high_age_alarm_seconds also sets; keep one",
                dict(objectives),
            )
        objectives = {priorities[0]: high_age} | objectives

        super().__init__("sluice:index:ThrottledFanOut", name, {}, opts)
        child = pulumi.ResourceOptions(parent=self)

        queues = PriorityQueues(f"{name}-queues", cast("PriorityQueuesArgs", queue_args), child)
        workflow_args = cast(
            "FanOutWorkflowArgs",
            {
                **workflow_args_plain,
                "queue_urls": queues.queue_urls,
                "queue_arns": queues.queue_arns,
                **_ticket_args(queues),
            },
        )
        workflow = FanOutWorkflow(f"{name}-workflow", workflow_args, child)
        worker_args = cast(
            "PriorityWorkerArgs",
            {
                **worker_args_plain,
                "queue_urls": queues.queue_urls,
                "queue_arns": queues.queue_arns,
                "dlq_urls": queues.dlq_urls,
                "dlq_arns": queues.dlq_arns,
                "results_bucket": workflow.results_bucket,
                "results_bucket_arn": workflow.results_bucket_arn,
                **_ticket_args(queues),
                **(
                    {
                        "keyed_table_name": workflow.keyed_table_name,
                        "keyed_table_arn": workflow.keyed_table_arn,
                    }
                    if workflow.keyed_table_name is not None
                    else {}
                ),
            },
        )
        worker = PriorityWorker(f"{name}-worker", worker_args, child)
        controller = None
        if adaptive:
            mapping_keys = [TICKETS] if dispatch == DISPATCH_TICKET else priorities
            controller = AdaptiveController(
                f"{name}-controller",
                AdaptiveControllerArgs(
                    adaptive=args["adaptive"],
                    max_concurrency=worker_settings.concurrency,
                    callback_timeout_seconds=callback_timeout,
                    priorities=priorities,
                    worker_function_name=worker.function_name,
                    worker_function_arn=worker.function_arn,
                    mapping_uuids=worker.mapping_uuids.apply(lambda u: [u[k] for k in mapping_keys]),
                    state_table_name=worker.idempotency_table_name,
                    state_table_arn=worker.idempotency_table_arn,
                    log_retention_days=retention,
                ),
                child,
            )
        observability = Observability(
            f"{name}-observability",
            {
                "priorities": priorities,
                "queue_urls": queues.queue_urls,
                "dlq_urls": queues.dlq_urls,
                "ticket_queue_url": queues.ticket_queue_url,
                "ticket_dlq_url": queues.ticket_dlq_url,
                "function_name": worker.function_name,
                "state_machine_arn": workflow.state_machine_arn,
                "concurrency": worker_settings.concurrency,
                "high_age_alarm_seconds": objectives[priorities[0]],
                "wait_objectives": objectives,
                "keyed": "keys" in args,
                "alarm_topic_arn": topic,
                "dashboard": dashboard,
                "alarms": alarms,
            },
            child,
        )

        self.state_machine_arn = workflow.state_machine_arn
        self.queue_urls = queues.queue_urls
        self.dlq_urls = queues.dlq_urls
        self.worker_function_name = worker.function_name
        self.results_bucket = workflow.results_bucket
        self.idempotency_table_name = worker.idempotency_table_name
        self.dashboard_name = observability.dashboard_name
        self.alarm_arns = observability.alarm_arns
        self.controller_function_name = controller.function_name if controller else None
        self.register_outputs(
            {
                "state_machine_arn": self.state_machine_arn,
                "queue_urls": self.queue_urls,
                "dlq_urls": self.dlq_urls,
                "worker_function_name": self.worker_function_name,
                "results_bucket": self.results_bucket,
                "idempotency_table_name": self.idempotency_table_name,
                "dashboard_name": self.dashboard_name,
                "alarm_arns": self.alarm_arns,
                "controller_function_name": self.controller_function_name,
            }
        )


def _check_keys(name: str, raw: Any, priorities: Sequence[str], dispatch: str) -> KeysSettings:
    if dispatch != DISPATCH_TICKET:
        raise v.fail(
            COMPONENT,
            name,
            "keys",
            "need the ticket dispatch (the worker picks the fair key's item)",
            dispatch,
        )
    try:
        return KeysSettings.parse(raw, priorities)
    except KeyRuleError as exc:
        raise v.SluiceConfigError(f"{COMPONENT} {name!r}: {exc}") from None


def _check_wait_objectives(name: str, raw: Any, priorities: Sequence[str]) -> dict[str, int]:
    """Seconds by priority; numbers written as text (as `pulumi config set --path` stores them)
    are read as numbers."""
    if not isinstance(raw, Mapping):
        raise v.fail(
            COMPONENT, name, "wait_objectives", 'must map priorities to seconds, e.g. {"NORMAL": 900}', raw
        )
    objectives = {}
    for priority, seconds in raw.items():
        if priority not in priorities:
            raise v.fail(
                COMPONENT,
                name,
                "wait_objectives",
                f"names {priority!r}, not one of the priorities {list(priorities)}",
                raw,
            )
        value = int(seconds) if isinstance(seconds, str) and seconds.strip().isdigit() else seconds
        objectives[priority] = v.check_int(
            COMPONENT,
            name,
            f"wait_objectives[{priority!r}]",
            value,
            low=HIGH_AGE_ALARM_RANGE[0],
            high=HIGH_AGE_ALARM_RANGE[1],
        )
    return objectives


def _ticket_args(queues: PriorityQueues) -> dict[str, Any]:
    if queues.ticket_queue_url is None:
        return {}
    return {"ticket_queue_url": queues.ticket_queue_url, "ticket_queue_arn": queues.ticket_queue_arn}
