"""The concurrency controller on concrete numbers: each rule of the limit and each breaker edge."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from sluice_fanout.handlers.controller import (
    BreakerMode,
    BreakerSettings,
    BreakerState,
    ControllerInputError,
    ControllerSettings,
    ControllerState,
    Decision,
    Reason,
    Signal,
    next_breaker,
    next_limit,
)

SETTINGS = ControllerSettings(min_limit=1, max_limit=10, decrease_factor=0.5, cooldown_intervals=2)
WARM = ControllerState(baseline_ms=100.0)


def sig(
    calls: int = 100, throttled: int = 0, errors: int = 0, latency: float = 100.0, in_flight: float = 8.0
) -> Signal:
    return Signal(calls=calls, throttled=throttled, errors=errors, latency_ms=latency, in_flight=in_flight)


@pytest.mark.parametrize(
    ("current", "signal", "expected"),
    [
        # 20% 429s > 2%: down to the 5.4 calls the API served, rounded up, not halved to 4; 7 is
        # the first limit to prove again. The baseline stays (fast 429s are not the API's latency).
        (8, sig(throttled=20, in_flight=5.4), Decision(6, ControllerState(100.0, 2, 7), Reason.THROTTLED)),
        # 4.0 is 4 (ceil, not one more for float noise); 4.1 is 5.
        (8, sig(throttled=20, in_flight=4.0), Decision(4, ControllerState(100.0, 2, 5), Reason.THROTTLED)),
        (8, sig(throttled=20, in_flight=4.1), Decision(5, ControllerState(100.0, 2, 6), Reason.THROTTLED)),
        # served about as many as the limit: still one step down.
        (8, sig(throttled=20, in_flight=7.6), Decision(7, ControllerState(100.0, 2, 8), Reason.THROTTLED)),
        (
            8,
            sig(throttled=20, in_flight=math.inf),
            Decision(7, ControllerState(100.0, 2, 8), Reason.THROTTLED),
        ),
        # served 1: never below the multiplicative decrease.
        (8, sig(throttled=20, in_flight=1.0), Decision(4, ControllerState(100.0, 2, 5), Reason.THROTTLED)),
        (3, sig(throttled=10, in_flight=0.0), Decision(1, ControllerState(100.0, 2, 2), Reason.THROTTLED)),
        (1, sig(throttled=50, in_flight=1.0), Decision(1, ControllerState(100.0, 2, 1), Reason.THROTTLED)),
        # 5xx and slow answers halve and set no ceiling: the API did not refuse the limit.
        (8, sig(errors=6), Decision(4, ControllerState(100.0, 2), Reason.ERRORS)),
        # latency 250 > 2 x 100: halve; the baseline rises 5% of the way: 100 + 0.05 x 150.
        (8, sig(latency=250.0), Decision(4, ControllerState(107.5, 2), Reason.LATENCY)),
        # 2% 429s: not over the 2% threshold but over half of it: the hold band.
        (8, sig(throttled=2), Decision(8, ControllerState(100.0, 0), Reason.HOLD_BAND)),
        # latency 160: under 2 x 100 but over (1 + 0.5 x 1) x 100.
        (8, sig(latency=160.0), Decision(8, ControllerState(103.0, 0), Reason.HOLD_BAND)),
        # healthy and 8 in flight at limit 8: grow by one; a faster latency becomes the baseline.
        (8, sig(throttled=1, latency=80.0), Decision(9, ControllerState(80.0, 0), Reason.INCREASE)),
        # 4 in flight on average, under 0.6 x 8: the limit was not used, so it does not grow.
        (8, sig(in_flight=4), Decision(8, ControllerState(100.0, 0), Reason.UNUSED)),
        (10, sig(in_flight=10), Decision(10, ControllerState(100.0, 0), Reason.AT_MAX)),
        # 9 calls and an idle limit: no evidence (a used limit would count, see below).
        (8, sig(calls=9, errors=9, in_flight=1), Decision(8, WARM, Reason.TOO_FEW_CALLS)),
        # a limit outside the settings (they changed) is clamped first.
        (25, sig(in_flight=25), Decision(10, ControllerState(100.0, 0), Reason.AT_MAX)),
        (0, sig(in_flight=1), Decision(2, ControllerState(100.0, 0), Reason.INCREASE)),
    ],
)
def test_one_interval(current: int, signal: Signal, expected: Decision) -> None:
    assert next_limit(current, signal, WARM, SETTINGS) == expected


def test_first_interval_sets_the_baseline_and_judges_no_latency() -> None:
    decision = next_limit(8, sig(latency=900.0), ControllerState(), SETTINGS)
    assert decision == Decision(9, ControllerState(900.0, 0), Reason.INCREASE)


def under(probe_wait: int = 0, cooldown: int = 0, ceiling: int = 5) -> ControllerState:
    return ControllerState(100.0, cooldown, ceiling, probe_wait)


@pytest.mark.parametrize(
    ("current", "signal", "state", "expected"),
    [
        # 4 -> 5 reaches the ceiling 5: hold and count, up to probe_intervals (6) times...
        (4, sig(in_flight=4), under(0), Decision(4, under(1), Reason.PROBE_WAIT)),
        (4, sig(in_flight=4), under(5), Decision(4, under(6), Reason.PROBE_WAIT)),
        # ... then probe the ceiling.
        (4, sig(in_flight=4), under(6), Decision(5, under(0), Reason.INCREASE)),
        # under the ceiling growth is free.
        (3, sig(in_flight=3), under(0), Decision(4, under(0), Reason.INCREASE)),
        # too few calls is no evidence: the count stays, the cool-down runs down.
        (4, sig(calls=9, in_flight=1), under(3, cooldown=1), Decision(4, under(3), Reason.TOO_FEW_CALLS)),
        # any other interval that counts restarts the count.
        (4, sig(throttled=2, in_flight=4), under(3), Decision(4, under(0), Reason.HOLD_BAND)),
        (4, sig(in_flight=2), under(3), Decision(4, under(0), Reason.UNUSED)),
        (4, sig(in_flight=4), under(3, cooldown=1), Decision(4, under(0), Reason.COOLDOWN)),
        (4, sig(errors=6, in_flight=4), under(3), Decision(2, under(0, cooldown=2), Reason.ERRORS)),
        (
            4,
            sig(latency=250, in_flight=4),
            under(3),
            Decision(2, ControllerState(107.5, 2, 5), Reason.LATENCY),
        ),
        # the ceiling served without a refusal: the capacity grew, forget it and grow again.
        (5, sig(in_flight=5), under(0), Decision(6, ControllerState(100.0, 0), Reason.INCREASE)),
        (
            5,
            sig(throttled=2, in_flight=5),
            under(0),
            Decision(5, ControllerState(100.0, 0), Reason.HOLD_BAND),
        ),
        (5, sig(in_flight=5), under(0, cooldown=1), Decision(5, ControllerState(100.0, 0), Reason.COOLDOWN)),
        # at the ceiling but not used (2 < 0.6 x 5): no evidence that 5 is served, keep it.
        (5, sig(in_flight=2), under(0), Decision(5, under(0), Reason.UNUSED)),
        (5, sig(calls=9, in_flight=2), under(0), Decision(5, under(0), Reason.TOO_FEW_CALLS)),
    ],
)
def test_ceiling_and_probe(current: int, signal: Signal, state: ControllerState, expected: Decision) -> None:
    assert next_limit(current, signal, state, SETTINGS) == expected


def test_growth_by_more_than_one_stops_at_the_ceiling() -> None:
    settings = replace(SETTINGS, increase_step=3)
    assert next_limit(4, sig(in_flight=4), under(6, ceiling=6), settings) == Decision(
        6, under(0, ceiling=6), Reason.INCREASE
    )


def test_cooldown_holds_two_healthy_intervals_after_a_decrease_then_grows() -> None:
    limits, reasons = [], []
    limit, state = 8, WARM
    seq = [
        sig(errors=10, in_flight=4),
        sig(in_flight=4),
        sig(in_flight=4),
        sig(in_flight=4),
        sig(in_flight=5),
    ]
    for signal in seq:
        decision = next_limit(limit, signal, state, SETTINGS)
        limit, state = decision.limit, decision.state
        limits.append(limit)
        reasons.append(decision.reason)
    # 5xx set no ceiling: after the cool-down, 5 and 6 grow without a probe wait.
    assert limits == [4, 4, 4, 5, 6]
    assert reasons == [Reason.ERRORS, Reason.COOLDOWN, Reason.COOLDOWN, Reason.INCREASE, Reason.INCREASE]


def test_capacity_4_probes_5_once_every_10_intervals_with_the_defaults() -> None:
    """The benchmark's API after its drop: 4 calls served at once, the fifth refused at once."""
    settings = ControllerSettings()
    limit, state = 5, WARM
    limits, reasons = [], []
    for _ in range(21):
        served = min(limit, 4)
        signal = sig(calls=25 * limit, throttled=25 * (limit - served), in_flight=float(served))
        decision = next_limit(limit, signal, state, settings)
        limits.append(limit)
        reasons.append(decision.reason)
        limit, state = decision.limit, decision.state
    cycle = [Reason.THROTTLED, *[Reason.COOLDOWN] * 2, *[Reason.PROBE_WAIT] * 6, Reason.INCREASE]
    assert reasons == [*cycle, *cycle, Reason.THROTTLED]
    assert limits == [5, *[4] * 9, 5, *[4] * 9, 5]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ControllerSettings(min_limit=3, max_limit=2), "max_limit must be >= min_limit, got (2, 3)"),
        (lambda: ControllerSettings(min_limit=0), "min_limit must be >= 1, got 0"),
        (lambda: ControllerSettings(decrease_factor=1.0), "decrease_factor must be in (0, 1), got 1.0"),
        (lambda: ControllerSettings(probe_intervals=-1), "probe_intervals must be >= 0, got -1"),
        (lambda: Signal(5, 3, 3, 1.0, 1.0), "throttled + errors must be <= calls, got (3, 3, 5)"),
        (lambda: BreakerSettings(probe_limit=0), "probe_limit must be >= 1, got 0"),
    ],
)
def test_invalid_inputs_name_the_rule_and_the_value(make: object, message: str) -> None:
    with pytest.raises(ControllerInputError) as raised:
        make()  # type: ignore[operator]
    assert message in str(raised.value)


BREAKER = BreakerSettings(error_threshold=0.5, min_calls=20, open_seconds=300.0, probe_limit=1)
OPEN_AT_0 = BreakerState(BreakerMode.OPEN, 0.0)


def test_breaker_edges() -> None:
    closed = BreakerState()
    assert next_breaker(closed, sig(calls=20, errors=11), 0.0, BREAKER).state == OPEN_AT_0
    assert next_breaker(closed, sig(calls=20, errors=11), 0.0, BREAKER).pause
    # 60% errors over 10 calls: too few to open.
    assert next_breaker(closed, sig(calls=10, errors=6), 0.0, BREAKER).state == closed
    assert next_breaker(closed, sig(calls=20, errors=10), 0.0, BREAKER).state == closed

    waiting = next_breaker(OPEN_AT_0, sig(calls=0), 299.0, BREAKER)
    assert (waiting.state, waiting.pause, waiting.limit_cap) == (OPEN_AT_0, True, None)
    probing = next_breaker(OPEN_AT_0, sig(calls=0), 300.0, BREAKER)
    half = BreakerState(BreakerMode.HALF_OPEN, 0.0)
    assert (probing.state, probing.pause, probing.limit_cap) == (half, False, 1)

    assert next_breaker(half, sig(calls=0), 350.0, BREAKER).state == half
    healthy = next_breaker(half, sig(calls=2, errors=1), 360.0, BREAKER)
    assert (healthy.state, healthy.pause, healthy.limit_cap) == (BreakerState(), False, None)
    failed = next_breaker(half, sig(calls=2, errors=2), 400.0, BREAKER)
    assert (failed.state, failed.pause) == (BreakerState(BreakerMode.OPEN, 400.0), True)


def test_a_capacity_drop_costs_one_burst_of_429s_then_one_probe_per_cycle() -> None:
    """8 refused with 4 served: the ceiling is 5, not 8, so the limit does not grow freely into a
    second refusal right after the cool-down; 5 is next tried after the probe wait."""
    settings = ControllerSettings()
    limit, state = 8, WARM
    reasons = []
    for _ in range(11):
        served = min(limit, 4)
        signal = sig(calls=25 * limit, throttled=25 * (limit - served), in_flight=float(served))
        decision = next_limit(limit, signal, state, settings)
        reasons.append(decision.reason)
        limit, state = decision.limit, decision.state
    assert reasons == [
        Reason.THROTTLED,
        *[Reason.COOLDOWN] * 2,
        *[Reason.PROBE_WAIT] * 6,
        Reason.INCREASE,
        Reason.THROTTLED,
    ]


def test_a_used_low_limit_counts_with_fewer_calls_than_min_calls() -> None:
    """Limit 1, 1 s calls, 5 s intervals: 4 calls can never reach min_calls 10, but the one slot
    was busy, so the interval is evidence and the limit grows; an idle one still holds."""
    settings = ControllerSettings(cooldown_intervals=0)
    busy = sig(calls=4, in_flight=0.8)
    assert next_limit(1, busy, WARM, settings).reason is Reason.INCREASE
    idle = sig(calls=4, in_flight=0.3)
    assert next_limit(1, idle, WARM, settings).reason is Reason.TOO_FEW_CALLS
