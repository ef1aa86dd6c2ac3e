"""Invariants of the concurrency controller, for any settings, starting state and signals."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

from hypothesis import assume, event, given
from hypothesis import settings as run_settings
from hypothesis import strategies as st

from sluice_fanout.handlers.controller import (
    MIN_BASELINE_MS,
    BreakerMode,
    BreakerSettings,
    BreakerState,
    ControllerSettings,
    ControllerState,
    Reason,
    Signal,
    counts,
    decrease,
    next_breaker,
    next_limit,
)

unit = st.floats(min_value=0.0, max_value=0.5)


@st.composite
def settings(draw: st.DrawFn) -> ControllerSettings:
    low = draw(st.integers(min_value=1, max_value=20))
    return ControllerSettings(
        min_limit=low,
        max_limit=draw(st.integers(min_value=low, max_value=low + 60)),
        throttle_threshold=draw(unit),
        error_threshold=draw(unit),
        latency_tolerance=draw(st.floats(min_value=1.1, max_value=5.0)),
        decrease_factor=draw(st.floats(min_value=0.05, max_value=0.99)),
        increase_step=draw(st.integers(min_value=1, max_value=5)),
        min_calls=draw(st.integers(min_value=1, max_value=50)),
        grow_below=draw(st.floats(min_value=0.1, max_value=0.9)),
        saturation=draw(st.floats(min_value=0.1, max_value=1.0)),
        cooldown_intervals=draw(st.integers(min_value=0, max_value=5)),
        probe_intervals=draw(st.integers(min_value=0, max_value=8)),
        baseline_rise=draw(st.floats(min_value=0.01, max_value=1.0)),
    )


@st.composite
def signals(draw: st.DrawFn) -> Signal:
    calls = draw(st.integers(min_value=0, max_value=500))
    throttled = draw(st.integers(min_value=0, max_value=calls))
    return Signal(
        calls=calls,
        throttled=throttled,
        errors=draw(st.integers(min_value=0, max_value=calls - throttled)),
        latency_ms=draw(st.floats(min_value=0.0, max_value=10_000.0)),
        in_flight=draw(st.floats(min_value=0.0, max_value=100.0)),
    )


# Healthy: no 429s or errors and a latency no baseline is below; in_flight varies.
healthy_signals = st.builds(
    Signal,
    calls=st.integers(min_value=50, max_value=500),  # >= any generated min_calls
    throttled=st.just(0),
    errors=st.just(0),
    latency_ms=st.floats(min_value=0.0, max_value=MIN_BASELINE_MS),
    in_flight=st.floats(min_value=0.0, max_value=100.0),
)
any_signals = signals() | healthy_signals

baselines = st.none() | st.floats(min_value=MIN_BASELINE_MS, max_value=10_000.0)
# A ceiling anywhere, also outside the limits (settings changed) and under min or over max.
ceilings = st.none() | st.integers(min_value=1, max_value=90)
states = st.builds(
    ControllerState,
    baselines,
    st.just(0) | st.integers(min_value=0, max_value=10),
    ceilings,
    st.integers(min_value=0, max_value=10),
)
no_ceiling_states = st.builds(ControllerState, baselines, st.integers(min_value=0, max_value=10))
currents = st.integers(min_value=-5, max_value=200)

# For tests that step the rule through hundreds of intervals per example: on a loaded machine one
# example has taken 600 ms, over hypothesis' 200 ms default, which fails the test as flaky. The
# work of an example is bounded by its intervals, not by time.
many_intervals = run_settings(deadline=None)


def run(current: int, state: ControllerState, s: ControllerSettings, seq: list[Signal]) -> list[int]:
    limits = []
    for signal in seq:
        decision = next_limit(current, signal, state, s)
        current, state = decision.limit, decision.state
        limits.append(current)
    return limits


@many_intervals
@given(settings(), currents, states, st.lists(any_signals, max_size=60))
def test_limit_stays_within_bounds(
    s: ControllerSettings, current: int, state: ControllerState, seq: list[Signal]
) -> None:
    for limit in run(current, state, s, seq):
        assert type(limit) is int
        assert s.min_limit <= limit <= s.max_limit


@st.composite
def overloads(
    draw: st.DrawFn, kinds: tuple[str, ...] = ("throttled", "errors", "latency")
) -> tuple[ControllerSettings, ControllerState, Signal]:
    """A signal with enough calls over the 429, error or latency threshold."""
    s = draw(settings())
    calls = draw(st.integers(min_value=s.min_calls, max_value=500))
    baseline = draw(st.floats(min_value=MIN_BASELINE_MS, max_value=1_000.0))
    kind = draw(st.sampled_from(kinds))
    bad = draw(st.integers(min_value=math.floor(calls * 0.5) + 1, max_value=calls))
    latency = draw(st.floats(min_value=0.0, max_value=10_000.0))
    if kind == "latency":
        latency = baseline * s.latency_tolerance * draw(st.floats(min_value=1.001, max_value=10.0))
    signal = Signal(
        calls=calls,
        throttled=bad if kind == "throttled" else 0,
        errors=bad if kind == "errors" else 0,
        latency_ms=latency,
        in_flight=draw(st.floats(min_value=0.0, max_value=100.0)),
    )
    state = ControllerState(
        baseline,
        draw(st.integers(min_value=0, max_value=10)),
        draw(ceilings),
        draw(st.integers(min_value=0, max_value=10)),
    )
    return s, state, signal


@given(overloads(), st.data())
def test_overload_backs_off(
    case: tuple[ControllerSettings, ControllerState, Signal], data: st.DataObject
) -> None:
    s, state, signal = case
    current = data.draw(st.integers(min_value=s.min_limit - 2, max_value=s.max_limit + 2))
    before = s.clamp(current)
    decision = next_limit(current, signal, state, s)
    assert decision.reason in {Reason.THROTTLED, Reason.ERRORS, Reason.LATENCY}
    assert decision.limit < before or decision.limit == before == s.min_limit
    # Only a refusal says where the API's capacity ends; 5xx and slow answers leave the ceiling.
    # A refusal's ceiling is the first limit above the new one (never above the refused one).
    expected = (
        min(before, decision.limit + s.increase_step)
        if decision.reason is Reason.THROTTLED
        else state.ceiling
    )
    assert decision.state.ceiling == expected
    assert (decision.state.cooldown_left, decision.state.probe_wait) == (s.cooldown_intervals, 0)


@given(overloads(kinds=("throttled",)), st.data())
def test_throttled_decrease_goes_to_the_served_concurrency_within_one_step_and_the_halving(
    case: tuple[ControllerSettings, ControllerState, Signal], data: st.DataObject
) -> None:
    """decrease(L) <= L' <= L - 1 (both clamped), and L' = ceil(in_flight) whenever that is inside."""
    s, state, signal = case
    current = data.draw(st.integers(min_value=s.min_limit - 2, max_value=s.max_limit + 2))
    signal = replace(signal, in_flight=data.draw(st.floats(min_value=0.0, max_value=2.0 * s.max_limit + 2)))
    before = s.clamp(current)
    low, high = decrease(before, s), max(s.min_limit, before - 1)
    after = next_limit(current, signal, state, s).limit
    assert low <= after <= high
    served = math.ceil(signal.in_flight - 1e-9)
    if low <= served <= high:
        assert after == served


@many_intervals
@given(settings(), currents, no_ceiling_states, st.data())
def test_healthy_saturated_signal_reaches_max_on_schedule(
    s: ControllerSettings, current: int, state: ControllerState, data: st.DataObject
) -> None:
    """After the cool-down left, +step per interval until max: ceil((max - L0) / step) intervals."""
    slowest = state.baseline_ms if state.baseline_ms is not None else 10_000.0
    signal = Signal(
        calls=data.draw(st.integers(min_value=s.min_calls, max_value=500)),
        throttled=0,
        errors=0,
        latency_ms=data.draw(st.floats(min_value=0.0, max_value=slowest)),
        in_flight=data.draw(st.floats(min_value=s.max_limit, max_value=s.max_limit + 10.0)),
    )
    start = s.clamp(current)
    steps = state.cooldown_left + math.ceil((s.max_limit - start) / s.increase_step)
    limits = run(current, state, s, [signal] * (steps + 5))
    expected = [
        min(s.max_limit, start + s.increase_step * max(0, i - state.cooldown_left))
        for i in range(1, steps + 6)
    ]
    assert limits == expected
    assert limits[steps - 1 if steps else 0] == s.max_limit


@given(settings(), states, healthy_signals | signals(), st.data())
def test_unused_limit_does_not_grow(
    s: ControllerSettings, state: ControllerState, signal: Signal, data: st.DataObject
) -> None:
    """Even a healthy interval does not grow a limit whose in_flight stayed under saturation x limit."""
    current = data.draw(st.integers(min_value=s.min_limit - 2, max_value=s.max_limit))
    used = s.saturation * s.clamp(current)
    in_flight = data.draw(st.floats(min_value=0.0, max_value=used, exclude_max=True))
    signal = replace(signal, in_flight=in_flight)
    assert next_limit(current, signal, state, s).limit <= s.clamp(current)


def latency_warmup(baseline: float | None, signal: Signal, s: ControllerSettings) -> int:
    """Intervals until the baseline is close enough to a constant latency for it to count as healthy."""
    p = max(signal.latency_ms, MIN_BASELINE_MS)
    if baseline is None or p <= baseline or s.baseline_rise == 1:
        return 1
    near = 1 + s.grow_below * (s.latency_tolerance - 1)
    ratio = (p - p / near) / (p - baseline)
    if ratio >= 1:
        return 1
    return math.ceil(math.log(ratio) / math.log(1 - s.baseline_rise)) + 2  # +2: float rounding


def slower_api(s: ControllerSettings, state: ControllerState) -> st.SearchStrategy[Signal]:
    """Healthy, saturated calls at a latency above the tolerance: the API got slower for good."""
    base = state.baseline_ms or MIN_BASELINE_MS
    return st.builds(
        Signal,
        calls=st.integers(min_value=s.min_calls, max_value=500),
        throttled=st.just(0),
        errors=st.just(0),
        latency_ms=st.floats(min_value=1.001, max_value=50.0).map(lambda k: k * s.latency_tolerance * base),
        in_flight=st.just(float(s.max_limit)),
    )


def used_up_to(s: ControllerSettings) -> st.SearchStrategy[Signal]:
    """Healthy calls whose in_flight uses a limit in [min, max] exactly and the next one not:
    the growth stops right there, next to the saturation boundary."""
    return st.builds(
        Signal,
        calls=st.integers(min_value=s.min_calls, max_value=500),
        throttled=st.just(0),
        errors=st.just(0),
        latency_ms=st.floats(min_value=0.0, max_value=MIN_BASELINE_MS),
        in_flight=st.integers(min_value=s.min_limit, max_value=s.max_limit).map(lambda n: s.saturation * n),
    )


@many_intervals
@given(settings(), currents, states, st.data())
def test_steady_signal_does_not_oscillate(
    s: ControllerSettings, current: int, state: ControllerState, data: st.DataObject
) -> None:
    """Down only, then up only (at most one change of direction), then constant after a bound.

    The bound: the baseline's catch-up with a slower latency (`latency_warmup`), a cool-down, at most
    max - min decreases, ceil((max - min) / step) increases and one probe wait: a constant signal
    throttles in every interval or in none, so a ceiling is only set on the way down and the way
    up meets one (the state's or the last refused limit) at most once; being used there clears it.
    """
    signal = data.draw(any_signals | slower_api(s, state) | used_up_to(s))
    # Ceilings the way up meets: anywhere in the limits, and just over the highest limit the
    # signal uses, where the growth stops for two reasons at once.
    used = [n for n in range(s.min_limit, s.max_limit + 1) if signal.in_flight >= s.saturation * n]
    stop = st.just(used[-1] + 1) if used else st.nothing()
    ceiling = data.draw(st.just(state.ceiling) | st.integers(s.min_limit, s.max_limit) | stop)
    state = replace(state, ceiling=ceiling)
    span = s.max_limit - s.min_limit
    warmup = (
        latency_warmup(state.baseline_ms, signal, s)
        + max(state.cooldown_left, s.cooldown_intervals)
        + span
        + math.ceil(span / s.increase_step)
        + s.probe_intervals
        + 1
    )
    limits = [s.clamp(current), *run(current, state, s, [signal] * (warmup + 200))]
    directions = [b > a for a, b in itertools.pairwise(limits) if a != b]
    event("went down, then up" if len(set(directions)) == 2 else f"{len(set(directions))} direction(s)")
    assert directions == sorted(directions), f"went up, then down: {limits[:60]}"
    assert len(set(limits[warmup:])) == 1, f"not constant after {warmup}: {limits[warmup : warmup + 30]}"


def capacity_signal(limit: int, capacity: int, refused_per_slot: int = 100) -> Signal:
    """A saturated API of `capacity` concurrent calls: it serves min(limit, capacity) at a time,
    100 calls per slot and interval, and refuses the calls of every slot beyond (a 429 answers at
    once, so a refused slot may call more often than a served one)."""
    return Signal(
        calls=100 * min(limit, capacity) + refused_per_slot * max(0, limit - capacity),
        throttled=refused_per_slot * max(0, limit - capacity),
        errors=0,
        latency_ms=100.0,
        in_flight=float(min(limit, capacity)),
    )


@many_intervals
@given(settings(), currents, st.data())
def test_hold_band_settles_against_an_api_that_answers_the_limit(
    s: ControllerSettings, current: int, data: st.DataObject
) -> None:
    """Closed loop: where the 429 share first passes grow_below x threshold inside the hold band
    (i.e. not already over the threshold), the limit settles there instead of cycling +1 / x factor.

    The other case (one call over capacity already exceeds the threshold, e.g. capacity 4 with a
    2% threshold) is the probe cycle of the next test.
    """
    s = replace(s, increase_step=1)
    capacity = data.draw(st.integers(min_value=s.min_limit, max_value=s.max_limit))

    def share(limit: int) -> float:
        return capacity_signal(limit, capacity).throttle_share

    first_over_band = next(
        (n for n in range(s.min_limit, s.max_limit + 1) if share(n) > s.grow_below * s.throttle_threshold),
        None,
    )
    assume(first_over_band is None or share(first_over_band) <= s.throttle_threshold)
    span = s.max_limit - s.min_limit
    warmup = 2 * span + s.cooldown_intervals + 2
    limit, state = current, ControllerState(100.0, 0)
    limits = []
    for _ in range(warmup + 100):
        decision = next_limit(limit, capacity_signal(s.clamp(limit), capacity), state, s)
        limit, state = decision.limit, decision.state
        limits.append(limit)
    assert len(set(limits[warmup:])) == 1, f"cycles: {limits[-30:]}"
    assert share(limits[-1]) <= s.throttle_threshold


def closed_loop(
    limit: int, state: ControllerState, s: ControllerSettings, capacities: list[int], refused_per_slot: int
) -> list[int]:
    """The limit in force in each interval against an API whose capacity is capacities[i]."""
    limits = []
    for capacity in capacities:
        limit = s.clamp(limit)
        limits.append(limit)
        decision = next_limit(limit, capacity_signal(limit, capacity, refused_per_slot), state, s)
        limit, state = decision.limit, decision.state
    return limits


def probe_period(s: ControllerSettings) -> int:
    """The refused interval, the cool-down, the probe wait and the interval that grows."""
    return s.cooldown_intervals + s.probe_intervals + 2


def settle_bound(s: ControllerSettings, state: ControllerState) -> int:
    """Down by at least one per refused interval, up by step per growing one, a stale ceiling and
    the ceiling of the descent each met once, then one full probe cycle from the capacity."""
    span = s.max_limit - s.min_limit
    return span + math.ceil(span / s.increase_step) + state.cooldown_left + 3 * probe_period(s)


refusal_rates = st.integers(min_value=1, max_value=1_000)


@many_intervals
@given(settings(), currents, states, refusal_rates, st.data())
def test_settles_on_a_hard_capacity_and_probes_one_step_over_it_once_per_cycle(
    s: ControllerSettings, current: int, state: ControllerState, refused_per_slot: int, data: st.DataObject
) -> None:
    """Where one call over the capacity C already passes the threshold (the benchmark: 4 -> 5),
    after `settle_bound` intervals, exactly:
    - every limit is in [C, C + step] (in_flight is exact here, so a refusal lands on C);
    - the intervals with 429s are those over C, and they come exactly every
      cooldown + probe_intervals + 2 intervals: their share is 1 / (cooldown + probe_intervals + 2),
      at most 1 / (probe_intervals + 2);
    - at C = max_limit there are none.
    """
    capacity = data.draw(st.integers(min_value=s.min_limit, max_value=s.max_limit))
    over = capacity_signal(capacity + 1, capacity, refused_per_slot)
    assume(over.throttle_share > s.throttle_threshold)
    state = replace(state, baseline_ms=100.0)  # the latency signal is not under test here
    warmup, period = settle_bound(s, state), probe_period(s)
    limits = closed_loop(current, state, s, [capacity] * (warmup + 4 * period), refused_per_slot)
    settled = limits[warmup:]
    assert all(capacity <= n <= capacity + s.increase_step for n in settled), f"{limits}"
    refused = [i for i, n in enumerate(settled) if n > capacity]
    event("probes" if refused else "at max")
    if capacity == s.max_limit:
        assert not refused
        return
    assert refused, f"never probes: {limits}"
    assert refused[0] < period
    assert all(b - a == period for a, b in itertools.pairwise(refused)), f"{refused} in {limits}"


@many_intervals
@given(settings(), currents, refusal_rates, st.data())
def test_reaches_a_risen_capacity_within_cooldown_probe_and_the_climb(
    s: ControllerSettings, current: int, refused_per_slot: int, data: st.DataObject
) -> None:
    """Settled against C1, the capacity rises to C2 at any point of the probe cycle: the limit
    reaches C2 within cooldown + probe_intervals + 1 + ceil((C2 - C1 - 1) / step) intervals (the
    worst case starts just after a refusal: cool-down, probe wait, the probe, then the climb)."""
    assume(s.max_limit > s.min_limit)
    low = data.draw(st.integers(min_value=s.min_limit, max_value=s.max_limit - 1))
    high = data.draw(st.integers(min_value=low + 1, max_value=s.max_limit))
    assume(capacity_signal(low + 1, low, refused_per_slot).throttle_share > s.throttle_threshold)
    state = ControllerState(100.0)
    settle = settle_bound(s, state) + data.draw(st.integers(min_value=0, max_value=probe_period(s) - 1))
    bound = s.cooldown_intervals + s.probe_intervals + 1 + math.ceil((high - low - 1) / s.increase_step)
    limits = closed_loop(current, state, s, [low] * settle + [high] * (bound + 20), refused_per_slot)
    after = limits[settle:]
    reached = next((i for i, n in enumerate(after) if n >= high), None)
    assert reached is not None, f"never reaches {high}: {after}"
    assert reached <= bound, f"{high} after {reached} > {bound} intervals: {after}"
    event(f"reached at the bound: {reached == bound}")


@given(settings(), currents, states, any_signals)
def test_baseline_learns_only_from_intervals_that_are_not_throttled_or_failing(
    s: ControllerSettings, current: int, state: ControllerState, signal: Signal
) -> None:
    """A 429 or a failure answers fast: its latency is not the API's, and must not lower B."""
    after = next_limit(current, signal, state, s)
    if not counts(s.clamp(current), signal, s) or after.reason in {Reason.THROTTLED, Reason.ERRORS}:
        assert after.state.baseline_ms == state.baseline_ms
    else:
        assert after.state.baseline_ms is not None


# --- breaker -----------------------------------------------------------------------------------

breaker_settings = st.builds(
    BreakerSettings,
    error_threshold=unit,
    min_calls=st.integers(min_value=1, max_value=50),
    open_seconds=st.floats(min_value=0.0, max_value=1_200.0),
    probe_limit=st.integers(min_value=1, max_value=5),
)
# All errors, no calls (paused or idle), healthy, or anything: every edge gets taken.
failing_signals = st.integers(min_value=50, max_value=500).map(lambda n: Signal(n, 0, n, 100.0, 1.0))
breaker_signals = failing_signals | st.just(Signal(0, 0, 0, 0.0, 0.0)) | healthy_signals | signals()
steps = st.lists(st.tuples(breaker_signals, st.floats(min_value=0.0, max_value=600.0)), max_size=40)


@given(breaker_settings, steps)
def test_breaker_follows_its_state_machine(s: BreakerSettings, seq: list[tuple[Signal, float]]) -> None:
    state, now = BreakerState(), 0.0
    for signal, elapsed in seq:
        now += elapsed
        decision = next_breaker(state, signal, now, s)
        new = decision.state
        failing = signal.calls > 0 and signal.errors / signal.calls > s.error_threshold
        if state.mode is BreakerMode.CLOSED:
            opens = failing and signal.calls >= s.min_calls
            assert new == (BreakerState(BreakerMode.OPEN, now) if opens else state)
        elif state.mode is BreakerMode.OPEN:
            assert state.opened_at is not None
            cooled = now - state.opened_at >= s.open_seconds
            assert new.mode is (BreakerMode.HALF_OPEN if cooled else BreakerMode.OPEN)
            assert new.opened_at == state.opened_at
        elif failing:
            assert new == BreakerState(BreakerMode.OPEN, now)
        else:
            assert new.mode is (BreakerMode.CLOSED if signal.calls else BreakerMode.HALF_OPEN)
        # Paused exactly while OPEN, never while CLOSED; the probe cap exactly while HALF_OPEN.
        assert decision.pause is (new.mode is BreakerMode.OPEN)
        assert decision.limit_cap == (s.probe_limit if new.mode is BreakerMode.HALF_OPEN else None)
        state = new


@given(breaker_settings, st.floats(min_value=0.0, max_value=1e6), st.lists(signals(), max_size=20), st.data())
def test_breaker_stays_open_through_the_cooldown(
    s: BreakerSettings, opened_at: float, seq: list[Signal], data: st.DataObject
) -> None:
    assume(s.open_seconds > 0)
    state = BreakerState(BreakerMode.OPEN, opened_at)
    for signal in seq:
        now = opened_at + data.draw(st.floats(min_value=0.0, max_value=s.open_seconds, exclude_max=True))
        assume(now - opened_at < s.open_seconds)  # the sum can round up onto the boundary
        decision = next_breaker(state, signal, now, s)
        assert (decision.state, decision.pause) == (state, True)
