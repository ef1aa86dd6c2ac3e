"""The adaptive controller's Lambda: it moves the worker's concurrency limit and trips its breaker."""

from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError

from sluice_fanout.handlers import contract
from sluice_fanout.handlers.adapters import (
    CloudWatchSignals,
    DynamoStore,
    LambdaControls,
    LimitsStore,
    LimitsUnreadableError,
)
from sluice_fanout.handlers.controller import (
    BreakerDecision,
    BreakerSettings,
    BreakerState,
    ControllerSettings,
    ControllerState,
    Decision,
    Deployed,
    Signal,
    StateConflict,
    StateUnreadable,
    Stored,
    next_breaker,
    next_limit,
)
from sluice_fanout.handlers.runtime_limits import CONCURRENCY

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger(service="sluice-controller")
S = TypeVar("S", ControllerSettings, BreakerSettings)

STOP_MARGIN_S = 5.0  # a step never starts this close to the invocation's timeout


class AdaptiveConfigError(Exception):
    """The controller's environment is wrong; the deploy needs fixing."""


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


class Signals(Protocol):
    def read(self, start: int, end: int) -> Signal: ...


class Controls(Protocol):
    def deployed(self) -> Deployed: ...

    def apply(self, limit: int, paused: bool | None, now: Deployed) -> list[str]:
        """Make the worker run with `limit`, paused or not (None: each mapping stays as it is);
        returns the changes made.

        The worker's reserved concurrency is the limit (the hard cap in both dispatch modes);
        every mapping's MaximumConcurrency is max(2, limit) (AWS's minimum is 2) so its pollers do
        not outnumber the slots by far; the mappings are disabled while paused (breaker OPEN).
        Going down, the mappings change first and reserved concurrency last, going up the other
        way round, so the pollers never briefly exceed the old limit's room. Compares with `now`,
        what is deployed (not what was last written), so a failed call, or a change made by
        hand, is mended by the next step; an AWS error does not stop the other calls.

        Pausing disables the mappings, not reserved concurrency 0: a function at 0 throttles every
        poll, and throttled receives raise receive counts towards the DLQ. Disabled mappings leave
        the messages in their queues; their task tokens keep waiting within the callback timeout,
        which validation keeps longer than the breaker's pause.
        """


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
    ceiling: Callable[[], int | None] = lambda: None
    """The operator's run-time concurrency (`sluice limits set concurrency=N`): the highest limit
    now, in place of the deployed `concurrency`; None: the deployed one."""


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
    """Decide on the window ending at `window_end` and apply it; None if already decided.

    Reads the window's API metrics (ApiCalls, ApiThrottled, ApiErrors, ApiLatency over every
    priority), called at window_end + signal_delay once the window's EMF lines have reached
    CloudWatch; decides with `next_limit` and `next_breaker`; stores the new state with a
    conditional write on its version (a second controller that read the same state loses the
    write with StateConflict and stops, so only one acts); then applies it (`Controls.apply`).
    """
    cfg = deps.config
    rule = cfg.limit
    if (ceiling := deps.ceiling()) is not None:
        # The operator's limit wins as the ceiling; below it the controller moves as usual.
        rule = replace(rule, max_limit=ceiling, min_limit=min(rule.min_limit, ceiling))
    version = 0
    try:
        stored = deps.store.load()
    except StateUnreadable as exc:
        logger.error("state unreadable; starting afresh", extra={"error": str(exc)})
        stored, version = None, exc.version
    deployed = deps.controls.deployed()
    if stored is None:
        # First run: start from what is deployed (the stack's `concurrency`, the max).
        start = deployed.reserved if deployed.reserved is not None else rule.max_limit
        stored = Stored(rule.clamp(start), ControllerState(), BreakerState(), 0, version)
    if window_end <= stored.window_end:
        return None
    signal = deps.signals.read(window_end - cfg.interval_seconds, window_end)
    decision = next_limit(rule.clamp(stored.limit), signal, stored.controller, rule)
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
    """Step at every interval boundary for run_seconds (or until the invocation must end).

    Scheduled once a minute (EventBridge's shortest rate), each invocation runs for
    CONTROLLER_RUN_SECONDS, then the next one takes over. An AWS error does not end the run: it
    is logged and the next window is decided as usual.
    """
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


@lru_cache(maxsize=1)
def _deps() -> AdaptiveDeps:
    """Built on the first invocation, not at import, and reused while the sandbox lives."""
    import boto3  # noqa: PLC0415 - deferred so importing this module stays free of AWS set-up
    from botocore.config import Config  # noqa: PLC0415 - same reason

    config = AdaptiveConfig.from_env(os.environ)
    client_config = Config(retries={"mode": "standard", "max_attempts": 5})
    ddb = boto3.client("dynamodb", config=client_config)
    return AdaptiveDeps(
        config=config,
        signals=CloudWatchSignals(
            boto3.client("cloudwatch", config=client_config), config.worker, config.priorities
        ),
        controls=LambdaControls(
            boto3.client("lambda", config=client_config), config.worker, config.mappings, logger
        ),
        store=DynamoStore(ddb, config.table, config.worker),
        ceiling=functools.partial(operator_ceiling, LimitsStore(ddb, config.table, config.worker)),
    )


def operator_ceiling(store: LimitsStore) -> int | None:
    """The operator's concurrency from the run-time limits item; None if there is none or it
    cannot be read (the deployed ceiling holds: the controller never goes above it anyway)."""
    try:
        stored = store.load()
    except (ClientError, LimitsUnreadableError) as exc:
        logger.warning(
            "run-time limits unreadable; the deployed concurrency is the ceiling", extra={"error": str(exc)}
        )
        return None
    value = None if stored is None else stored.overrides.values.get(CONCURRENCY)
    return None if value is None else int(value)


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:  # noqa: ARG001 - a schedule's event carries nothing the controller needs
    steps = run(_deps(), context.get_remaining_time_in_millis)
    return {"steps": len(steps), "limit": steps[-1].limit if steps else None}
