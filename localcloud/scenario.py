"""Scenario files: what batches to push through the embedded stack, against what API."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from localcloud.legacy_api import ApiProfile

if TYPE_CHECKING:
    from pathlib import Path


MODES = ("yield", "ticket", "fifo")
FIFO_QUEUE = "FIFO"
SOURCE_INLINE, SOURCE_S3, SOURCE_AUTO = "inline", "s3", "auto"
SOURCES = (SOURCE_INLINE, SOURCE_S3, SOURCE_AUTO)


class ScenarioError(ValueError):
    """A scenario file is invalid; the message names the field and the value."""


@dataclass(frozen=True)
class Batch:
    start_s: float
    """Offset from the start of the run at which the batch's execution starts."""
    counts: dict[str, int]
    """Throttled items by priority."""
    direct: int = 0
    """Items without a priority: they take the direct path."""
    reject: dict[str, int] = field(default_factory=dict)
    """Of the throttled items, how many per priority the API rejects (400) on purpose."""
    items: tuple[dict[str, Any], ...] = ()
    """Items given one by one (after the counted ones), e.g. with per-item API faults
    (`fail_first`, `hang_first`, `throttle_first`, `result_bytes`; see localcloud/legacy_api.py)."""


@dataclass(frozen=True)
class Feed:
    """A closed-loop client: whenever fewer than `outstanding` of its items wait for their API
    call, it starts another execution of `batch_size` items, until `until_s`. It keeps the
    worker saturated at whatever the API's capacity is, with a bounded backlog (an open-loop
    flood would pile up executions in the embedded AWS while capacity is low)."""

    outstanding: int
    batch_size: int
    until_s: float
    priority: str = "BATCH"


@dataclass(frozen=True)
class Scenario:
    name: str
    batches: tuple[Batch, ...]
    api: ApiProfile = field(default_factory=ApiProfile)
    dispatch: str = "ticket"
    """`ticket` (the default) or `yield` (Sluice's dispatch modes), or `fifo`: one queue, no
    priority (the benchmark's baseline)."""
    stack_config: dict[str, Any] = field(default_factory=dict)
    """Extra `sluice:*` config for the deployed stack."""
    deadline_s: float = 110.0
    """The run gives up (and reports what is unfinished as lost) after this long."""
    completion_faults: dict[str, str] = field(default_factory=dict)
    """Item id -> fault of the embedded Step Functions when the worker completes that item's
    token: `throttle:N` (the first N SendTaskSuccess calls are throttled) or `hang` (the first
    one hangs past the worker's timeout, so the worker dies mid-item)."""
    malformed_payloads: int = 0
    """Junk messages put on each priority queue at the start (no token, not JSON)."""
    feed: Feed | None = None
    """Items fed in a closed loop besides the batches (benchmarks; not read from files)."""
    capacity_changes: tuple[tuple[float, int], ...] = ()
    """(offset s, limit): the simulated API's concurrency limit changes to `limit` at `offset`
    (capacity drops and recoveries); the profile's limit applies before the first."""
    source: str = SOURCE_AUTO
    """How each batch is started: `inline` (`{"items": [...]}`), `s3` (the items uploaded to the
    stack's results bucket as a JSON array, started with `{"source": {"bucket", "key"}}`), or
    `auto` (the default): inline when the input fits in Step Functions' 256 KiB, else S3."""

    @property
    def items_total(self) -> int:
        """Items of the batches (a feed's count depends on the run)."""
        return sum(sum(b.counts.values()) + b.direct + len(b.items) for b in self.batches)

    def scaled(self, factor: float) -> Scenario:
        """The same scenario with every count multiplied by `factor` (at least 1 where non-zero)."""

        def scale(n: int) -> int:
            return max(1, round(n * factor)) if n else 0

        batches = tuple(
            Batch(
                start_s=b.start_s,
                counts={p: scale(n) for p, n in b.counts.items()},
                direct=scale(b.direct),
                reject={p: min(scale(n), scale(b.counts.get(p, 0))) for p, n in b.reject.items()},
                items=b.items,
            )
            for b in self.batches
        )
        return replace(self, batches=batches)


DEMO = Scenario(
    name="demo",
    batches=(
        Batch(start_s=0.0, counts={"BATCH": 40, "NORMAL": 16}, direct=8, reject={"NORMAL": 2}),
        # Urgent work arriving behind the bulk backlog: it should overtake it.
        Batch(start_s=3.0, counts={"HIGH": 8}),
    ),
    api=ApiProfile(concurrency_limit=4, service_time_s=0.25),
)


def _number(data: dict[str, Any], key: str, default: float, where: str) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ScenarioError(f"{where}.{key} must be a number >= 0, got {value!r}")
    return float(value)


def load(path: Path) -> Scenario:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"cannot read scenario {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("batches"), list) or not data["batches"]:
        raise ScenarioError(f"{path}: needs a non-empty 'batches' list")
    batches = []
    for n, raw in enumerate(data["batches"]):
        where = f"batches[{n}]"
        counts = raw.get("counts", {})
        if not isinstance(counts, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()
        ):
            raise ScenarioError(f"{where}.counts must map priority to a count >= 0, got {counts!r}")
        items = raw.get("items", [])
        if not isinstance(items, list) or not all(isinstance(i, dict) and "id" in i for i in items):
            raise ScenarioError(f"{where}.items must be a list of objects with an 'id', got {items!r}")
        batches.append(
            Batch(
                start_s=_number(raw, "start_s", 0, where),
                counts=dict(counts),
                direct=int(_number(raw, "direct", 0, where)),
                reject=dict(raw.get("reject", {})),
                items=tuple(items),
            )
        )
    api_raw = data.get("api", {})
    try:
        api = ApiProfile(**api_raw)
    except TypeError as exc:
        raise ScenarioError(f"{path}: api has an unknown field: {exc}") from exc
    dispatch = data.get("dispatch", "ticket")
    if dispatch not in MODES:
        raise ScenarioError(f"{path}: dispatch must be one of {list(MODES)}, got {dispatch!r}")
    source = data.get("source", SOURCE_AUTO)
    if source not in SOURCES:
        raise ScenarioError(
            f"{path}: source must be one of {list(SOURCES)} (auto: inline up to 256 KiB of input, "
            f"else S3), got {source!r}"
        )
    return Scenario(
        name=str(data.get("name", path.stem)),
        batches=tuple(batches),
        api=api,
        dispatch=dispatch,
        stack_config=dict(data.get("stack_config", {})),
        deadline_s=_number(data, "deadline_s", 110, "scenario"),
        completion_faults=_completion_faults(data.get("completion_faults", {}), path),
        malformed_payloads=int(_number(data, "malformed_payloads", 0, "scenario")),
        capacity_changes=_capacity_changes(data.get("capacity_changes", []), path),
        source=source,
    )


def _capacity_changes(raw: Any, path: Path) -> tuple[tuple[float, int], ...]:
    ok = isinstance(raw, list) and all(
        isinstance(c, list)
        and len(c) == 2
        and isinstance(c[0], int | float)
        and not isinstance(c[0], bool)
        and c[0] >= 0
        and isinstance(c[1], int)
        and not isinstance(c[1], bool)
        and c[1] >= 1
        for c in raw
    )
    if not ok:
        raise ScenarioError(
            f"{path}: capacity_changes must be a list of [offset_s >= 0, limit >= 1] pairs, got {raw!r}"
        )
    return tuple(sorted((float(at), int(limit)) for at, limit in raw))


def _completion_faults(raw: Any, path: Path) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(
        isinstance(v, str) and (v == "hang" or re.fullmatch(r"throttle:[1-9][0-9]*", v)) for v in raw.values()
    ):
        raise ScenarioError(
            f"{path}: completion_faults must map item ids to 'hang' or 'throttle:N', got {raw!r}"
        )
    return dict(raw)
