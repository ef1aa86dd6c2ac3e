"""The run report: a stable JSON document that tests and benchmarks read."""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path

    from localcloud.legacy_api import Call
    from localcloud.runner import RunResult

REPORT_VERSION = 1
# The `event` field of the worker's log records this report counts (localcloud never imports
# the handlers it runs, so the names are written here; tests/unit/test_report.py holds them to
# the handlers' contract).
LOG_EVENT = "event"
YIELD_EVENT = "yielded"
FORCED_EVENT = "forced"
EMPTY_TICKET_EVENTS = ("empty_ticket", "orphan_ticket")
SLOT_TIME_EVENT = "slot_time"


def write_figures(
    results: dict[str, Any],
    out: Path | None,
    md: Path | None,
    png: Path | None,
    *,
    markdown: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], None],
) -> None:
    """A benchmark's figures as JSON, its table as Markdown and its plot, each where asked."""
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")
    if md is not None:
        md.write_text(markdown(results))
    if png is not None:
        plot(results, png)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 3)


def first_calls(calls: Sequence[Call]) -> list[Call]:
    """Each item's first API call, in the order they started."""
    first: dict[str, Call] = {}
    for call in sorted(calls, key=lambda c: c.start):
        first.setdefault(call.key, call)
    return list(first.values())


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": round(max(values), 3) if values else None,
    }


def build_report(result: RunResult) -> dict[str, Any]:
    """The run report.

    Format (version 1), all times in seconds:
        items.{total, throttled, direct, succeeded, failed, lost}
        by_priority.<P>.{count, succeeded, failed, wait_s.{p50, p95, max}}
            P is the item's class: its priority (in the fifo baseline, the priority it would have had)
            wait: from the item's message being sent to its queue to the start of its first API call
        by_priority.<P>.latency_s.{p50, p95, max}
            latency: from its batch's StartExecution to the start of the item's first API call (wait
            plus the time before the Map opened the item's child, which a batch larger than the
            Map's concurrency makes long)
        downstream.{limit, max_in_flight, over_limit, calls, calls_ok, duplicate_calls, utilization}
            over_limit: calls the API refused because Sluice exceeded its limits (must be 0)
            utilization: busy call-time / (limit x time from first call start to last call end)
        downstream.{saturated_s, saturated_utilization}
            saturated_s: time in that window while at least one item waited (its payload sent,
            its first call not started); saturated_utilization: busy call-time in those periods
            / (limit x saturated_s), how much of the API's capacity was used while work waited
        worker.{invocations, yields, forced, empty_tickets, throttled}
            throttled: invokes refused for lack of reserved concurrency (the mapping retries them)
        worker.slot_time.{invocations_s, parts_s.<part>}
            the worker's own account of its invocations (its `slot_time` log lines): their total
            length, and the seconds in each AWS operation, the API call and each wait
        downstream.window_s: time from first call start to last call end
        execution.{status, wall_s, executions}

    Per-item outcomes (succeeded/failed by priority) come from each execution's Map Run result
    files in S3 (`ExecutionRecord.results`, read once when the execution ends), for inline and
    S3-source batches alike.
    """
    limit = result.scenario.api.concurrency_limit
    submitted = [(r, item) for r in result.executions for item in r.items]
    priority_of_key = {
        f"{r.arn}#{i}": str(item["class"])
        for r in result.executions
        for i, item in enumerate(r.items)
        if item.get("class")
    }
    counts = Counter(priority_of_key.values())

    succeeded = failed = accounted = 0
    by_priority_outcome: dict[str, Counter[str]] = defaultdict(Counter)
    for record in result.executions:
        out = record.output if isinstance(record.output, dict) else {}
        if record.status == "SUCCEEDED" and "total" in out:
            accounted += int(out["total"])
            succeeded += int(out["succeeded"])
            failed += int(out["failed"])
            for entry in record.results or []:
                if isinstance(entry, dict) and isinstance(entry.get("index"), int):
                    item_class = record.items[entry["index"]].get("class")
                    if item_class:
                        outcome = "succeeded" if entry.get("status") == "SUCCEEDED" else "failed"
                        by_priority_outcome[str(item_class)][outcome] += 1

    first_call = {call.key: call.start for call in first_calls(result.calls)}
    ok_calls = Counter(call.key for call in result.calls if 200 <= call.status < 300)
    waits: dict[str, list[float]] = defaultdict(list)
    latencies: dict[str, list[float]] = defaultdict(list)
    started_at = {r.arn: r.started for r in result.executions}
    for key, started in first_call.items():
        if key not in priority_of_key:
            continue
        if key in result.enqueued_at:
            waits[priority_of_key[key]].append(max(0.0, started - result.enqueued_at[key]))
        arn = key.rsplit("#", 1)[0]
        if arn in started_at:
            latencies[priority_of_key[key]].append(max(0.0, started - started_at[arn]))

    admitted = [c for c in result.calls if c.in_flight > 0]
    busy = sum(c.end - c.start for c in admitted)
    window_start = min((c.start for c in admitted), default=0.0)
    window_end = max((c.end for c in admitted), default=0.0)
    window = window_end - window_start
    saturated = (
        _merged(
            (max(result.enqueued_at[key], window_start), min(started, window_end))
            for key, started in first_call.items()
            if key in result.enqueued_at
        )
        if admitted
        else []
    )
    saturated_s = sum(end - start for start, end in saturated)
    saturated_busy = sum(_overlap(c.start, c.end, saturated) for c in admitted)
    statuses = [r.status for r in result.executions]
    return {
        "version": REPORT_VERSION,
        "scenario": result.scenario.name,
        "items": {
            "total": len(submitted),
            "throttled": sum(counts.values()),
            "direct": len(submitted) - sum(counts.values()),
            "succeeded": succeeded,
            "failed": failed,
            "lost": len(submitted) - accounted,
        },
        "by_priority": {
            p: {
                "count": counts[p],
                "succeeded": by_priority_outcome[p]["succeeded"],
                "failed": by_priority_outcome[p]["failed"],
                "wait_s": _spread(waits[p]),
                "latency_s": _spread(latencies[p]),
            }
            for p in sorted(counts)
        },
        "downstream": {
            "limit": limit,
            "max_in_flight": max((c.in_flight for c in result.calls), default=0),
            "over_limit": sum(1 for c in result.calls if c.in_flight == 0),
            "calls": len(result.calls),
            "calls_ok": sum(ok_calls.values()),
            "duplicate_calls": sum(n - 1 for n in ok_calls.values() if n > 1),
            "utilization": round(busy / (limit * window), 3) if window else 0.0,
            "window_s": round(window, 3),
            "saturated_s": round(saturated_s, 3),
            "saturated_utilization": round(saturated_busy / (limit * saturated_s), 3)
            if saturated_s
            else None,
        },
        "worker": {
            "invocations": result.worker_stats["invocations"],
            "yields": sum(1 for r in result.worker_logs if r.get(LOG_EVENT) == YIELD_EVENT),
            "forced": sum(1 for r in result.worker_logs if r.get(LOG_EVENT) == FORCED_EVENT),
            "empty_tickets": sum(1 for r in result.worker_logs if r.get(LOG_EVENT) in EMPTY_TICKET_EVENTS),
            "throttled": sum(s.throttled_invokes for s in result.mapping_stats),
            "slot_time": _slot_time(result.worker_logs),
        },
        "execution": {
            "status": "SUCCEEDED"
            if statuses and all(s == "SUCCEEDED" for s in statuses)
            else next((s for s in statuses if s != "SUCCEEDED"), "NONE"),
            "wall_s": round(result.wall_s, 2),
            "executions": len(statuses),
        },
    }


def _slot_time(logs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    parts: Counter[str] = Counter()
    invocations_ms = 0.0
    for record in logs:
        if record.get(LOG_EVENT) == SLOT_TIME_EVENT:
            invocations_ms += record.get("invocation_ms", 0.0)
            parts.update(record.get("parts_ms", {}))
    return {
        "invocations_s": round(invocations_ms / 1000, 3),
        "parts_s": {name: round(ms / 1000, 3) for name, ms in sorted(parts.items())},
    }


def _merged(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of intervals, as sorted disjoint ones (empty ones dropped)."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _overlap(start: float, end: float, merged: list[tuple[float, float]]) -> float:
    """How much of [start, end] lies in the sorted disjoint intervals `merged` (O(log n + k))."""
    total = 0.0
    at = max(0, bisect.bisect_right(merged, (start, math.inf)) - 1)
    for lo, hi in merged[at:]:
        if lo >= end:
            break
        total += max(0.0, min(hi, end) - max(lo, start))
    return total
