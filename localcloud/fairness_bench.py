"""The fairness benchmark: a noisy tenant's backlog and a quiet tenant's few items, keys off
and on, side by side in one run (docs/keys.md; BENCHMARKS.md's fairness section)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from localcloud.legacy_api import ApiProfile
from localcloud.report import percentile, write_figures
from localcloud.runner import run_scenario
from localcloud.scenario import Batch, Scenario

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from localcloud.runner import RunResult

OK = 200
TENANT_FIELD = "tenant"
MODES = ("keys off", "keys on", "quiet alone")


@dataclass(frozen=True)
class Plan:
    noisy: int = 5_000
    quiet: int = 50
    quiet_at_s: float = 5.0
    limit: int = 8
    service_s: float = 0.05

    def scaled(self, factor: float) -> Plan:
        return replace(
            self, noisy=max(1, round(self.noisy * factor)), quiet=max(1, round(self.quiet * factor))
        )


def _items(tenant: str, count: int) -> tuple[dict[str, Any], ...]:
    return tuple({"id": f"{tenant}-{n}", "priority": "BATCH", TENANT_FIELD: tenant} for n in range(count))


def scenarios(plan: Plan) -> dict[str, Scenario]:
    """Keys off (today: one BATCH queue in arrival order), keys on (the tenant field is the key,
    weights 1), and the quiet tenant alone (what "within 2x of alone" is measured against)."""
    api = ApiProfile(concurrency_limit=plan.limit, service_time_s=plan.service_s, service_jitter=0.1)
    config = {"sluice:concurrency": str(plan.limit)}
    noisy = Batch(start_s=0.0, counts={}, items=_items("noisy", plan.noisy))
    quiet = Batch(start_s=plan.quiet_at_s, counts={}, items=_items("quiet", plan.quiet))
    # Ten times what the API needs, and the start-up: the keyed path is slower on the emulator.
    deadline = 120.0 + 10 * (plan.noisy + plan.quiet) * plan.service_s / plan.limit
    base = Scenario("fairness", (noisy, quiet), api, stack_config=config, deadline_s=deadline)
    return {
        "keys off": replace(base, name="fairness-keys-off"),
        "keys on": replace(
            base, name="fairness-keys-on", stack_config=config | {"sluice:keys": {"field": TENANT_FIELD}}
        ),
        "quiet alone": replace(base, name="fairness-quiet-alone", batches=(quiet,)),
    }


def measure(result: RunResult) -> dict[str, Any]:
    """Per tenant: waits (enqueue to the first call's start) and its share of the calls made
    while the quiet tenant had items waiting; throughput over the whole run."""
    first_call: dict[str, float] = {}
    tenant_of: dict[str, str] = {}
    for record in result.executions:
        for index, item in enumerate(record.items):
            tenant_of[f"{record.arn}#{index}"] = item[TENANT_FIELD]
    ok = [c for c in result.calls if c.status == OK and not c.replayed]
    for call in sorted(result.calls, key=lambda c: c.start):
        first_call.setdefault(call.key, call.start)
    figures: dict[str, Any] = {}
    quiet_keys = [k for k, t in tenant_of.items() if t == "quiet"]
    window = (
        min((result.enqueued_at[k] for k in quiet_keys if k in result.enqueued_at), default=None),
        max((first_call[k] for k in quiet_keys if k in first_call), default=None),
    )
    in_window = [
        c for c in ok if window[0] is not None and window[1] is not None and window[0] <= c.start <= window[1]
    ]
    for tenant in ("noisy", "quiet"):
        keys = [k for k, t in tenant_of.items() if t == tenant]
        waits = [
            first_call[k] - result.enqueued_at[k] for k in keys if k in first_call and k in result.enqueued_at
        ]
        if not keys:
            continue
        figures[tenant] = {
            "items": len(keys),
            "worked": len(waits),
            "p50_wait_s": _round(percentile(waits, 50)),
            "p95_wait_s": _round(percentile(waits, 95)),
            "share_while_quiet_waited": round(
                sum(1 for c in in_window if tenant_of.get(c.key) == tenant) / len(in_window), 3
            )
            if in_window
            else None,
        }
    figures["ok_calls"] = len(ok)
    figures["calls_per_s"] = steady_rate([c.start for c in ok])
    figures["executions_not_succeeded"] = sum(1 for r in result.executions if r.status != "SUCCEEDED")
    return figures


def steady_rate(starts: list[float]) -> float | None:
    """Calls per second between the 10th and the 90th percentile of call starts: the run's
    pace once both ramps (the emulator starting children, the last stragglers) are left out."""
    if len(starts) < 10:
        return None
    ordered = sorted(starts)
    low, high = ordered[len(ordered) // 10], ordered[(len(ordered) * 9) // 10]
    calls = (len(ordered) * 9) // 10 - len(ordered) // 10
    return round(calls / (high - low), 1) if high > low else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def run(plan: Plan, on_done: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {"plan": asdict(plan)}
    for mode, scenario in scenarios(plan).items():
        results[mode] = measure(run_scenario(scenario))
        if on_done is not None:
            on_done(mode, results[mode])
    results["goals"] = goals(results)
    return results


def goals(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's two goals: the quiet tenant's p95 wait with keys within 2x of alone, and
    throughput with keys within 5% of keys off."""
    alone = results["quiet alone"].get("quiet", {}).get("p95_wait_s")
    keyed = results["keys on"].get("quiet", {}).get("p95_wait_s")
    off, on = results["keys off"].get("calls_per_s"), results["keys on"].get("calls_per_s")
    return {
        "quiet_p95_vs_alone": round(keyed / alone, 2) if keyed is not None and alone else None,
        "throughput_vs_keys_off": round(on / off, 3) if on and off else None,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| mode | tenant | items | p50 wait s | p95 wait s | share of calls while quiet waited |",
        "|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        for tenant in ("noisy", "quiet"):
            f = results[mode].get(tenant)
            if f is not None:
                lines.append(
                    f"| {mode} | {tenant} | {f['items']} | {f['p50_wait_s']} | {f['p95_wait_s']} | "
                    f"{f['share_while_quiet_waited']} |"
                )
    lines += ["", "| mode | ok calls/s |", "|---|---|"]
    lines += [f"| {mode} | {results[mode]['calls_per_s']} |" for mode in MODES]
    g = results["goals"]
    lines += [
        "",
        f"Quiet tenant's p95 wait with keys on, against alone: {g['quiet_p95_vs_alone']}x (goal <= 2). "
        f"Throughput with keys on, against keys off: {g['throughput_vs_keys_off']} (goal >= 0.95).",
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only --plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - same

    fig, (waits, rate) = plt.subplots(1, 2, figsize=(11, 4))
    labels, p50, p95 = [], [], []
    for mode in MODES:
        for tenant in ("noisy", "quiet"):
            f = results[mode].get(tenant)
            if f is not None:
                labels.append(f"{mode}\n{tenant}")
                p50.append(f["p50_wait_s"] or 0)
                p95.append(f["p95_wait_s"] or 0)
    xs = range(len(labels))
    waits.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50")
    waits.bar([x + 0.2 for x in xs], p95, width=0.4, label="p95")
    waits.set_xticks(list(xs), labels, fontsize=8)
    waits.set_ylabel("wait to first call (s)")
    waits.set_yscale("symlog", linthresh=1)
    waits.legend()
    rate.bar(list(MODES), [results[m]["calls_per_s"] or 0 for m in MODES])
    rate.set_ylabel("ok calls/s")
    plan = results["plan"]
    fig.suptitle(
        f"{plan['noisy']} noisy BATCH items at 0 s, {plan['quiet']} quiet ones at {plan['quiet_at_s']:g} s; "
        f"API limit {plan['limit']} at {plan['service_s'] * 1000:.0f} ms"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out: Path | None, md: Path | None, png: Path | None) -> None:
    write_figures(results, out, md, png, markdown=markdown, plot=plot)
