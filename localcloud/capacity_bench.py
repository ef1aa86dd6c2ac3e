"""The capacity benchmark: the legacy API's capacity halves mid-run, then recovers
(`python -m localcloud capacity`; docs/adaptive.md, BENCHMARKS.md)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from localcloud.legacy_api import ApiProfile
from localcloud.report import write_figures
from localcloud.runner import run_scenario
from localcloud.scenario import Batch, Feed, Scenario

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from localcloud.legacy_api import Call
    from localcloud.runner import RunResult

THROUGHPUT_WINDOW_S = 10.0
"""Throughput is judged over this sliding window (a few calls of 1 s each would be noise)."""
RECOVERED_SHARE = 0.9  # the goal: back to 90% of the capacity of the moment
OK = 200


@dataclass(frozen=True)
class Plan:
    """The capacity schedule and load, in seconds from the start of the run."""

    capacity: int = 4
    service_s: float = 1.0
    warmup_s: float = 20.0
    """Sandboxes start cold; the figures before the drop leave this out."""
    drop_at_s: float = 60.0
    recover_at_s: float = 180.0
    end_s: float = 300.0
    interval_s: int = 5
    """The controller's step (its smallest useful one for 1 s calls at this rate: ~10 calls)."""

    def scaled(self, factor: float) -> Plan:
        return Plan(
            self.capacity,
            self.service_s,
            self.warmup_s * factor,
            self.drop_at_s * factor,
            self.recover_at_s * factor,
            self.end_s * factor,
            self.interval_s,
        )


def scenarios(plan: Plan) -> dict[str, Scenario]:
    api = ApiProfile(concurrency_limit=plan.capacity, service_time_s=plan.service_s, service_jitter=0.1)
    common: dict[str, Any] = {
        "sluice:concurrency": str(plan.capacity),
        # The hold after a 429 (the controller's reaction time) must fit in half the timeout.
        "sluice:workerTimeoutSeconds": "20",
        "sluice:callbackTimeoutSeconds": str(int(plan.end_s) + 600),
    }
    adaptive = {
        "sluice:adaptive": {
            "min_concurrency": 1,
            "interval_seconds": plan.interval_s,
            # The embedded AWS forwards EMF lines within 0.25 s; AWS takes seconds (docs/adaptive.md).
            "signal_delay_seconds": 1,
            "min_calls": 5,
            # One probe per 80 s: a refused probe costs about one 429 per excess slot, and at
            # 2 calls/s the low phase has ~240 calls; the recovery waits at most that long.
            "probe_intervals": 12,
        }
    }
    feed = Feed(outstanding=5 * plan.capacity, batch_size=plan.capacity, until_s=plan.end_s)
    # One HIGH item at the start: a batch list may not be empty; the feed carries the load.
    warmup = (Batch(start_s=0.0, counts={"HIGH": 1}),)
    base = Scenario(
        "capacity",
        warmup,
        api,
        stack_config=common,
        deadline_s=plan.end_s + 120,
        feed=feed,
        capacity_changes=((plan.drop_at_s, plan.capacity // 2), (plan.recover_at_s, plan.capacity)),
    )
    return {
        "adaptive": replace(base, name="capacity-adaptive", stack_config=common | adaptive),
        "fixed": replace(base, name="capacity-fixed"),
    }


def throughput_series(
    calls: list[Call], t0: float, end_s: float, step_s: float = 1.0
) -> list[tuple[float, float]]:
    """(t, successful calls per second over the window ending at t), t from t0, every step."""
    ends = sorted(c.end - t0 for c in calls if c.status == OK)
    series, lo, hi = [], 0, 0
    for n in range(math.ceil(THROUGHPUT_WINDOW_S / step_s), math.floor(end_s / step_s) + 1):
        t = n * step_s
        while hi < len(ends) and ends[hi] <= t:
            hi += 1
        while lo < hi and ends[lo] <= t - THROUGHPUT_WINDOW_S:
            lo += 1
        series.append((t, (hi - lo) / THROUGHPUT_WINDOW_S))
    return series


def time_to_reach(
    series: list[tuple[float, float]], since_s: float, until_s: float, target: float
) -> float | None:
    """Seconds after `since_s` until a window that starts after `since_s` reaches `target`
    (the whole window inside the phase: a window spanning the change would mix both), or None."""
    for t, rate in series:
        if t - THROUGHPUT_WINDOW_S >= since_s and t <= until_s and rate >= target:
            return round(t - since_s, 1)
    return None


def phase(calls: list[Call], t0: float, start_s: float, end_s: float) -> dict[str, Any]:
    inside = [c for c in calls if start_s <= c.start - t0 < end_s]
    refused = sum(1 for c in inside if c.status == 429)
    ok = sum(1 for c in inside if c.status == OK)
    return {
        "calls": len(inside),
        "refused_429": refused,
        "share_429": round(refused / len(inside), 4) if inside else 0.0,
        "ok_per_s": round(ok / (end_s - start_s), 3),
    }


def measure(result: RunResult, plan: Plan) -> dict[str, Any]:
    calls = [c for c in result.calls if not c.replayed]
    t0 = min((r.started for r in result.executions), default=0.0)
    service = [c.end - c.start for c in calls if c.status == OK]
    mean_service = sum(service) / len(service) if service else plan.service_s
    full = plan.capacity / mean_service
    half = (plan.capacity // 2) / mean_service
    series = throughput_series(calls, t0, plan.end_s)
    worker = result.stack.outputs["workerFunctionName"]
    limits = [(round(t - t0, 1), v) for t, what, v in result.limits if what == f"reserved:{worker}"]
    # Every execution must end well: a capacity drop is a reason to wait, never to lose work.
    lost = sum(1 for r in result.executions if r.status != "SUCCEEDED")
    return {
        "mean_service_s": round(mean_service, 3),
        "capacity_calls_per_s": {"full": round(full, 3), "half": round(half, 3)},
        "before_drop": phase(calls, t0, plan.warmup_s, plan.drop_at_s),
        "after_drop": phase(calls, t0, plan.drop_at_s, plan.recover_at_s),
        "after_recovery": phase(calls, t0, plan.recover_at_s, plan.end_s),
        "since_drop": phase(calls, t0, plan.drop_at_s, plan.end_s),
        "to_90pct_after_drop_s": time_to_reach(
            series, plan.drop_at_s, plan.recover_at_s, RECOVERED_SHARE * half
        ),
        "to_90pct_after_recovery_s": time_to_reach(
            series, plan.recover_at_s, plan.end_s, RECOVERED_SHARE * full
        ),
        "limit_timeline": limits,
        "executions_not_succeeded": lost,
        "items_fed": sum(len(r.items) for r in result.executions),
        "throughput_series": [(t, round(r, 2)) for t, r in series],
        "refused_series": refused_series(calls, t0, plan.end_s),
    }


def refused_series(
    calls: list[Call], t0: float, end_s: float, bucket_s: float = 5.0
) -> list[tuple[float, float]]:
    """(bucket start, 429s per second in the bucket)."""
    buckets = [0] * math.ceil(end_s / bucket_s)
    for c in calls:
        n = int((c.start - t0) // bucket_s)
        if c.status == 429 and 0 <= n < len(buckets):
            buckets[n] += 1
    return [(n * bucket_s, count / bucket_s) for n, count in enumerate(buckets)]


def achievable(results: dict[str, Any], plan: Plan) -> None:
    """Recovery times against what this machine can deliver, besides the raw capacity.

    The embedded AWS serves every SQS, Step Functions and DynamoDB request in Python on the same
    cores, so even the fixed limit keeps the API busy only part of the time (its `utilization`
    before the drop, when nothing is refused). 90% of the raw capacity can be out of reach for
    both runs; 90% of utilization x capacity is what "full throughput" means here.
    """
    fixed = results["fixed"]
    full = fixed["capacity_calls_per_s"]["full"]
    utilization = fixed["before_drop"]["ok_per_s"] / full if full else 0.0
    results["utilization_ceiling"] = round(utilization, 3)
    for mode in ("adaptive", "fixed"):
        figures = results[mode]
        caps = figures["capacity_calls_per_s"]
        series = [tuple(x) for x in figures["throughput_series"]]
        target_half = RECOVERED_SHARE * utilization * caps["half"]
        target_full = RECOVERED_SHARE * utilization * caps["full"]
        figures["to_90pct_achievable_after_drop_s"] = time_to_reach(
            series, plan.drop_at_s, plan.recover_at_s, target_half
        )
        figures["to_90pct_achievable_after_recovery_s"] = time_to_reach(
            series, plan.recover_at_s, plan.end_s, target_full
        )


def run(plan: Plan, on_done: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Two runs side by side in one process, the same closed-loop load and capacity schedule:
    `adaptive` (the stack's controller on, its timer, metrics and control plane in the embedded
    AWS; the limit between 1 and the API's original capacity) and `fixed` (no controller, the
    limit at the original capacity). Each reports the 429 share of calls per phase, throughput
    against the capacity of the moment, and how long throughput takes to reach 90% of the new
    capacity after the drop and of the old one after the recovery."""
    results: dict[str, Any] = {"plan": asdict(plan)}
    for mode, scenario in scenarios(plan).items():
        figures = measure(run_scenario(scenario), plan)
        results[mode] = figures
        if on_done is not None:
            on_done(mode, figures)
    achievable(results, plan)
    return results


ROWS: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...] = (
    ("429 share after the drop", lambda f: f["after_drop"]["share_429"]),
    ("429 share after the recovery", lambda f: f["after_recovery"]["share_429"]),
    ("429 share before the drop", lambda f: f["before_drop"]["share_429"]),
    ("ok calls/s before the drop", lambda f: f["before_drop"]["ok_per_s"]),
    ("ok calls/s after the drop", lambda f: f["after_drop"]["ok_per_s"]),
    ("ok calls/s after the recovery", lambda f: f["after_recovery"]["ok_per_s"]),
    ("s to 90% of the new capacity after the drop", lambda f: f["to_90pct_after_drop_s"]),
    ("s to 90% of the old capacity after the recovery", lambda f: f["to_90pct_after_recovery_s"]),
    ("s to 90% of achievable throughput after the drop", lambda f: f["to_90pct_achievable_after_drop_s"]),
    (
        "s to 90% of achievable throughput after the recovery",
        lambda f: f["to_90pct_achievable_after_recovery_s"],
    ),
    ("calls after the drop (incl. 429)", lambda f: f["since_drop"]["calls"]),
)


def markdown(results: dict[str, Any]) -> str:
    lines = ["| figure | adaptive | fixed |", "|---|---|---|"]
    for name, get in ROWS:
        lines.append(f"| {name} | {get(results['adaptive'])} | {get(results['fixed'])} |")
    caps = results["adaptive"]["capacity_calls_per_s"]
    lines.append(f"| API capacity, calls/s (full / half) | {caps['full']} / {caps['half']} | same |")
    lines.append(
        f"| utilization ceiling (fixed, before the drop) | {results['utilization_ceiling']} | same |"
    )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only --plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - same

    plan = results["plan"]
    fig, (tput, refused, limit) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for mode in ("adaptive", "fixed"):
        series = results[mode]["throughput_series"]
        tput.plot([t for t, _ in series], [r for _, r in series], label=mode)
        series = results[mode]["refused_series"]
        refused.step([t for t, _ in series], [r for _, r in series], where="post", label=mode)
    full, half = (results["adaptive"]["capacity_calls_per_s"][k] for k in ("full", "half"))
    drop, recover, end = plan["drop_at_s"], plan["recover_at_s"], plan["end_s"]
    tput.step(
        [0, drop, recover, end],
        [full, half, full, full],
        where="post",
        color="grey",
        ls="--",
        label="capacity",
    )
    tput.set_ylabel(f"ok calls/s ({THROUGHPUT_WINDOW_S:.0f} s window)")
    refused.set_ylabel("429s per second")
    timeline = results["adaptive"]["limit_timeline"]
    if timeline:
        xs = [t for t, _ in timeline] + [end]
        ys = [v for _, v in timeline] + [timeline[-1][1]]
        limit.step(xs, ys, where="post", label="adaptive limit (reserved concurrency)")
    capacity = plan["capacity"]
    limit.step(
        [0, drop, recover, end],
        [capacity, capacity // 2, capacity, capacity],
        where="post",
        color="grey",
        ls="--",
        label="API capacity (calls in flight)",
    )
    limit.set_ylabel("concurrency")
    limit.set_xlabel("seconds")
    for ax in (tput, refused, limit):
        ax.axvline(drop, color="red", lw=0.5)
        ax.axvline(recover, color="green", lw=0.5)
        ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(results: dict[str, Any], out: Path | None, md: Path | None, png: Path | None) -> None:
    write_figures(results, out, md, png, markdown=markdown, plot=plot)
