"""Fair share between keys within one priority: which key's item goes to the API next.

Pure: plain values in, plain values out; no boto3 or clock (the caller passes the time). The
rule is start-time fair queueing (Goyal, Vin and Cheng, 1996) with every call costing one:

- each key has a ledger: `finish`, the virtual time its next item may start at the earliest,
  and a lease (expiry time) per item it has at the API;
- the priority has one virtual clock, the start time of the item dispatched last;
- the next item comes from the key with the smallest `finish` among keys with a waiting item
  and room under their cap; it starts at max(clock, finish), the key's `finish` moves 1/weight
  past that, and the clock moves to the start.

A key that was idle comes back at the clock, not at its old `finish`: idleness does not bank
calls. Over any stretch in which two keys i and j both have waiting items and room, the calls
they get differ from their weights' proportion by at most one call each:
|calls_i / w_i - calls_j / w_j| <= 1 / w_i + 1 / w_j, whatever either key's backlog
(tests/property/test_fair_properties.py checks it on a model that runs these rules). Picking
by `finish` alone, not max(clock, finish), gives the same key: the clock is common to all.

Why leases, not a counter of calls in flight: a worker that dies mid-call never decrements a
counter, and the key would lose a slot for good; a lease runs out on its own.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

MAX_WEIGHT = 1000.0
"""Weights are relative; a ratio over 1000:1 between two keys is a cap, not a share."""


class KeyRuleError(ValueError):
    """A key's weight or cap Sluice cannot work with."""


@dataclass(frozen=True)
class KeyRule:
    """What the stack says about one key (or the default for keys it does not name)."""

    weight: float = 1.0
    """Its share of the API's calls against other keys of the same priority with waiting items."""
    cap: int | None = None
    """At most this many of its calls at the API at once; None: only the global limits."""
    ordered: bool = False
    """Its items reach the API one at a time, oldest first."""

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)):
            raise KeyRuleError(f"key weight must be a number, got {self.weight!r}; use e.g. 1 or 2.5")
        if not (math.isfinite(self.weight) and 0 < self.weight <= MAX_WEIGHT):
            raise KeyRuleError(
                f"key weight must be > 0 and <= {MAX_WEIGHT:g}, got {self.weight!r}; "
                "weights are relative, so give the smallest key 1"
            )
        if self.cap is not None and (
            isinstance(self.cap, bool) or not isinstance(self.cap, int) or self.cap < 1
        ):
            raise KeyRuleError(
                f"key concurrency cap must be a whole number >= 1, got {self.cap!r}; "
                "leave it out for no cap of its own"
            )

    @property
    def limit(self) -> int | None:
        """The calls it may have at the API at once: an ordered key has one."""
        return 1 if self.ordered else self.cap


@dataclass(frozen=True)
class Ledger:
    """One key's state within one priority: one small record per key, whatever its backlog."""

    finish: float = 0.0
    leases: tuple[float, ...] = ()
    """Expiry time of each call it has at the API (the worker's timeout from its start)."""

    def live(self, now: float) -> tuple[float, ...]:
        return tuple(expiry for expiry in self.leases if expiry > now)

    def has_room(self, rule: KeyRule, now: float) -> bool:
        return rule.limit is None or len(self.live(now)) < rule.limit


def pick(candidates: Iterable[tuple[str, Ledger, KeyRule]], now: float) -> str | None:
    """The key whose item goes next among keys with a waiting item, or None if all are at
    their cap. Ties go to the smaller key name, so every worker would pick the same."""
    best: tuple[float, str] | None = None
    for key, ledger, rule in candidates:
        if ledger.has_room(rule, now) and (best is None or (ledger.finish, key) < best):
            best = (ledger.finish, key)
    return None if best is None else best[1]


def dispatch(
    ledger: Ledger, rule: KeyRule, clock: float, now: float, lease_until: float
) -> tuple[Ledger, float]:
    """The key's ledger and the priority's clock after one of its items goes to the API.

    Expired leases are dropped here, so a ledger holds at most its cap of them."""
    if lease_until <= now:
        raise KeyRuleError(f"a lease must end after now ({now!r}), got {lease_until!r}")
    start = max(clock, ledger.finish)
    return Ledger(finish=start + 1 / rule.weight, leases=(*ledger.live(now), lease_until)), start


def release(ledger: Ledger, lease_until: float) -> Ledger:
    """The ledger after the call holding `lease_until` ended (worked, retried or refused).
    A lease already gone (it expired and was dropped) is no error: the call outlived it."""
    leases = list(ledger.leases)
    if lease_until in leases:
        leases.remove(lease_until)
    return replace(ledger, leases=tuple(leases))


@dataclass(frozen=True)
class Backlog:
    """The keys of one priority with items waiting, the largest few by name: CloudWatch bills
    every distinct dimension value, so metrics by key name only these (docs/keys.md)."""

    keys: int
    """Keys with at least one item waiting."""
    top: tuple[tuple[str, int], ...]
    """(key, items waiting), most first, ties by name: at most the `top` asked for."""
    rest: int
    """Items waiting of the keys not named."""


def backlog(waiting: Iterable[tuple[str, int]], top: int) -> Backlog:
    """The `top` keys by items waiting, and the count and items of the rest."""
    counts = [(key, n) for key, n in waiting if n > 0]
    named = heapq.nsmallest(top, counts, key=lambda kn: (-kn[1], kn[0]))
    return Backlog(len(counts), tuple(named), sum(n for _, n in counts) - sum(n for _, n in named))


KEY_FIELD_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
"""The key field is a JSONPath step in the state machine (`$.item.<field>`): a plain name."""


@dataclass(frozen=True)
class KeysSettings:
    """The stack's `keys` setting (docs/keys.md), as the component validates it and the worker
    reads it back from its environment (`to_json` / `from_json`)."""

    field: str = "key"
    weights: Mapping[str, float] = dataclass_field(default_factory=dict)
    concurrency: int | None = None
    """Default cap per key; None: only the global limits."""
    concurrency_per_key: Mapping[str, int] = dataclass_field(default_factory=dict)
    ordered_priorities: tuple[str, ...] = ()

    def rule(self, key: str, priority: str) -> KeyRule:
        return KeyRule(
            weight=self.weights.get(key, 1.0),
            cap=self.concurrency_per_key.get(key, self.concurrency),
            ordered=priority in self.ordered_priorities,
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "field": self.field,
                "weights": dict(self.weights),
                "concurrency": self.concurrency,
                "concurrency_per_key": dict(self.concurrency_per_key),
                "ordered_priorities": list(self.ordered_priorities),
            },
            sort_keys=True,
        )

    @classmethod
    def parse(cls, raw: Any, priorities: Sequence[str], where: str = "keys") -> KeysSettings:
        """From the component arg (snake_case keys) or the worker's environment; every refusal
        names the value and what to write instead."""
        if not isinstance(raw, Mapping):
            raise KeyRuleError(f"{where} must be an object such as {{'field': 'tenant'}}, got {raw!r}")
        known = {"field", "weights", "concurrency", "concurrency_per_key", "ordered_priorities"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise KeyRuleError(f"{where} has unknown fields {unknown}; it takes {sorted(known)}")
        name = raw.get("field", "key")
        if not isinstance(name, str) or not KEY_FIELD_PATTERN.fullmatch(name):
            raise KeyRuleError(
                f"{where}.field must be a plain field name (letters, digits, _), got {name!r}; "
                "it names the item field that holds the key, e.g. 'tenant'"
            )
        weights = raw.get("weights") or {}
        caps = raw.get("concurrency_per_key") or {}
        for label, table in (("weights", weights), ("concurrency_per_key", caps)):
            if not isinstance(table, Mapping) or not all(isinstance(k, str) and k for k in table):
                raise KeyRuleError(f"{where}.{label} must map key names to values, got {table!r}")
        # Pulumi config set --path stores numbers as text: "2" is read as 2.
        weights = {k: _number(v) for k, v in weights.items()} if isinstance(weights, Mapping) else weights
        caps = {k: _number(v) for k, v in caps.items()} if isinstance(caps, Mapping) else caps
        default_cap = _number(raw.get("concurrency"))
        checks = [(f"{where}.weights[{k!r}]", {"weight": v}) for k, v in weights.items()]
        checks += [(f"{where}.concurrency_per_key[{k!r}]", {"cap": v}) for k, v in caps.items()]
        checks += [(f"{where}.concurrency", {"cap": default_cap})] if default_cap is not None else []
        for label, values in checks:
            try:
                KeyRule(**values)
            except KeyRuleError as exc:
                raise KeyRuleError(f"{label}: {exc}") from None
        ordered = raw.get("ordered_priorities") or []
        if not isinstance(ordered, (list, tuple)) or not all(p in priorities for p in ordered):
            raise KeyRuleError(
                f"{where}.ordered_priorities must list some of the priorities {list(priorities)}, "
                f"got {ordered!r}"
            )
        return cls(
            field=name,
            weights={k: float(v) for k, v in weights.items()},
            concurrency=default_cap,
            concurrency_per_key=dict(caps),
            ordered_priorities=tuple(ordered),
        )


def _number(value: Any) -> Any:
    """A number written as text (as Pulumi's config stores it) as that number; anything else
    as given, for the rule's check to refuse by name."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in value else number
    return value
