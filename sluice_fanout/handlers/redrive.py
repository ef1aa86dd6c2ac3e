"""Re-running a batch's failed items (`sluice batch redrive`): which items, under what name, and
what the command says before and after. Pure: plain values in and out.

A redrive is a new execution of the same state machine whose batch is the failed items only, in
their first batch's order, with a link back (`redrive_of` in its input: the first execution and
where the list of the items' first indexes is). Items that succeeded are not in it, so the API
never sees them again; the new execution's items have new idempotency keys (its ARN, their new
index), so a failure stored for the first run is not replayed: each redriven item is called.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

MAX_NAME_CHARS = 80
"""Step Functions' limit on an execution's name."""
REDRIVE_SUFFIX = "-redrive-"
MAX_REDRIVES = 99
"""Redrives of one batch the command will name; past it, start a new batch."""
INDEXES_SHOWN = 20
REDRIVE_PREFIX = "redrive/"
"""Where a redrive's batch file and index list go in the results bucket."""


@dataclass(frozen=True)
class Failed:
    index: int
    error: str
    cause: str


@dataclass(frozen=True)
class Plan:
    execution: str
    items: tuple[Failed, ...]
    """The failed items to run again, in batch order."""
    by_error: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)
    """Failed items that `--error` left out, by error."""


def plan(execution: str, failures: Iterable[Failed], error: str | None) -> Plan:
    chosen: list[Failed] = []
    left_out: Counter[str] = Counter()
    for failed in failures:
        if error is None or failed.error == error:
            chosen.append(failed)
        else:
            left_out[failed.error] += 1
    chosen.sort(key=lambda f: f.index)
    return Plan(
        execution,
        tuple(chosen),
        dict(sorted(Counter(f.error for f in chosen).items())),
        dict(sorted(left_out.items())),
    )


def redrive_name(name: str, n: int) -> str:
    """The n-th redrive's execution name: the first's name (shortened to fit) and the suffix.
    A redrive of a redrive counts on from its first batch's name, not nests."""
    base, sep, number = name.rpartition(REDRIVE_SUFFIX)
    if sep and number.isdigit():
        name = base
    suffix = f"{REDRIVE_SUFFIX}{n}"
    return name[: MAX_NAME_CHARS - len(suffix)] + suffix


def describe(plan_: Plan, *, new_name: str, started: str | None) -> list[str]:
    """What the command prints: the plan, then what it did (`started`: the new execution's ARN,
    None for --dry-run)."""
    name = plan_.execution.rsplit(":", 1)[-1]
    if not plan_.items:
        left = f" ({_counts(plan_.left_out)} left out by --error)" if plan_.left_out else ""
        return [f"batch {name}: no failed items to redrive{left}; nothing started."]
    shown = ", ".join(str(f.index) for f in plan_.items[:INDEXES_SHOWN])
    more = f" and {len(plan_.items) - INDEXES_SHOWN:,} more" if len(plan_.items) > INDEXES_SHOWN else ""
    lines = [
        f"batch {name}: {len(plan_.items):,} failed item{'s' if len(plan_.items) != 1 else ''} to run again "
        f"({_counts(plan_.by_error)}): indexes {shown}{more}",
    ]
    if plan_.left_out:
        lines.append(f"left out by --error: {_counts(plan_.left_out)}")
    lines.append(
        f"as a new execution {new_name} of the same state machine, its input linking back to {name}; "
        "items that succeeded are not in it and are not called again"
    )
    if started is None:
        lines.append("--dry-run: nothing started")
    else:
        lines.append(f"started {started}")
        lines.append(f"follow it with: sluice batch status {started} --stack-outputs FILE")
    return lines


def _counts(by_error: dict[str, int]) -> str:
    return ", ".join(f"{error} {count:,}" for error, count in by_error.items())
