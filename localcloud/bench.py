"""The dispatch benchmark: standard scenarios run side by side for `yield`, `ticket` and a single
FIFO queue with no priority, on the same simulated API, in one process."""

from __future__ import annotations

import dataclasses
from typing import Any

from localcloud.legacy_api import ApiProfile
from localcloud.prices import usd_per_million_items
from localcloud.report import build_report
from localcloud.runner import RunResult, run_scenario
from localcloud.scenario import Batch, Scenario

MODES = ("yield", "ticket", "fifo")
# The contract's names in the results the aggregate reports (tests/unit/test_report.py holds
# them equal): the embedded AWS reads what the handlers write, it does not import them.
DIRECT_PATH = "DIRECT"
ERROR_UNKNOWN_PRIORITY = "Sluice.UnknownPriority"
SERVICE_S = 1.0
"""Legacy APIs answer in hundreds of ms to seconds; at 1 s the API's time dominates the embedded
AWS's own per-request overhead, so the figures compare dispatch, not emulator speed."""


STACK = {"sluice:workerTimeoutSeconds": "30"}
"""The component's default worker timeout. Local runs use 10 s to keep test timers short, but a
ticket invocation keeps its slot only while it has time for another item (twice its slowest +
2 s), so at 10 s every slot restarts every 5-6 items: an idle gap a deployed stack, at 30 s,
has a third as often."""


def _mixed(n: int) -> dict[str, int]:
    return {"HIGH": n // 5, "NORMAL": (3 * n) // 10, "BATCH": n - n // 5 - (3 * n) // 10}


def scenarios() -> dict[str, Scenario]:
    """The standard scenarios. Capacity = limit / service time = 4 items/s at limit 4."""
    api = ApiProfile(concurrency_limit=4, service_time_s=SERVICE_S)
    return {
        # (a) steady mixed load at 2x capacity: 8 items/s for 4 s.
        "a-steady-2x": Scenario(
            "a-steady-2x",
            tuple(Batch(start_s=float(t), counts=_mixed(8)) for t in range(4)),
            api,
            stack_config=STACK,
        ),
        # (b) a BATCH flood of 10x capacity (10 s of work) with a HIGH trickle on top.
        "b-flood-10x": Scenario(
            "b-flood-10x",
            (
                Batch(start_s=0, counts={"BATCH": 40}),
                *(Batch(start_s=float(t), counts={"HIGH": 1}) for t in range(2, 10, 2)),
            ),
            api,
            stack_config=STACK,
        ),
        # (c) a HIGH burst of 3 s of work, then quiet.
        "c-high-burst": Scenario(
            "c-high-burst", (Batch(start_s=0, counts={"HIGH": 12}),), api, stack_config=STACK
        ),
        # (d) the smallest limits, where MaximumConcurrency's minimum of 2 matters most.
        "d-limit-1": Scenario(
            "d-limit-1",
            (Batch(start_s=0, counts={"BATCH": 8, "NORMAL": 4}), Batch(start_s=2, counts={"HIGH": 2})),
            ApiProfile(concurrency_limit=1, service_time_s=SERVICE_S),
            stack_config=STACK,
        ),
        "d-limit-2": Scenario(
            "d-limit-2",
            (Batch(start_s=0, counts={"BATCH": 16, "NORMAL": 8}), Batch(start_s=2, counts={"HIGH": 4})),
            ApiProfile(concurrency_limit=2, service_time_s=SERVICE_S),
            stack_config=STACK,
        ),
    }


def child_transitions(result: RunResult) -> int:
    """States entered in the child executions, from each item's recorded result.

    moto does not expose a Distributed Map's child execution histories, so they are counted from
    the child workflow's fixed paths (sluice_fanout/components/definition.py): a direct item, or
    one of an unknown priority, enters 2 states (Route, then its end); a queued item 2 (Route,
    Enqueue) or 3 with a ticket; a failure one more (its Failed state). Retries of a state would
    add to this. AWS also bills one transition per child a Distributed Map starts: not counted
    here, so the figures compare with the ones before this count; `billed_transitions` adds them.
    """
    ticket = result.scenario.dispatch == "ticket"
    total = 0
    for record in result.executions:
        for entry in record.results or []:
            if not isinstance(entry, dict):
                continue  # a child that failed outright: its transitions are unknown
            failed = entry.get("status") == "FAILED"
            error = entry.get("error")
            unknown = isinstance(error, dict) and error.get("Error") == ERROR_UNKNOWN_PRIORITY
            if entry.get("path") == DIRECT_PATH or entry.get("priority") is None:
                total += 2 if unknown or not failed else 3
            else:
                total += (3 if ticket else 2) + failed
    return total


def children(result: RunResult) -> int:
    """Child executions started: one per item the Map opened."""
    return sum(len(record.results or []) for record in result.executions)


SLOT_PARTS: dict[str, tuple[str, ...]] = {
    "api call": ("api_call",),
    "receive": ("ReceiveMessage",),
    "liveness check": ("SendTaskHeartbeat",),
    "idempotency and state": ("PutItem", "UpdateItem", "GetItem", "DeleteItem"),
    "token completion": ("SendTaskSuccess", "SendTaskFailure"),
    "delete": ("DeleteMessage",),
    "return to queue": ("ChangeMessageVisibility", "SendMessage"),
    "rate and 429 waits": ("rate_wait", "throttle_hold"),
}
"""The worker's `slot_time` parts (AWS operations, handlers/slot_time.py's names), grouped."""


def slot_breakdown(report: dict[str, Any]) -> dict[str, float]:
    """Each slot's time, as a share of limit x the calls' window, by what the worker was doing.

    From the worker's own `slot_time` lines: each group of SLOT_PARTS; `worker, other` is the
    rest of its invocations (its Python, logging, metrics); `no invocation` is slot time with no
    invocation running (the event source mapping's poll and invoke, or nothing to do). The
    invocations' time is not clipped to the window: an invocation that ran before the first call
    or after the last one moves time from `no invocation` to its parts.
    """
    slot_s = report["downstream"]["limit"] * report["downstream"]["window_s"]
    if not slot_s:
        return {}
    own = report["worker"]["slot_time"]
    parts = dict(own["parts_s"])
    shares = {group: sum(parts.pop(name, 0.0) for name in names) for group, names in SLOT_PARTS.items()}
    shares["other requests"] = sum(parts.values())
    shares["worker, other"] = own["invocations_s"] - sum(shares.values())
    shares["no invocation"] = slot_s - own["invocations_s"]
    return {group: round(seconds / slot_s, 3) for group, seconds in shares.items()}


def measure(result: RunResult) -> dict[str, Any]:
    """Utilization of the API's capacity, over-limit calls, p95 wait by priority, wasted
    invocations per item (yields, throttled invokes, empty tickets), SQS requests, Lambda
    invocations and Step Functions transitions per item, and an estimated USD per million items."""
    report = build_report(result)
    items = max(1, report["items"]["total"])
    throttled_items = max(1, report["items"]["throttled"])
    empty_tickets = report["worker"]["empty_tickets"]
    yields = report["worker"]["yields"]
    throttled_invokes = report["worker"]["throttled"]
    esm_empty = sum(s.empty_receives for s in result.mapping_stats)
    sqs = sum(n for k, n in result.requests.items() if k.startswith("sqs:")) - esm_empty
    invocations = result.worker_stats["invocations"] + len(result.executions)  # + one aggregate each
    transitions = result.parent_transitions + child_transitions(result)
    billed = transitions + children(result)
    gb_seconds = result.worker_stats["busy_ms"] / 1000 * result.worker_stats["memory_mb"] / 1024
    per_item = {
        "sqs_requests": sqs / items,
        "invocations": invocations / items,
        "transitions": transitions / items,
        "billed_transitions": billed / items,
        "gb_seconds": gb_seconds / items,
    }
    return {
        "utilization": report["downstream"]["utilization"],
        "saturated_utilization": report["downstream"]["saturated_utilization"],
        "over_limit": report["downstream"]["over_limit"],
        "lost": report["items"]["lost"],
        "p95_wait_s": {p: v["wait_s"]["p95"] for p, v in report["by_priority"].items()},
        "wasted_per_item": round((yields + throttled_invokes + empty_tickets) / throttled_items, 3),
        "billed_wasted_per_item": round((yields + empty_tickets) / throttled_items, 3),
        "wasted": {"yields": yields, "throttled_invokes": throttled_invokes, "empty_tickets": empty_tickets},
        "sqs_requests_per_item": round(per_item["sqs_requests"], 2),
        "invocations_per_item": round(per_item["invocations"], 2),
        "transitions_per_item": round(per_item["transitions"], 2),
        "billed_transitions_per_item": round(per_item["billed_transitions"], 2),
        "usd_per_million_items": usd_per_million_items(
            transitions=per_item["transitions"],
            sqs_requests=per_item["sqs_requests"],
            invocations=per_item["invocations"],
            gb_seconds=per_item["gb_seconds"],
        ),
        "billed_usd_per_million_items": usd_per_million_items(
            transitions=per_item["billed_transitions"],
            sqs_requests=per_item["sqs_requests"],
            invocations=per_item["invocations"],
            gb_seconds=per_item["gb_seconds"],
        ),
        "wall_s": report["execution"]["wall_s"],
        "slot_time": slot_breakdown(report),
    }


def run_bench(names: list[str] | None = None, scale: float = 1.0, on_done: Any = None) -> dict[str, Any]:
    """Run each scenario in each mode; return {scenario: {mode: figures}}."""
    chosen = scenarios()
    results: dict[str, Any] = {}
    for name, scenario in chosen.items():
        if names and name not in names:
            continue
        results[name] = {}
        for mode in MODES:
            run = run_scenario(
                dataclasses.replace(scenario.scaled(scale), dispatch=mode, name=f"{name}-{mode}")
            )
            results[name][mode] = measure(run)
            if on_done is not None:
                on_done(name, mode, results[name][mode])
    return results
