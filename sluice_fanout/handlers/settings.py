"""Each function's runtime settings, written once: type, default, range, environment variable, doc.

Standard library only: both the components and the handlers import this module.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Self

from sluice_fanout.handlers import contract, limits

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

SPEC = "sluice_setting"


@dataclass(frozen=True)
class Spec:
    """How one setting travels and what it may be."""

    env: str
    kind: type
    doc: str
    low: float | None = None
    high: float | None = None
    above: bool = False
    """The value must be greater than `low`, not equal to it."""
    choices: tuple[str, ...] = ()
    arg: str | None = None
    """The component arg (and so the `sluice:*` key) a user sets it with; None: set by Sluice."""


def setting(
    default: Any,
    env: str,
    doc: str,
    *,
    kind: type | None = None,
    low: float | None = None,
    high: float | None = None,
    above: bool = False,
    choices: tuple[str, ...] = (),
    arg: str | None = None,
) -> Any:
    """A dataclass field carrying its `Spec`."""
    spec = Spec(
        env=env,
        kind=kind or type(default),
        doc=doc,
        low=low,
        high=high,
        above=above,
        choices=choices,
        arg=arg,
    )
    return field(default=default, metadata={SPEC: spec})


class SettingsError(ValueError):
    """A function's environment is wrong: the deploy, not the message, needs fixing."""


def config_key(arg: str) -> str:
    """The stack config key that sets a component arg: `max_attempts` -> `sluice:maxAttempts`."""
    head, *rest = arg.split("_")
    return "sluice:" + head + "".join(part.title() for part in rest)


class EnvSettings:
    """Settings that travel as environment variables, one per field (see `setting`).

    The components fill them from their args and write them to the environment (`to_env`); the
    handlers read them back (`from_env`).
    """

    @classmethod
    def specs(cls) -> dict[str, Spec]:
        return {f.name: f.metadata[SPEC] for f in fields(cls) if SPEC in f.metadata}  # type: ignore[arg-type]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """Every setting with a value, as the handler reads it back."""
        env = {}
        for name, spec in self.specs().items():
            value = getattr(self, name)
            if value is None or value == "":
                continue
            env[spec.env] = (
                repr(value) if spec.kind is float else str(value).lower() if spec.kind is bool else str(value)
            )
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str], error: type[Exception] = SettingsError) -> Self:
        """The settings in `env`, defaults for those unset; `error` is raised naming the variable."""
        values = {}
        for name, spec in cls.specs().items():
            raw = env.get(spec.env)
            if raw is None or raw == "":
                continue
            values[name] = parse(spec, raw, error)
        return cls(**values)

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.specs()}


def parse(spec: Spec, raw: str, error: type[Exception] = SettingsError) -> Any:
    """One setting's text as its value, checked against its range; `error` names the variable."""
    where = f"{spec.env}" + (f" (set {config_key(spec.arg)})" if spec.arg else "")
    if spec.kind is bool:
        if raw not in ("true", "false"):
            raise error(f"{where} must be true or false, got {raw!r}")
        return raw == "true"
    if spec.kind is str:
        if spec.choices and raw not in spec.choices:
            raise error(f"{where} must be one of {', '.join(spec.choices)}, got {raw!r}")
        return raw
    try:
        value = spec.kind(raw)
    except ValueError as exc:
        raise error(
            f"{where} must be a {'whole number' if spec.kind is int else 'number'}, got {raw!r}"
        ) from exc
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"{where} must be a finite number, got {raw!r}")
    if not within(spec, value):
        raise error(f"{where} must be {bounds(spec)}, got {raw!r}")
    return value


def within(spec: Spec, value: float) -> bool:
    if spec.low is not None and (value <= spec.low if spec.above else value < spec.low):
        return False
    return spec.high is None or value <= spec.high


def bounds(spec: Spec) -> str:
    """The range as the docs and the errors say it."""
    low, high = _plain(spec.low), _plain(spec.high)
    if spec.high is None:
        return "any number" if spec.low is None else f"{'>' if spec.above else '>='} {low}"
    if spec.low is None:
        return f"at most {high}"
    return f"> {low} and at most {high}" if spec.above else f"between {low} and {high}"


def _plain(number: float | None) -> str:
    return f"{int(number)}" if number is not None and float(number).is_integer() else f"{number}"


@dataclass(frozen=True, kw_only=True)
class WorkerSettings(EnvSettings):
    """The worker function's settings: what the component sets and the handler reads."""

    dispatch: str = setting(
        contract.DISPATCH_TICKET,
        contract.ENV_DISPATCH,
        # BENCHMARKS.md: ticket gives strict priority under a flood, no billed waste and no
        # overpull, for one more state transition per item.
        "How the worker honours priority: `ticket` (one mapping on the ticket queue; the worker "
        "pulls the highest waiting payload) or `yield` (one mapping per priority queue).",
        choices=contract.DISPATCH_MODES,
        arg="dispatch",
    )
    share_period: int = setting(
        10,
        contract.ENV_SHARE_PERIOD,
        "ticket only: one item in every share_period gives each lower priority first pick.",
        low=2,
        high=1_000,
        arg="share_period",
    )
    force_after_receives: int = setting(
        3,
        contract.ENV_FORCE_AFTER_RECEIVES,
        "yield only: from this receive on, a lower-priority message is worked anyway.",
        low=1,
        high=100,
        arg="force_after_receives",
    )
    max_attempts: int = setting(
        3,
        contract.ENV_MAX_ATTEMPTS,
        "Real attempts at an item before it fails.",
        low=1,
        high=100,
        arg="max_attempts",
    )
    yield_delay_seconds: int = setting(
        2,
        contract.ENV_YIELD_DELAY_SECONDS,
        "yield only: how long a yielded message stays invisible.",
        low=0,
        high=limits.SQS_MAX_VISIBILITY_SECONDS,
        arg="yield_delay_seconds",
    )
    retry_base_seconds: float = setting(
        2.0,
        contract.ENV_RETRY_BASE_SECONDS,
        "First backoff after a retryable error; doubles per receive.",
        low=0,
        high=limits.SQS_MAX_VISIBILITY_SECONDS,
        arg="retry_base_seconds",
    )
    retry_max_seconds: float = setting(
        300.0,
        contract.ENV_RETRY_MAX_SECONDS,
        "Backoff cap.",
        low=0,
        high=limits.SQS_MAX_VISIBILITY_SECONDS,
        arg="retry_max_seconds",
    )
    calls_per_second: float | None = setting(
        None,
        contract.ENV_CALLS_PER_SECOND,
        "The API's published rate, on top of the concurrency limit, shared by all invocations; "
        "none: no rate limit.",
        kind=float,
        low=0,
        above=True,
        high=limits.MAX_CALLS_PER_SECOND,
        arg="calls_per_second",
    )
    idempotency_ttl_seconds: int = setting(
        345_600,
        contract.ENV_IDEMPOTENCY_TTL_SECONDS,
        "How long an item's stored outcome is kept, to answer redeliveries without calling the "
        "API again: by default the queues' 4-day retention (a record must outlive every "
        "redelivery).",
        low=3_600,
        high=31_536_000,
        arg="idempotency_ttl_seconds",
    )
    throttle_hold_seconds: float | None = setting(
        None,
        contract.ENV_THROTTLE_HOLD_SECONDS,
        "Least seconds an invocation keeps its slot after a 429; the adaptive controller sets its "
        "reaction time. None: the Retry-After alone, at most a few seconds.",
        kind=float,
        low=0,
    )
    controlled: bool = setting(
        False,
        contract.ENV_CONTROLLED,
        "The adaptive controller moves the limit: an invocation that keeps its slot for more items "
        "asks it, between items, whether the slot is still granted.",
    )
    target: str = setting(
        contract.HTTP_TARGET,
        contract.ENV_TARGET,
        "The target the worker calls for each item, as `module.function`.",
    )


@dataclass(frozen=True, kw_only=True)
class HttpTargetSettings(EnvSettings):
    """The bundled HTTP target's settings (it runs inside the worker)."""

    url: str = setting("", contract.ENV_HTTP_URL, "The endpoint each item is POSTed to.")
    timeout_seconds: float = setting(
        10.0,
        contract.ENV_HTTP_TIMEOUT_SECONDS,
        "Per-call timeout.",
        low=0.1,
        high=900,
        arg="http_timeout_seconds",
    )
    auth_header: str = setting(
        "Authorization", contract.ENV_HTTP_AUTH_HEADER, "Header carrying the credential."
    )
    secret_arn: str = setting(
        "", contract.ENV_HTTP_SECRET_ARN, "Secrets Manager secret whose SecretString is the credential."
    )
    ssm_parameter: str = setting(
        "", contract.ENV_HTTP_SSM_PARAMETER, "SSM parameter (SecureString) whose value is the credential."
    )


DEFAULT_PRIORITIES: tuple[str, ...] = ("HIGH", "NORMAL", "BATCH")
"""Highest first."""

# Priority names become resource names, queue names and ASL state names.
PRIORITY_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]{0,19}$")


def invalid_priorities(priorities: Sequence[str]) -> str | None:
    """Return why `priorities` is unusable, or None when it is fine."""
    if isinstance(priorities, str):
        return "must be a list of names, not a single string"
    if not isinstance(priorities, list | tuple):
        return "must be a list of names"
    if not priorities:
        return "must name at least one priority"
    # fullmatch: `$` alone also matches before a trailing newline.
    bad = [p for p in priorities if not isinstance(p, str) or not PRIORITY_PATTERN.fullmatch(p)]
    if bad:
        return f"names must match {PRIORITY_PATTERN.pattern} (upper case), not {bad!r}"
    if len(set(priorities)) != len(priorities):
        return "names must be unique"
    return None
