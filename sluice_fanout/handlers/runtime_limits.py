"""Limits an operator changes at run time, without a deploy (`sluice limits`, docs/limits.md).

The stored overrides are a flat object of names, camelCase as in the stack's config:
`concurrency`, `callsPerSecond`, `keys.concurrency`, `keys.concurrencyPerKey.<key>` and
`keys.weights.<key>`. A name that is absent means "as deployed"; null means "no limit" (where
the deployed setting may also have none). Pure: no boto3, no clock.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sluice_fanout.handlers import limits
from sluice_fanout.handlers.fair import KeyRuleError, KeysSettings
from sluice_fanout.handlers.rate import longest_rate_wait, rate_wait_allowed

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

CONCURRENCY = "concurrency"
CALLS_PER_SECOND = "callsPerSecond"
KEYS_CONCURRENCY = "keys.concurrency"
KEYS_CAP_PREFIX = "keys.concurrencyPerKey."
KEYS_WEIGHT_PREFIX = "keys.weights."
NAMES_HELP = (
    f"{CONCURRENCY}, {CALLS_PER_SECOND}, {KEYS_CONCURRENCY}, {KEYS_CAP_PREFIX}<key> "
    f"or {KEYS_WEIGHT_PREFIX}<key>"
)
NO_LIMIT = "none"
"""The value text that removes a limit (stored as null)."""
MAX_CONCURRENCY = limits.ESM_MAX_MAXIMUM_CONCURRENCY
"""A mapping's MaximumConcurrency goes no higher, so neither does the worker's useful limit."""


class LimitsError(ValueError):
    """A limit name or value that cannot be stored; the message names it and the fix."""


@dataclass(frozen=True)
class Deployed:
    """What the stack deployed, the base the overrides change."""

    concurrency: int | None
    """None where it is not known (a worker's own view: its environment does not carry it)."""
    calls_per_second: float | None
    keys: KeysSettings | None
    priorities: Sequence[str]
    timeout_seconds: int | None = None
    """The worker's timeout: a calls-per-second limit must let `concurrency` calls wait their
    turn within half of it (the deploy checks the same); None: not checked."""


@dataclass(frozen=True)
class Effective:
    """The limits the worker obeys now: the deployed ones with the overrides applied."""

    concurrency: int | None
    calls_per_second: float | None
    keys: KeysSettings | None


@dataclass(frozen=True)
class Overrides:
    values: Mapping[str, Any] = field(default_factory=dict)
    """Name -> value as stored (a number, or None for no limit)."""

    def to_json(self) -> str:
        return json.dumps(dict(self.values), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Overrides:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise LimitsError(f"stored limits must be a JSON object, got {text!r}")
        return cls(raw)

    def setting(self, assignments: Sequence[tuple[str, str]], deployed: Deployed) -> Overrides:
        """These overrides with `name=value` assignments applied, each checked; the result is
        checked as a whole against the deployment (a refusal names the value and the fix)."""
        values = dict(self.values)
        for name, text in assignments:
            values[name] = _value(name, text)
        changed = Overrides(values)
        changed.apply(deployed)
        return changed

    def unsetting(self, names: Sequence[str], deployed: Deployed) -> Overrides:
        values = dict(self.values)
        for name in names:
            _check_name(name)
            values.pop(name, None)
        changed = Overrides(values)
        changed.apply(deployed)
        return changed

    def apply(self, deployed: Deployed) -> Effective:
        """The effective limits; raises LimitsError if they do not go together."""
        concurrency = self.values.get(CONCURRENCY, deployed.concurrency)
        # A stored null is "no limit", not "as deployed": .get's default applies to absence only.
        rate = self.values.get(CALLS_PER_SECOND, deployed.calls_per_second)
        if rate is not None and concurrency is not None and deployed.timeout_seconds is not None:
            _check_rate_fits(float(rate), int(concurrency), deployed.timeout_seconds)
        keys = deployed.keys
        key_values = {n: v for n, v in self.values.items() if n.startswith("keys.")}
        if key_values:
            if keys is None:
                raise LimitsError(
                    f"{sorted(key_values)}: this stack has no keys setting; set sluice:keys and "
                    "`pulumi up` first (docs/keys.md)"
                )
            raw = json.loads(keys.to_json())
            for name, value in key_values.items():
                if name == KEYS_CONCURRENCY:
                    raw["concurrency"] = value
                elif name.startswith(KEYS_CAP_PREFIX):
                    # None stays: this key has no cap, whatever the default cap is.
                    raw["concurrency_per_key"][name.removeprefix(KEYS_CAP_PREFIX)] = value
                else:
                    raw["weights"][name.removeprefix(KEYS_WEIGHT_PREFIX)] = value
            try:
                keys = KeysSettings.parse(raw, deployed.priorities, "keys")
            except KeyRuleError as exc:
                raise LimitsError(str(exc)) from None
        return Effective(
            None if concurrency is None else int(concurrency), None if rate is None else float(rate), keys
        )


@dataclass(frozen=True)
class StoredLimits:
    """The overrides as stored, with who changed them last and when."""

    overrides: Overrides
    version: int
    """Bumped by every change; a change is written only over the version it read."""
    updated_at: float
    updated_by: str


def _check_name(name: str) -> None:
    if name in (CONCURRENCY, CALLS_PER_SECOND, KEYS_CONCURRENCY):
        return
    for prefix in (KEYS_CAP_PREFIX, KEYS_WEIGHT_PREFIX):
        if name.startswith(prefix):
            if not name.removeprefix(prefix):
                raise LimitsError(f"{name!r} names no key; write {prefix}<key>, e.g. {prefix}acme")
            return
    raise LimitsError(f"unknown limit {name!r}; the limits are {NAMES_HELP}")


def _value(name: str, text: str) -> Any:
    """The stored value of `name=text`: a number, or None for `none` where a limit may be lifted."""
    _check_name(name)
    if text.strip().lower() == NO_LIMIT:
        if name == CONCURRENCY or name.startswith(KEYS_WEIGHT_PREFIX):
            what = "a concurrency" if name == CONCURRENCY else "a weight"
            raise LimitsError(f"{name}={text}: {what} cannot be lifted; give a number, or unset it")
        return None
    try:
        number = float(text)
    except ValueError:
        raise LimitsError(f"{name}={text!r} is not a number; write e.g. {name}=4, or unset {name}") from None
    if not math.isfinite(number):
        raise LimitsError(f"{name}={text!r} is not a finite number")
    if name == CALLS_PER_SECOND:
        if not 0 < number <= limits.MAX_CALLS_PER_SECOND:
            raise LimitsError(
                f"{name}={text} must be above 0 and at most {limits.MAX_CALLS_PER_SECOND:g} "
                f"(or {NO_LIMIT} for no rate limit)"
            )
        return number
    if name.startswith(KEYS_WEIGHT_PREFIX):
        return number  # KeysSettings.parse checks the range with its own message
    if not number.is_integer():
        raise LimitsError(f"{name}={text} must be a whole number of calls at once")
    if name == CONCURRENCY and not 1 <= number <= MAX_CONCURRENCY:
        raise LimitsError(
            f"{name}={text} must be 1..{MAX_CONCURRENCY}; to stop the worker, use the breaker "
            "or disable its event source mapping"
        )
    return int(number)


def _check_rate_fits(rate: float, concurrency: int, timeout_seconds: int) -> None:
    wait = longest_rate_wait(concurrency, rate)
    if wait > rate_wait_allowed(timeout_seconds):
        raise LimitsError(
            f"callsPerSecond {rate:g} is too low for concurrency {concurrency}: a call could wait "
            f"{wait:.1f}s for its slot, more than half the worker timeout ({timeout_seconds}s) less "
            "1s; lower the concurrency with it, or raise callsPerSecond"
        )
