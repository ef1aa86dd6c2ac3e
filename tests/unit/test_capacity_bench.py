"""The capacity benchmark's figures from a recorded call list: windows, phases, recovery times."""

from __future__ import annotations

from localcloud.capacity_bench import (
    Plan,
    achievable,
    phase,
    refused_series,
    scenarios,
    throughput_series,
    time_to_reach,
)
from localcloud.legacy_api import Call

T0 = 1_000.0


def call(start: float, status: int = 200, seconds: float = 1.0) -> Call:
    return Call(
        start=T0 + start,
        end=T0 + start + seconds,
        key=f"k{start}",
        item_id=None,
        priority=None,
        in_flight=1,
        status=status,
    )


def test_throughput_counts_successes_ending_in_the_window() -> None:
    # 2 successes a second from 0 to 20 s, none after; 429s never count as throughput.
    calls = [call(n / 2) for n in range(40)] + [call(n, status=429, seconds=0.0) for n in range(30)]
    series = dict(throughput_series(calls, T0, 40.0))
    assert min(series) == 10.0  # the first full window
    assert series[12.0] == 2.0
    assert series[25.0] == 1.1  # 11 of the 40 ended in (15, 25]
    assert series[31.0] == 0.0


def test_time_to_reach_needs_a_window_wholly_inside_the_phase() -> None:
    series = [(t, 4.0 if t < 60 else (1.0 if t < 75 else 2.0)) for t in range(10, 120)]
    # Windows ending before 70 straddle the change at 60; the first inside the phase ends at 70
    # (1.0 calls/s); 2.0 is first reached by the window ending at 75.
    assert time_to_reach(series, 60.0, 120.0, 1.8) == 15.0
    assert time_to_reach(series, 60.0, 120.0, 0.9) == 10.0
    assert time_to_reach(series, 60.0, 120.0, 5.0) is None


def test_a_phase_counts_calls_that_started_in_it() -> None:
    calls = [call(5), call(59.9, status=429), call(60), call(61, status=429), call(119, status=500)]
    assert phase(calls, T0, 60.0, 120.0) == {
        "calls": 3,
        "refused_429": 1,
        "share_429": 0.3333,
        "ok_per_s": 0.017,
    }
    assert phase(calls, T0, 0.0, 60.0)["share_429"] == 0.5
    assert refused_series(calls, T0, 70.0, bucket_s=10.0)[5:] == [(50.0, 0.1), (60.0, 0.1)]


def test_both_runs_share_load_and_capacity_and_differ_only_in_the_controller() -> None:
    runs = scenarios(Plan())
    adaptive, fixed = runs["adaptive"], runs["fixed"]
    assert adaptive.capacity_changes == fixed.capacity_changes == ((60.0, 2), (180.0, 4))
    assert adaptive.feed == fixed.feed
    assert adaptive.api == fixed.api
    assert "sluice:adaptive" not in fixed.stack_config
    assert {k: v for k, v in adaptive.stack_config.items() if k != "sluice:adaptive"} == fixed.stack_config


def test_achievable_targets_scale_the_capacity_by_the_fixed_runs_utilization() -> None:
    plan = Plan()
    ramp = [(float(t), 0.0 if t < 200 else 3.0) for t in range(10, 301)]
    figures = {
        "capacity_calls_per_s": {"full": 4.0, "half": 2.0},
        "before_drop": {"ok_per_s": 3.0},
        "throughput_series": ramp,
    }
    results = {"fixed": figures, "adaptive": dict(figures)}
    achievable(results, plan)
    assert results["utilization_ceiling"] == 0.75
    # 90% of 0.75 x 4 = 2.7 calls/s, first reached by the window ending at 200 s.
    assert results["adaptive"]["to_90pct_achievable_after_recovery_s"] == 20.0
    assert results["fixed"]["to_90pct_achievable_after_drop_s"] is None
