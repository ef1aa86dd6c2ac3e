"""AdaptiveController: a scheduled function that moves the worker's concurrency limit from its
API metrics, and pauses its event source mappings while the API is failing (the circuit breaker)."""

# No `from __future__ import annotations` here: AdaptiveArgs is part of ThrottledFanOut's schema
# for other languages, and Pulumi's analyzer reads its annotations as objects, not strings
# (see sluice_fanout/plugin.py).

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import pulumi
import pulumi_aws as aws

from sluice_fanout.components import validation as v
from sluice_fanout.components.function import sluice_function
from sluice_fanout.components.policies import (
    build_controller_policy,
    event_source_mapping_arn,
)
from sluice_fanout.handlers import contract, limits
from sluice_fanout.handlers.controller import BreakerSettings
from sluice_fanout.handlers.settings import config_key

COMPONENT = "AdaptiveController"
ARG = "adaptive"
CONTROLLER_TIMEOUT_SECONDS = contract.CONTROLLER_RUN_SECONDS + 30
"""A run steps for CONTROLLER_RUN_SECONDS; the rest is for its start and its last step's calls."""
CONTROLLER_MEMORY_MB = 128  # a few API calls per step; it runs all the time, so memory is cost
SIGNAL_DELAY_MAX_SECONDS = 59  # the signal must be younger than a minute, the schedule's period
MAX_LATENCY_TOLERANCE = 100.0  # beyond 100 x the baseline, latency is no signal at all
# Schedule and invoke settings for the scheduled run: a run EventBridge starts while the last one
# still holds the single slot is throttled, and Lambda would keep retrying it for up to 6 hours;
# the next minute's run supersedes it, so it is dropped after a minute instead.
SCHEDULED_RUN_MAX_AGE_SECONDS = 60  # MaximumEventAgeInSeconds minimum
SCHEDULED_RUN_RETRIES = 0


class AdaptiveArgs(TypedDict):
    min_concurrency: NotRequired[int]
    """Lowest concurrency limit the controller sets, 1..concurrency; `concurrency` is the highest.
    Default 1."""
    interval_seconds: NotRequired[int]
    """Seconds between control steps, one of 1, 5, 10, 30, 60 (the periods CloudWatch serves
    high-resolution metrics in). Default 10."""
    signal_delay_seconds: NotRequired[int]
    """EMF metrics reach CloudWatch some seconds after the call: each step reads the interval
    that ended this long ago. 0..59. Default 10."""
    throttle_threshold: NotRequired[float]
    """Share of calls refused with 429 above which the limit decreases, >= 0 and < 1. Default:
    the controller's (ControllerSettings.throttle_threshold)."""
    error_threshold: NotRequired[float]
    """Share of calls failing (5xx, timeouts) above which the limit decreases, >= 0 and < 1.
    Default: the controller's (ControllerSettings.error_threshold)."""
    latency_tolerance: NotRequired[float]
    """Mean latency of answered calls above this multiple of the healthy baseline decreases the
    limit, > 1 and at most 100. Default: the controller's (ControllerSettings.latency_tolerance)."""
    min_calls: NotRequired[int]
    """Intervals with fewer calls hold the limit, >= 1. Default: the controller's
    (ControllerSettings.min_calls)."""
    probe_intervals: NotRequired[int]
    """Intervals that would grow the limit to `concurrency` hold first, >= 0. Default: the
    controller's (ControllerSettings.probe_intervals)."""
    breaker: NotRequired[bool]
    """Pause the worker's event source mappings while the API is failing. Default true."""
    breaker_error_threshold: NotRequired[float]
    """Share of failing calls that opens the breaker, >= 0 and < 1. Default 0.5
    (BreakerSettings.error_threshold)."""
    breaker_open_seconds: NotRequired[int]
    """Seconds the breaker stays open before it lets probe calls through. Paused items wait in
    their queues meanwhile, so breaker_open_seconds + 2 x interval_seconds must be less than
    callback_timeout_seconds, or their task tokens would time out. Default 120
    (BreakerSettings.open_seconds)."""
    breaker_min_calls: NotRequired[int]
    """The breaker opens only on an interval with at least this many calls, >= 1. Default 20
    (BreakerSettings.min_calls)."""
    throttle_share: NotRequired[float]
    """Deprecated: the old name of throttle_threshold, still read, with a warning."""
    error_share: NotRequired[float]
    """Deprecated: the old name of error_threshold, still read, with a warning."""
    breaker_error_share: NotRequired[float]
    """Deprecated: the old name of breaker_error_threshold, still read, with a warning."""


@dataclass(frozen=True)
class AdaptiveSettings:
    """AdaptiveArgs checked, with the defaults of Sluice's own filled in; the controller's tuning
    (`tuning`) only where given, so the controller's defaults apply to the rest."""

    min_concurrency: int
    max_concurrency: int
    interval_seconds: int
    signal_delay_seconds: int
    tuning: dict[str, int | float]
    """ControllerSettings field name -> value, for the fields given."""
    breaker: bool
    breaker_error_threshold: float
    breaker_open_seconds: int
    breaker_min_calls: int


RENAMED = {
    "throttle_share": "throttle_threshold",
    "error_share": "error_threshold",
    "breaker_error_share": "breaker_error_threshold",
}
"""Old AdaptiveArgs field -> its name since the settings took the controller's names; an old
name keeps working, with a deprecation warning."""


def _renamed(component: str, name: str, adaptive: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """`adaptive` under the current names, and current name -> the old name the user set (so an
    error names the key the user wrote)."""
    current = dict(adaptive)
    given_as: dict[str, str] = {}
    for old, new in RENAMED.items():
        if old not in current:
            continue
        if new in current:
            rule = f"is the old name of {ARG}.{new}; set only {config_key(f'{ARG}.{new}')}"
            raise v.fail(component, name, f"{ARG}.{old}", rule, current[old])
        pulumi.log.warn(
            f"{component} {name!r}: {config_key(f'{ARG}.{old}')} is deprecated and will be removed; "
            f"rename it {config_key(f'{ARG}.{new}')} (same meaning, same value)"
        )
        current[new] = current.pop(old)
        given_as[new] = old
    return current, given_as


def check_adaptive_args(
    component: str,
    name: str,
    adaptive: Any,
    *,
    concurrency: int,
    callback_timeout_seconds: int | None,
) -> AdaptiveSettings:
    """Check `adaptive` against the stack's (already checked) concurrency and callback timeout;
    None for the timeout skips the rule that needs it (the timeout is reported as itself)."""
    c = component
    if not isinstance(adaptive, Mapping):
        raise v.fail(c, name, ARG, "must be an object with AdaptiveArgs fields", adaptive)
    unknown = sorted(set(adaptive) - set(AdaptiveArgs.__annotations__))
    if unknown:
        raise v.fail(
            c,
            name,
            ARG,
            f"has unknown keys {unknown}; known keys are {sorted(AdaptiveArgs.__annotations__)}",
            sorted(adaptive),
        )

    adaptive, given_as = _renamed(c, name, adaptive)

    def whole(field: str, default: int, low: int, high: int) -> int:
        return v.check_int(c, name, f"{ARG}.{field}", adaptive.get(field, default), low=low, high=high)

    def share(field: str, default: float) -> float:
        given = adaptive.get(field, default)
        label = f"{ARG}.{given_as.get(field, field)}"
        value = v.check_number(c, name, label, given, low=-math.inf)
        if not 0 <= value < 1:
            raise v.fail(c, name, label, "must be >= 0 and < 1", given)
        return value

    minimum = whole("min_concurrency", 1, 1, limits.ESM_MAX_MAXIMUM_CONCURRENCY)
    if minimum > concurrency:
        rule = f"must be at most concurrency ({concurrency})"
        raise v.fail(c, name, f"{ARG}.min_concurrency", rule, minimum)
    interval = whole("interval_seconds", 10, 1, 60)
    if interval not in contract.CONTROLLER_INTERVALS_SECONDS:
        raise v.fail(
            c,
            name,
            f"{ARG}.interval_seconds",
            f"must be one of {list(contract.CONTROLLER_INTERVALS_SECONDS)}",
            interval,
        )
    delay = whole("signal_delay_seconds", 10, 0, SIGNAL_DELAY_MAX_SECONDS)
    tuning: dict[str, int | float] = {}
    for field in ("throttle_threshold", "error_threshold"):
        if field in adaptive:
            tuning[field] = share(field, 0.0)
    if "latency_tolerance" in adaptive:
        given = adaptive["latency_tolerance"]
        tolerance = v.check_number(c, name, f"{ARG}.latency_tolerance", given, low=-math.inf)
        if not 1 < tolerance <= MAX_LATENCY_TOLERANCE:
            rule = f"must be > 1 and at most {MAX_LATENCY_TOLERANCE:g}"
            raise v.fail(c, name, f"{ARG}.latency_tolerance", rule, given)
        tuning["latency_tolerance"] = tolerance
    if "min_calls" in adaptive:
        tuning["min_calls"] = whole("min_calls", 1, 1, 1_000_000)
    if "probe_intervals" in adaptive:
        tuning["probe_intervals"] = whole("probe_intervals", 0, 0, 1_000_000)
    breaker = v.check_bool(c, name, f"{ARG}.breaker", adaptive.get("breaker", True))
    # The breaker's defaults are the rule's own (handlers/controller.py), written once there.
    defaults = BreakerSettings()
    breaker_error = share("breaker_error_threshold", defaults.error_threshold)
    open_seconds = whole(
        "breaker_open_seconds", int(defaults.open_seconds), 0, limits.SFN_MAX_TIMEOUT_SECONDS
    )
    breaker_min_calls = whole("breaker_min_calls", defaults.min_calls, 1, 1_000_000)
    if breaker and callback_timeout_seconds is not None:
        # While the breaker is open no item is received; the items already enqueued keep waiting
        # on their task tokens. A step may see the recovery up to two intervals late (the signal
        # delay and the step itself), so the tokens must outlive the pause by that much.
        longest = callback_timeout_seconds - 2 * interval
        if open_seconds >= longest:
            raise v.fail(
                c,
                name,
                f"{ARG}.breaker_open_seconds",
                f"must be less than callback_timeout_seconds ({callback_timeout_seconds}) - 2 x "
                f"{ARG}.interval_seconds ({interval}) = {longest}, so work paused while the breaker "
                "is open is resumed before its task tokens time out",
                open_seconds,
            )
    return AdaptiveSettings(
        min_concurrency=minimum,
        max_concurrency=concurrency,
        interval_seconds=interval,
        signal_delay_seconds=delay,
        tuning=tuning,
        breaker=breaker,
        breaker_error_threshold=breaker_error,
        breaker_open_seconds=open_seconds,
        breaker_min_calls=breaker_min_calls,
    )


def build_controller_settings(settings: AdaptiveSettings) -> dict[str, Any]:
    """The controller's settings document (contract.ENV_CONTROLLER_SETTINGS). Tuning left unset
    is left out, so the controller's own defaults apply; so is the breaker's probe_limit."""
    breaker = (
        {
            "error_threshold": settings.breaker_error_threshold,
            "min_calls": settings.breaker_min_calls,
            "open_seconds": settings.breaker_open_seconds,
        }
        if settings.breaker
        else None
    )
    return {
        "min_limit": settings.min_concurrency,
        "max_limit": settings.max_concurrency,
        "interval_seconds": settings.interval_seconds,
        "signal_delay_seconds": settings.signal_delay_seconds,
        **settings.tuning,
        "breaker": breaker,
    }


class AdaptiveControllerArgs(TypedDict):
    adaptive: AdaptiveArgs
    """The controller's settings, checked here as ThrottledFanOut checks them."""
    max_concurrency: int
    """The API's limit (ThrottledFanOut's `concurrency`): the highest limit the controller sets."""
    callback_timeout_seconds: NotRequired[int]
    """How long an item may wait for the worker, to check the breaker's pause against.
    Default 86400."""
    priorities: Sequence[str]
    """The Priority dimensions of the worker metrics the controller reads."""
    worker_function_name: pulumi.Input[str]
    worker_function_arn: pulumi.Input[str]
    mapping_uuids: pulumi.Input[Sequence[str]]
    """The worker's event source mappings, whose MaximumConcurrency and Enabled it sets."""
    state_table_name: pulumi.Input[str]
    """The table holding the controller's state item (the worker's idempotency table)."""
    state_table_arn: pulumi.Input[str]
    log_retention_days: NotRequired[int]
    """Default 14."""


class AdaptiveController(pulumi.ComponentResource):
    """The controller function, its role, log group and one-minute schedule.

    The controller moves the worker's concurrency limit within [min_concurrency, concurrency].
    Every minute EventBridge starts one run (contract.CONTROLLER_SCHEDULE, the shortest rate it
    offers); the run steps every interval_seconds for contract.CONTROLLER_RUN_SECONDS, so the limit
    moves faster than the schedule alone allows.
    """

    function_name: pulumi.Output[str]
    """Name of the controller Lambda function (its logs show every step and decision)."""
    function_arn: pulumi.Output[str]
    rule_arn: pulumi.Output[str]
    """The EventBridge rule that starts a run every minute."""

    def __init__(
        self, name: str, args: AdaptiveControllerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        settings = check_adaptive_args(
            COMPONENT,
            name,
            args["adaptive"],
            concurrency=v.check_int(
                COMPONENT, name, "max_concurrency", args["max_concurrency"], low=1, high=1_000
            ),
            callback_timeout_seconds=v.check_int(
                COMPONENT,
                name,
                "callback_timeout_seconds",
                args.get("callback_timeout_seconds", 86_400),
                low=1,
                high=limits.SFN_MAX_TIMEOUT_SECONDS,
            ),
        )
        priorities = v.check_priorities(COMPONENT, name, args["priorities"])
        retention = v.check_log_retention_days(COMPONENT, name, args.get("log_retention_days", 14))
        super().__init__("sluice:index:AdaptiveController", name, {}, opts)
        child = pulumi.ResourceOptions(parent=self)

        env: dict[str, pulumi.Input[str]] = {
            contract.ENV_CONTROLLER_WORKER: args["worker_function_name"],
            contract.ENV_CONTROLLER_MAPPINGS: pulumi.Output.json_dumps(args["mapping_uuids"]),
            contract.ENV_CONTROLLER_PRIORITIES: json.dumps(priorities),
            contract.ENV_CONTROLLER_TABLE: args["state_table_name"],
            contract.ENV_CONTROLLER_SETTINGS: json.dumps(build_controller_settings(settings)),
        }

        def controller_policy(logs_arn: pulumi.Output[str]) -> pulumi.Output[dict[str, Any]]:
            return pulumi.Output.all(
                worker_arn=args["worker_function_arn"],
                worker_name=args["worker_function_name"],
                uuids=args["mapping_uuids"],
                table_arn=args["state_table_arn"],
                log_group_arn=logs_arn,
            ).apply(
                lambda a: build_controller_policy(
                    worker_function_arn=a["worker_arn"],
                    # AWS's documented ARN format, from the UUIDs the controller is given:
                    # the grant names exactly the mappings it will update.
                    mapping_arns=[event_source_mapping_arn(a["worker_arn"], u) for u in a["uuids"]],
                    state_table_arn=a["table_arn"],
                    state_key=contract.CONTROLLER_STATE_PREFIX + a["worker_name"],
                    limits_key=contract.LIMITS_PREFIX + a["worker_name"],
                    log_group_arn=a["log_group_arn"],
                )
            )

        function = sluice_function(
            self,
            prefix=name,
            function_name=f"{name}-function",
            handler=contract.CONTROLLER_HANDLER,
            retention_days=retention,
            policy=controller_policy,
            timeout_seconds=CONTROLLER_TIMEOUT_SECONDS,
            memory_mb=CONTROLLER_MEMORY_MB,
            environment=env,
            # One run at a time: a run that overlaps the next scheduled one would otherwise step
            # the same limit twice per interval.
            reserved_concurrency=1,
        ).function
        aws.lambda_.FunctionEventInvokeConfig(
            f"{name}-invoke-config",
            function_name=function.name,
            maximum_event_age_in_seconds=SCHEDULED_RUN_MAX_AGE_SECONDS,
            maximum_retry_attempts=SCHEDULED_RUN_RETRIES,
            opts=child,
        )
        rule = aws.cloudwatch.EventRule(
            f"{name}-schedule",
            description="Starts a Sluice adaptive controller run",
            schedule_expression=contract.CONTROLLER_SCHEDULE,
            opts=child,
        )
        permission = aws.lambda_.Permission(
            f"{name}-invoke",
            action="lambda:InvokeFunction",
            function=function.name,
            principal="events.amazonaws.com",
            source_arn=rule.arn,
            opts=child,
        )
        aws.cloudwatch.EventTarget(
            f"{name}-target",
            rule=rule.name,
            arn=function.arn,
            # Without the permission the first scheduled runs would fail to invoke.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[permission]),
        )

        self.function_name = function.name
        self.function_arn = function.arn
        self.rule_arn = rule.arn
        self.register_outputs(
            {
                "function_name": self.function_name,
                "function_arn": self.function_arn,
                "rule_arn": self.rule_arn,
            }
        )
