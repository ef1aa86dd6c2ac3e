"""The adaptive controller's Lambda: it moves the worker's concurrency limit and trips its breaker.

Scheduled once a minute (EventBridge's shortest rate), one invocation runs a control step at
every `interval_seconds` boundary for CONTROLLER_RUN_SECONDS, then the next invocation takes
over. A step:
1. reads the window [b - interval, b) of the worker's API metrics (ApiCalls, ApiThrottled,
   ApiErrors, ApiLatency over every priority) at b + signal_delay, once EMF lines of that window
   have reached CloudWatch;
2. decides with the pure rules of `controller.py` (the limit, the breaker);
3. stores the new state with a conditional write on its version: a second controller that read
   the same state loses the write and stops, so only one acts;
4. applies it: the worker's reserved concurrency is the limit (the hard cap in both dispatch
   modes), every mapping's MaximumConcurrency is max(2, limit) (AWS's minimum is 2) so its
   pollers do not outnumber the slots by far, and the mappings are disabled while the breaker is
   OPEN. Going down, the mappings change first and reserved concurrency last, going up the
   other way round, so the pollers never briefly exceed the old limit's room. It compares with
   what is deployed now (not with what it last wrote), so a failed call, or a change made by
   hand, is mended by the next step. An AWS error ends neither the step's other calls nor the
   run: it is logged and the next window is decided as usual.

Pausing by disabling the mappings, not by reserved concurrency 0: a function at 0 throttles
every poll, and throttled receives raise receive counts towards the DLQ. Disabled mappings
leave the messages in their queues; their task tokens keep waiting within the callback timeout,
which validation keeps longer than the breaker's pause.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError

from sluice_fanout.handlers import contract
from sluice_fanout.handlers.controller import (
    BreakerDecision,
    BreakerMode,
    BreakerSettings,
    BreakerState,
    ControllerSettings,
    ControllerState,
    Decision,
    Signal,
    next_breaker,
    next_limit,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger(service="sluice-controller")
S = TypeVar("S", ControllerSettings, BreakerSettings)
K = TypeVar("K", ControllerState, BreakerState)

STOP_MARGIN_S = 5.0  # a step never starts this close to the invocation's timeout
MAX_QUERIES = 500  # GetMetricData accepts at most 500 metric queries per request


class AdaptiveConfigError(Exception):
    """The controller's environment is wrong; the deploy needs fixing."""


class StateUnreadable(Exception):  # noqa: N818 - names the state, like StateConflict
    """The state item exists but cannot be read (edited by hand, another release): start afresh
    from what is deployed, writing over it (its version is kept for the conditional write)."""

    def __init__(self, version: int, detail: str) -> None:
        super().__init__(detail)
        self.version = version


class StateConflict(Exception):  # noqa: N818 - a control signal: another controller wrote first
    """The state changed since it was read: another controller is acting."""


@dataclass(frozen=True)
class AdaptiveConfig:
    worker: str
    mappings: tuple[str, ...]
    priorities: tuple[str, ...]
    table: str
    limit: ControllerSettings
    breaker: BreakerSettings | None
    interval_seconds: int
    signal_delay_seconds: int
    run_seconds: int = contract.CONTROLLER_RUN_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AdaptiveConfig:
        raw = _json(env, contract.ENV_CONTROLLER_SETTINGS)
        if not isinstance(raw, dict):
            raise AdaptiveConfigError(
                f"{contract.ENV_CONTROLLER_SETTINGS} must be a JSON object, got {raw!r}"
            )
        settings = dict(raw)
        loop = {key: settings.pop(key, None) for key in ("interval_seconds", "signal_delay_seconds")}
        breaker = settings.pop("breaker", None)
        interval = loop["interval_seconds"]
        if interval not in contract.CONTROLLER_INTERVALS_SECONDS:
            raise AdaptiveConfigError(
                f"{contract.ENV_CONTROLLER_SETTINGS}: interval_seconds must be one of "
                f"{contract.CONTROLLER_INTERVALS_SECONDS}, got {interval!r}"
            )
        if "max_limit" not in settings:
            # Without it the rule's own default would cap a stack whose API allows more.
            raise AdaptiveConfigError(
                f"{contract.ENV_CONTROLLER_SETTINGS}: max_limit is not set; the AdaptiveController "
                "component sets it to the stack's concurrency"
            )
        delay = loop["signal_delay_seconds"]
        if not isinstance(delay, int) or isinstance(delay, bool) or delay < 0:
            raise AdaptiveConfigError(
                f"{contract.ENV_CONTROLLER_SETTINGS}: signal_delay_seconds must be an integer >= 0, "
                f"got {delay!r}"
            )
        return cls(
            worker=_text(env, contract.ENV_CONTROLLER_WORKER),
            mappings=_names(env, contract.ENV_CONTROLLER_MAPPINGS),
            priorities=_names(env, contract.ENV_CONTROLLER_PRIORITIES),
            table=_text(env, contract.ENV_CONTROLLER_TABLE),
            limit=_settings(ControllerSettings, settings, "settings"),
            breaker=None if breaker is None else _settings(BreakerSettings, breaker, "breaker"),
            interval_seconds=interval,
            signal_delay_seconds=delay,
        )


def _text(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise AdaptiveConfigError(f"{name} is not set; the AdaptiveController component sets it")
    return value


def _json(env: Mapping[str, str], name: str) -> Any:
    try:
        return json.loads(_text(env, name))
    except ValueError as exc:
        raise AdaptiveConfigError(f"{name} must be JSON, got {env[name]!r}") from exc


def _names(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    value = _json(env, name)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise AdaptiveConfigError(f"{name} must be a JSON list of names, got {value!r}")
    return tuple(value)


def _settings(kind: type[S], raw: Any, where: str) -> S:
    if not isinstance(raw, dict):
        raise AdaptiveConfigError(
            f"{contract.ENV_CONTROLLER_SETTINGS}: {where} must be an object, got {raw!r}"
        )
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise AdaptiveConfigError(
            f"{contract.ENV_CONTROLLER_SETTINGS}: unknown {where} keys {unknown}; known: {sorted(known)}"
        )
    try:
        return kind(**raw)
    except (TypeError, ValueError) as exc:
        raise AdaptiveConfigError(f"{contract.ENV_CONTROLLER_SETTINGS}: {exc}") from exc


@dataclass(frozen=True)
class Stored:
    """The controller's memory between steps (one DynamoDB item)."""

    limit: int
    controller: ControllerState
    breaker: BreakerState
    window_end: int
    """End (epoch seconds) of the last window decided on: a window is never decided twice."""
    version: int
    """0: no item yet."""


@dataclass(frozen=True)
class Deployed:
    """What the worker runs with now."""

    reserved: int | None
    mappings: dict[str, tuple[bool, int | None]]
    """By UUID: (enabled, MaximumConcurrency)."""


class Signals(Protocol):
    def read(self, start: int, end: int) -> Signal: ...


class Controls(Protocol):
    def deployed(self) -> Deployed: ...

    def apply(self, limit: int, paused: bool, now: Deployed) -> list[str]: ...


class Store(Protocol):
    def load(self) -> Stored | None: ...

    def save(self, state: Stored) -> None: ...


@dataclass(frozen=True)
class AdaptiveDeps:
    config: AdaptiveConfig
    signals: Signals
    controls: Controls
    store: Store
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class Step:
    """One control step, as logged."""

    window_end: int
    signal: Signal
    decision: Decision
    breaker: BreakerDecision | None
    limit: int
    """The limit applied: the rule's, capped by the breaker's probe limit while HALF_OPEN."""
    paused: bool
    changes: list[str]


def step(deps: AdaptiveDeps, window_end: int) -> Step | None:
    """Decide on the window ending at `window_end` and apply it; None if already decided."""
    cfg = deps.config
    version = 0
    try:
        stored = deps.store.load()
    except StateUnreadable as exc:
        logger.error("state unreadable; starting afresh", extra={"error": str(exc)})
        stored, version = None, exc.version
    deployed = deps.controls.deployed()
    if stored is None:
        # First run: start from what is deployed (the stack's `concurrency`, the max).
        start = deployed.reserved if deployed.reserved is not None else cfg.limit.max_limit
        stored = Stored(cfg.limit.clamp(start), ControllerState(), BreakerState(), 0, version)
    if window_end <= stored.window_end:
        return None
    signal = deps.signals.read(window_end - cfg.interval_seconds, window_end)
    decision = next_limit(stored.limit, signal, stored.controller, cfg.limit)
    breaker = None if cfg.breaker is None else next_breaker(stored.breaker, signal, window_end, cfg.breaker)
    limit = decision.limit
    if breaker is not None and breaker.limit_cap is not None:
        limit = min(limit, breaker.limit_cap)
    paused = breaker is not None and breaker.pause
    deps.store.save(
        Stored(
            decision.limit,
            decision.state,
            breaker.state if breaker else stored.breaker,
            window_end,
            stored.version + 1,
        )
    )
    changes = deps.controls.apply(limit, paused, deployed)
    result = Step(window_end, signal, decision, breaker, limit, paused, changes)
    logger.info(
        "control step",
        extra={
            "window_end": window_end,
            "signal": asdict(signal),
            "reason": str(decision.reason),
            "rule_limit": decision.limit,
            "limit": limit,
            "breaker": None
            if breaker is None
            else {"mode": str(breaker.state.mode), "reason": breaker.reason},
            "paused": paused,
            "changes": changes,
        },
    )
    return result


def run(deps: AdaptiveDeps, remaining_ms: Callable[[], int]) -> list[Step]:
    """Step at every interval boundary for run_seconds (or until the invocation must end)."""
    cfg = deps.config
    started = deps.clock()
    # Ends a few seconds before the next scheduled run arrives: reserved concurrency 1 would
    # throttle that run, and the window it would have stepped is the next run's first one.
    stop_at = min(started + cfg.run_seconds, started + remaining_ms() / 1000) - STOP_MARGIN_S
    interval = cfg.interval_seconds
    # The first window whose data is complete now or soonest.
    window_end = math.floor((started - cfg.signal_delay_seconds) / interval) * interval
    steps: list[Step] = []
    while True:
        due = window_end + cfg.signal_delay_seconds
        if due >= stop_at or remaining_ms() / 1000 - max(0.0, due - deps.clock()) < STOP_MARGIN_S:
            return steps
        wait = due - deps.clock()
        if wait > 0:
            deps.sleep(wait)
        try:
            done = step(deps, window_end)
        except StateConflict:
            logger.warning("another controller is acting; this one stops", extra={"window_end": window_end})
            return steps
        except (BotoCoreError, ClientError):
            # Metrics or state unreadable this once (after botocore's own retries): skip the
            # window rather than end the run; the limit stays where it is meanwhile.
            logger.exception("control step failed", extra={"window_end": window_end})
            done = None
        if done is not None:
            steps.append(done)
        window_end += interval


class CloudWatchSignals:
    """The worker's API metrics over a window, summed over its priorities."""

    def __init__(
        self,
        client: Any,  # a boto3 CloudWatch client
        worker: str,
        priorities: tuple[str, ...],
        *,
        namespace: str = contract.METRICS_NAMESPACE,
        service: str = contract.METRICS_SERVICE,
    ) -> None:
        self._client = client
        self._queries: list[tuple[str, str, str]] = []  # (id, metric, stat)
        self._specs: list[dict[str, Any]] = []
        wanted = [(m, "Sum") for m in contract.API_SIGNAL_METRICS] + [
            (contract.METRIC_API_LATENCY, "Sum"),
            (contract.METRIC_API_LATENCY, "SampleCount"),
        ]
        for p_no, priority in enumerate(priorities):
            dimensions = [
                {"Name": contract.DIMENSION_FUNCTION, "Value": worker},
                {"Name": contract.DIMENSION_PRIORITY, "Value": priority},
                {"Name": contract.DIMENSION_SERVICE, "Value": service},
            ]
            for m_no, (metric, stat) in enumerate(wanted):
                query_id = f"p{p_no}m{m_no}"
                self._queries.append((query_id, metric, stat))
                self._specs.append(
                    {
                        "Id": query_id,
                        "MetricStat": {
                            "Metric": {
                                "Namespace": namespace,
                                "MetricName": metric,
                                "Dimensions": dimensions,
                            },
                            "Period": 0,  # set per read: the window's length
                            "Stat": stat,
                        },
                        "ReturnData": True,
                    }
                )
        if len(self._specs) > MAX_QUERIES:
            raise AdaptiveConfigError(
                f"{len(priorities)} priorities need more than {MAX_QUERIES} metric queries"
            )

    def read(self, start: int, end: int) -> Signal:
        period = end - start
        queries = [{**spec, "MetricStat": {**spec["MetricStat"], "Period": period}} for spec in self._specs]
        totals: dict[str, float] = {}
        request: dict[str, Any] = {
            "MetricDataQueries": queries,
            "StartTime": datetime.fromtimestamp(start, UTC),
            "EndTime": datetime.fromtimestamp(end, UTC),
        }
        while True:
            answer = self._client.get_metric_data(**request)
            for result in answer.get("MetricDataResults", []):
                totals[result["Id"]] = totals.get(result["Id"], 0.0) + sum(result.get("Values", []))
            token = answer.get("NextToken")
            if not token:
                break
            request["NextToken"] = token
        sums: dict[tuple[str, str], float] = {}
        for query_id, metric, stat in self._queries:
            sums[(metric, stat)] = sums.get((metric, stat), 0.0) + totals.get(query_id, 0.0)
        return signal_from(
            calls=sums[(contract.METRIC_API_CALLS, "Sum")],
            throttled=sums[(contract.METRIC_API_THROTTLED, "Sum")],
            errors=sums[(contract.METRIC_API_ERRORS, "Sum")],
            latency_sum_ms=sums[(contract.METRIC_API_LATENCY, "Sum")],
            latency_count=sums[(contract.METRIC_API_LATENCY, "SampleCount")],
            seconds=period,
        )


def signal_from(
    *,
    calls: float,
    throttled: float,
    errors: float,
    latency_sum_ms: float,
    latency_count: float,
    seconds: float,
) -> Signal:
    """A Signal from metric sums. An invocation's EMF line carries its call and its outcome
    together, so they land in the same window; the clamps only guard against a line split by
    CloudWatch at a period boundary."""
    n = round(calls)
    t = min(round(throttled), n)
    e = min(round(errors), n - t)
    return Signal(
        calls=n,
        throttled=t,
        errors=e,
        latency_ms=latency_sum_ms / latency_count if latency_count else 0.0,
        # Busy time of answered calls / window: the concurrency the API actually served.
        in_flight=latency_sum_ms / 1000 / seconds,
    )


class LambdaControls:
    """The worker's reserved concurrency and its mappings' MaximumConcurrency and state."""

    def __init__(self, client: Any, worker: str, mappings: tuple[str, ...]) -> None:  # a boto3 Lambda client
        self._client = client
        self._worker = worker
        self._mappings = mappings

    def deployed(self) -> Deployed:
        reserved = self._client.get_function_concurrency(FunctionName=self._worker).get(
            "ReservedConcurrentExecutions"
        )
        mappings = {}
        for uuid in self._mappings:
            esm = self._client.get_event_source_mapping(UUID=uuid)
            # Enabling/Disabling count as where they are heading. Updating/Creating count as
            # enabled: a disabled mapping read then is disabled again by the next step.
            enabled = esm.get("State") not in ("Disabled", "Disabling")
            mappings[uuid] = (enabled, (esm.get("ScalingConfig") or {}).get("MaximumConcurrency"))
        return Deployed(None if reserved is None else int(reserved), mappings)

    def apply(self, limit: int, paused: bool, now: Deployed) -> list[str]:
        changes: list[str] = []
        pollers = max(contract.ESM_MIN_MAXIMUM_CONCURRENCY, limit)
        updates = {}
        for uuid, (enabled, maximum) in now.mappings.items():
            update: dict[str, Any] = {}
            if enabled == paused:
                update["Enabled"] = not paused
            if maximum != pollers:
                update["ScalingConfig"] = {"MaximumConcurrency": pollers}
            if update:
                updates[uuid] = update
        down = paused or now.reserved is None or limit < now.reserved
        if not down:
            self._reserve(limit, now, changes)
        for uuid, update in updates.items():
            self._call(
                changes,
                f"mapping {uuid} {update}",
                self._client.update_event_source_mapping,
                UUID=uuid,
                **update,
            )
        if down:
            self._reserve(limit, now, changes)
        return changes

    def _reserve(self, limit: int, now: Deployed, changes: list[str]) -> None:
        if now.reserved != limit:
            self._call(
                changes,
                f"reserved {now.reserved} -> {limit}",
                self._client.put_function_concurrency,
                FunctionName=self._worker,
                ReservedConcurrentExecutions=limit,
            )

    @staticmethod
    def _call(changes: list[str], what: str, call: Callable[..., Any], **kwargs: Any) -> None:
        """One control-plane call; a failure is noted and the others still run (a mapping left
        enabled while pausing is worse than one call failing twice)."""
        try:
            call(**kwargs)
        except ClientError as exc:
            # e.g. ResourceInUseException: still applying an earlier update; the next step retries.
            changes.append(f"{what} failed: {exc.response.get('Error', {}).get('Code', 'unknown')}")
            logger.warning("control call failed", extra={"what": what, "error": str(exc)})
            return
        changes.append(what)


class DynamoStore:
    """The state item `controller#<worker>` in the idempotency table, versioned."""

    def __init__(self, client: Any, table: str, worker: str) -> None:  # a boto3 DynamoDB client
        self._client = client
        self._table = table
        self._key = {contract.IDEMPOTENCY_KEY_ATTRIBUTE: {"S": contract.CONTROLLER_STATE_PREFIX + worker}}

    def load(self) -> Stored | None:
        item = self._client.get_item(TableName=self._table, Key=self._key, ConsistentRead=True).get("Item")
        if item is None:
            return None
        version = int(item["version"]["N"])
        try:
            body = json.loads(item["state"]["S"])
            breaker = body.get("breaker", {})
            return Stored(
                limit=int(body["limit"]),
                controller=_known(ControllerState, body.get("controller", {})),
                breaker=BreakerState(BreakerMode(breaker.get("mode", "closed")), breaker.get("opened_at")),
                window_end=int(body.get("window_end", 0)),
                version=version,
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise StateUnreadable(version, f"{self._key}: {exc!r}") from exc

    def save(self, state: Stored) -> None:
        body = {
            "limit": state.limit,
            "controller": asdict(state.controller),
            "breaker": {"mode": str(state.breaker.mode), "opened_at": state.breaker.opened_at},
            "window_end": state.window_end,
        }
        item = self._key | {"state": {"S": json.dumps(body)}, "version": {"N": str(state.version)}}
        condition: dict[str, Any] = (
            {"ConditionExpression": f"attribute_not_exists({contract.IDEMPOTENCY_KEY_ATTRIBUTE})"}
            if state.version == 1
            else {
                "ConditionExpression": "version = :read",
                "ExpressionAttributeValues": {":read": {"N": str(state.version - 1)}},
            }
        )
        try:
            self._client.put_item(TableName=self._table, Item=item, **condition)
        except self._client.exceptions.ConditionalCheckFailedException as exc:
            raise StateConflict(f"state version {state.version - 1} was replaced") from exc


def _known(kind: type[K], raw: dict[str, Any]) -> K:
    """A dataclass from stored fields, ignoring ones a newer or older release wrote."""
    names = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in raw.items() if k in names})


@lru_cache(maxsize=1)
def _deps() -> AdaptiveDeps:
    """Built on the first invocation, not at import, and reused while the sandbox lives."""
    import boto3  # noqa: PLC0415 - deferred so importing this module stays free of AWS set-up
    from botocore.config import Config  # noqa: PLC0415 - same reason

    config = AdaptiveConfig.from_env(os.environ)
    client_config = Config(retries={"mode": "standard", "max_attempts": 5})
    return AdaptiveDeps(
        config=config,
        signals=CloudWatchSignals(
            boto3.client("cloudwatch", config=client_config), config.worker, config.priorities
        ),
        controls=LambdaControls(boto3.client("lambda", config=client_config), config.worker, config.mappings),
        store=DynamoStore(boto3.client("dynamodb", config=client_config), config.table, config.worker),
    )


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:  # noqa: ARG001 - a schedule's event carries nothing the controller needs
    steps = run(_deps(), context.get_remaining_time_in_millis)
    return {"steps": len(steps), "limit": steps[-1].limit if steps else None}
