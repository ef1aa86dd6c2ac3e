"""Dynamic concurrency control: how the worker's limit on the legacy API moves, and when to stop.

Pure: plain values in, plain values out; no boto3, clock or environment (the caller passes the time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum

MIN_BASELINE_MS = 1.0  # below a millisecond, latency differences of an HTTP API are noise


class ControllerInputError(ValueError):
    """A signal or settings value the controller cannot work with."""


def _require(ok: bool, who: str, rule: str, got: object) -> None:
    if not ok:
        raise ControllerInputError(f"{who}: {rule}, got {got!r}")


@dataclass(frozen=True)
class Signal:
    """What the worker saw in one control interval. Counts are calls to the legacy API.

    The controller Lambda feeds one per control interval (e.g. 5 seconds of the worker's metrics).
    """

    calls: int
    """Calls made, including the throttled and failed ones."""
    throttled: int
    """Calls answered 429 (or RetryLater)."""
    errors: int
    """Calls that failed with a 5xx or a timeout."""
    latency_ms: float
    """Mean latency of the calls the API answered, in milliseconds (ApiLatency Sum / SampleCount:
    refused calls are not in it, a 429 answers fast and would drag it down)."""
    in_flight: float
    """Average calls in flight among those the API answered: ApiLatency Sum / interval length.
    The concurrency the API actually served; it tells whether the limit was used (calls per
    interval alone depend on latency and interval length). It counts time inside answered calls
    only: a worker slot that spends part of its time between calls makes it understate what the
    API served, so a refusal can land one below the capacity K, and the ceiling one step above
    that: regaining K then costs a probe wait (cooldown_intervals + probe_intervals intervals)."""

    def __post_init__(self) -> None:
        _require(self.calls >= 0, "Signal", "calls must be >= 0", self.calls)
        _require(self.throttled >= 0, "Signal", "throttled must be >= 0", self.throttled)
        _require(self.errors >= 0, "Signal", "errors must be >= 0", self.errors)
        _require(
            self.throttled + self.errors <= self.calls,
            "Signal",
            "throttled + errors must be <= calls",
            (self.throttled, self.errors, self.calls),
        )
        _require(self.latency_ms >= 0, "Signal", "latency_ms must be >= 0", self.latency_ms)
        _require(self.in_flight >= 0, "Signal", "in_flight must be >= 0", self.in_flight)

    @property
    def throttle_share(self) -> float:
        return self.throttled / self.calls if self.calls else 0.0

    @property
    def error_share(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class ControllerSettings:
    """Tuning of the limit rule. Counts are in intervals; the defaults suit 5-second intervals."""

    min_limit: int = 1
    """Lowest limit, >= 1 (0 would stop the work; that is the breaker's job)."""
    max_limit: int = 10
    """Highest limit, >= min_limit: the API's documented concurrency limit. The deployed
    controller always has it from its settings (the stack's `concurrency`); this default is for
    the rule used alone."""
    throttle_threshold: float = 0.02
    """Share of 429s above which the limit decreases, in [0, 1). The benchmark's goal is < 2%."""
    error_threshold: float = 0.05
    """Share of 5xx/timeouts above which the limit decreases, in [0, 1)."""
    latency_tolerance: float = 2.0
    """Mean latency above tolerance x baseline decreases the limit; > 1."""
    decrease_factor: float = 0.5
    """Multiplicative decrease, in (0, 1)."""
    increase_step: int = 1
    """Additive increase per healthy interval, >= 1."""
    min_calls: int = 10
    """Intervals with fewer calls hold the limit and leave the baseline alone; >= 1."""
    grow_below: float = 0.5
    """Fraction of each threshold (and of the latency excess) under which an interval is healthy
    enough to grow; between that and the threshold the limit holds. In (0, 1)."""
    saturation: float = 0.6
    """The limit counts as used when in_flight >= saturation x limit. In (0, 1]. in_flight counts
    only time inside answered calls; every item also costs queue, state-store and Step Functions
    requests around its call, so a saturated worker keeps the API busy well under 100% of the
    time (72% on the embedded AWS with 1 s calls, where 0.8 left the limit unused for ever)."""
    cooldown_intervals: int = 2
    """Intervals after a decrease in which the limit does not grow; >= 0."""
    probe_intervals: int = 6
    """Intervals that would grow the limit to the ceiling (not proven since a refusal) hold first; >= 0.
    One interval in cooldown_intervals + probe_intervals + 2 at most probes the ceiling.

    Probing is how the rule learns that capacity came back, so it keeps paying for it: the share
    of 429s among all calls is about the 429 share of a probe interval divided by
    cooldown_intervals + probe_intervals + 2. With the defaults that stays under 2% only while a
    refused slot makes no more calls than a served one (at most 20% 429s at K + 1 = 5). When
    refusals come back much faster than answers, or the signal's delay keeps a probe running for
    more than one interval, raise it; that slows the recovery by as many intervals."""
    baseline_rise: float = 0.05
    """Weight of a slower mean latency in the baseline per interval, in (0, 1]."""

    def __post_init__(self) -> None:
        who = "ControllerSettings"
        _require(self.min_limit >= 1, who, "min_limit must be >= 1", self.min_limit)
        _require(
            self.max_limit >= self.min_limit,
            who,
            "max_limit must be >= min_limit",
            (self.max_limit, self.min_limit),
        )
        for name in ("throttle_threshold", "error_threshold"):
            value = getattr(self, name)
            _require(0 <= value < 1, who, f"{name} must be in [0, 1)", value)
        _require(self.latency_tolerance > 1, who, "latency_tolerance must be > 1", self.latency_tolerance)
        _require(0 < self.decrease_factor < 1, who, "decrease_factor must be in (0, 1)", self.decrease_factor)
        _require(self.increase_step >= 1, who, "increase_step must be >= 1", self.increase_step)
        _require(self.min_calls >= 1, who, "min_calls must be >= 1", self.min_calls)
        _require(0 < self.grow_below < 1, who, "grow_below must be in (0, 1)", self.grow_below)
        _require(0 < self.saturation <= 1, who, "saturation must be in (0, 1]", self.saturation)
        _require(
            self.cooldown_intervals >= 0, who, "cooldown_intervals must be >= 0", self.cooldown_intervals
        )
        _require(self.probe_intervals >= 0, who, "probe_intervals must be >= 0", self.probe_intervals)
        _require(0 < self.baseline_rise <= 1, who, "baseline_rise must be in (0, 1]", self.baseline_rise)

    def clamp(self, limit: int) -> int:
        return max(self.min_limit, min(self.max_limit, limit))


@dataclass(frozen=True)
class ControllerState:
    """What the rule remembers between intervals (the Lambda stores it, e.g. in DynamoDB)."""

    baseline_ms: float | None = None
    """Healthy mean latency (B); None until the first interval that counts."""
    cooldown_left: int = 0
    """Intervals left in which the limit may not grow."""
    ceiling: int | None = None
    """The lowest limit not proven since the last refusal (C): min(refused limit, new limit + step).
    None before any refusal and once a limit at or above it was used without overload (the
    API's capacity grew).

    It is the first limit above what the API served, not the refused limit: after a capacity drop
    (8 refused, 4 served) free growth to 5 would meet a refusal again right after the cool-down, a
    second burst of 429s for one drop. The price: an in_flight read low (capacity 5, 4 read) costs
    one probe wait before 5 is tried."""
    probe_wait: int = 0
    """Consecutive counting intervals held so far (PROBE_WAIT, W) before growing to the ceiling.

    Every other interval that counts resets it (the hold band says the API is at its edge at this
    limit, which is what the wait must rule out). An interval with too few calls keeps it, as it
    keeps everything: resetting there would let a bursty load with quiet intervals between busy
    ones put the probe off for ever, and the rule would never see the capacity come back."""


class Reason(StrEnum):
    TOO_FEW_CALLS = "too-few-calls"
    THROTTLED = "throttled"
    ERRORS = "errors"
    LATENCY = "latency"
    COOLDOWN = "cooldown"
    HOLD_BAND = "hold-band"
    PROBE_WAIT = "probe-wait"
    UNUSED = "unused"
    AT_MAX = "at-max"
    INCREASE = "increase"


@dataclass(frozen=True)
class Decision:
    limit: int
    state: ControllerState
    reason: Reason


def decrease(limit: int, settings: ControllerSettings) -> int:
    """floor(limit x factor), never below min_limit: strictly lower unless limit is min_limit."""
    # floor(L x f) < L in exact arithmetic; L - 1 guards float rounding when f is a hair under 1.
    return max(settings.min_limit, min(limit - 1, math.floor(limit * settings.decrease_factor)))


def next_baseline(baseline: float | None, latency_ms: float, rise: float) -> float:
    """Fast down to a lower latency, slowly up towards a higher one; never below MIN_BASELINE_MS.

    The baseline B is the latency of a healthy API, a slow-moving minimum of the mean latency m:
    B' = m when m <= B, else B + rise * (m - B), so a permanent slow-down of the API is accepted
    after a while instead of pinning the limit at min forever.
    """
    latency_ms = max(latency_ms, MIN_BASELINE_MS)
    if baseline is None or latency_ms <= baseline:
        return latency_ms
    return baseline + rise * (latency_ms - baseline)


def throttled_decrease(limit: int, in_flight: float, settings: ControllerSettings) -> int:
    """To the concurrency the API served (rounded up), but at least one step down unless limit
    is min_limit, and never below `decrease`.

    Up, not to the nearest: in_flight counts only time inside calls, so a slot the API kept
    busy reads low by the time spent around each call (1.4 for 2 served on the embedded AWS);
    rounding down there lands below the capacity and costs a probe wait to regain it, rounding
    up a reading that is a hair over the capacity costs one more refusal. in_flight can also sit
    far under the capacity (the load ended midway through the interval, slots spent time between
    calls); `decrease` bounds what one interval can take.
    """
    # Capped at the limit before ceil: in_flight is a float and may be inf. The small epsilon
    # keeps float noise (2.0000000001) from counting as a third slot.
    served = math.ceil(min(in_flight, limit) - 1e-9)
    return max(decrease(limit, settings), min(limit - 1, served))


def counts(limit: int, signal: Signal, settings: ControllerSettings) -> bool:
    """Whether an interval is evidence (rule 1): enough calls, or a limit that was used.

    A used limit (calls > 0 and in_flight >= saturation x limit) counts whatever its calls: at a
    low limit with slow calls an interval cannot hold min_calls calls, and holding there would
    keep the limit low for ever.
    """
    used = signal.calls > 0 and signal.in_flight >= settings.saturation * limit
    return signal.calls >= settings.min_calls or used


def next_limit(
    current: int, signal: Signal, state: ControllerState, settings: ControllerSettings
) -> Decision:
    """The limit for the next interval, from the current limit and this interval's signal.

    AIMD with a latency baseline and a ceiling; the controller Lambda applies the limit as the
    worker's reserved concurrency. `current` outside [min_limit, max_limit] (settings changed) is
    clamped first; the result is always inside. With L the clamped limit, t = throttled / calls,
    e = errors / calls, m = mean latency, n = in_flight, B the baseline, C the ceiling, W the
    probe wait, g = grow_below and D(L) = `decrease(L)`:

    1. The interval does not count (`counts`): hold; B, C and W stay, only the cool-down runs down.
    2. Overloaded, checked in this order; each starts `cooldown_intervals` of cool-down, W' = 0:
       t > throttle_threshold: L' = `throttled_decrease`, C' = min(L, L' + increase_step);
       e > error_threshold, or m > latency_tolerance * B (once B exists): L' = D(L), C unchanged.
    3. In cool-down: hold (the next intervals still carry load from the old, higher limit).
    4. t > g * throttle_threshold, or e > g * error_threshold, or m > (1 + g * (tolerance - 1)) * B:
       hold (the hold band between "healthy" and "overloaded").
    5. n < saturation * L: hold; the limit was not used, so growing it proves nothing.
    6. Otherwise L' = min(max_limit, L + increase_step) (additive increase), except that a growth
       to L' >= C first holds (PROBE_WAIT, W' = W + 1) while W < probe_intervals, then goes to C
       exactly, not past it (W' = 0).

    No oscillation on a steady signal: t and e are constant and B moves monotonically towards m,
    so the interval's class can only change in one order (overloaded, hold band, healthy) and only
    through the baseline: at most one change of direction, and the limit settles (at min, at max,
    or where n stops saturating it). A constant t throttles every counting interval or none, so C
    is only set while the limit goes down; on the way up the limit meets C at most once, waits
    probe_intervals, and being used at C clears it.

    Against an API of hard capacity K (n = min(L, K)) where one call over K already throttles (the
    benchmark: K = 4, 1/5 of calls refused at L = 5), a refusal at L > K lands on max(D(L), K).
    Once down to K, C is K + increase_step and each cycle holds K for cooldown_intervals +
    probe_intervals + 1 intervals and probes C for one: limits stay in [K, K + increase_step] and
    one interval in cooldown_intervals + probe_intervals + 2 carries 429s (1 in 10 with the
    defaults). When K grows from K1 to K2, the next probe is healthy, clears C, and the limit
    reaches K2 within cooldown_intervals + probe_intervals + 1 + ceil((K2 - K1 - 1) / increase_step)
    intervals (12 from 4 to 8 with the defaults: 60 s at 5-second intervals). Where a few calls
    over K stay under the threshold (a large K), the limit settles in the hold band above K, or
    probes the same way from the last healthy limit.
    """
    limit = settings.clamp(current)
    cooldown = max(0, state.cooldown_left - 1)
    if not counts(limit, signal, settings):
        return Decision(limit, replace(state, cooldown_left=cooldown), Reason.TOO_FEW_CALLS)

    s = settings
    baseline = state.baseline_ms
    latency = max(signal.latency_ms, MIN_BASELINE_MS)
    if signal.throttle_share > s.throttle_threshold:
        overload: Reason | None = Reason.THROTTLED
    elif signal.error_share > s.error_threshold:
        overload = Reason.ERRORS
    elif baseline is not None and latency > s.latency_tolerance * baseline:
        overload = Reason.LATENCY
    else:
        overload = None
    # Throttle- and error-overloaded intervals stay out of the baseline: a 429 answers fast and
    # would drag it down.
    if overload is not Reason.THROTTLED and overload is not Reason.ERRORS:
        baseline = next_baseline(baseline, latency, s.baseline_rise)
    if overload is Reason.THROTTLED:
        lowered = throttled_decrease(limit, signal.in_flight, s)
        after = ControllerState(baseline, s.cooldown_intervals, ceiling=min(limit, lowered + s.increase_step))
        return Decision(lowered, after, overload)
    if overload is not None:
        # 5xx and slow answers are no refusal of the limit: a ceiling here would make the rule
        # wait probe_intervals to regain a limit the API never refused.
        after = ControllerState(baseline, s.cooldown_intervals, ceiling=state.ceiling)
        return Decision(decrease(limit, s), after, overload)

    ceiling = state.ceiling
    used = signal.in_flight >= s.saturation * limit
    if ceiling is not None and limit >= ceiling and used:
        # The API now serves what it refused: its capacity grew, growth is +step per healthy
        # interval again.
        ceiling = None
    reason = _grow_or_hold(limit, signal, state, latency, s)
    grown = min(s.max_limit, limit + s.increase_step)
    if reason is Reason.INCREASE and ceiling is not None and grown >= ceiling:
        if state.probe_wait < s.probe_intervals:
            return Decision(
                limit, ControllerState(baseline, cooldown, ceiling, state.probe_wait + 1), Reason.PROBE_WAIT
            )
        grown = ceiling
    after = ControllerState(baseline, cooldown, ceiling)
    return Decision(grown if reason is Reason.INCREASE else limit, after, reason)


def _grow_or_hold(
    limit: int, signal: Signal, state: ControllerState, latency: float, s: ControllerSettings
) -> Reason:
    """Rules 3 to 6 for an interval that counts and is not overloaded."""
    if state.cooldown_left > 0:
        return Reason.COOLDOWN
    g = s.grow_below
    base = state.baseline_ms
    if (
        signal.throttle_share > g * s.throttle_threshold
        or signal.error_share > g * s.error_threshold
        or (base is not None and latency > (1 + g * (s.latency_tolerance - 1)) * base)
    ):
        return Reason.HOLD_BAND
    if signal.in_flight < s.saturation * limit:
        return Reason.UNUSED
    if limit >= s.max_limit:
        return Reason.AT_MAX
    return Reason.INCREASE


class BreakerMode(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class BreakerSettings:
    """Tuning of the circuit breaker."""

    error_threshold: float = 0.5
    """Share of 5xx/timeouts above which the breaker opens (CLOSED) or reopens (HALF_OPEN)."""
    min_calls: int = 20
    """CLOSED opens only on at least this many calls in the interval; >= 1."""
    open_seconds: float = 120.0
    """Time OPEN before probing, in seconds; >= 0."""
    probe_limit: int = 1
    """Concurrency limit while HALF_OPEN; >= 1."""

    def __post_init__(self) -> None:
        who = "BreakerSettings"
        _require(
            0 <= self.error_threshold < 1, who, "error_threshold must be in [0, 1)", self.error_threshold
        )
        _require(self.min_calls >= 1, who, "min_calls must be >= 1", self.min_calls)
        _require(self.open_seconds >= 0, who, "open_seconds must be >= 0", self.open_seconds)
        _require(self.probe_limit >= 1, who, "probe_limit must be >= 1", self.probe_limit)


@dataclass(frozen=True)
class BreakerState:
    mode: BreakerMode = BreakerMode.CLOSED
    opened_at: float | None = None
    """When the breaker last opened, in the caller's seconds (e.g. epoch); None while CLOSED."""


@dataclass(frozen=True)
class BreakerDecision:
    state: BreakerState
    pause: bool
    """True while OPEN: disable the event source mapping(s), no call reaches the API."""
    limit_cap: int | None
    """HALF_OPEN: the probe limit, to apply as min(limit, cap); None otherwise."""
    reason: str


def next_breaker(
    state: BreakerState, signal: Signal, now: float, settings: BreakerSettings
) -> BreakerDecision:
    """The breaker after one interval whose `signal` ended at `now` (seconds).

    CLOSED -> OPEN when errors / calls > error_threshold over at least min_calls calls; OPEN ->
    HALF_OPEN once open_seconds have passed; HALF_OPEN lets probe_limit calls through and goes
    CLOSED after a probe interval with calls and errors / calls <= error_threshold, OPEN again
    after one above it. Only errors (5xx, timeouts) count: a 429 says the API is alive and busy,
    which the limit rule handles. The controller Lambda disables the worker's event source
    mapping(s) while OPEN.

    OPEN ignores the signal (consumption was paused). HALF_OPEN with no calls keeps waiting for
    a probe: an empty interval proves nothing either way.
    """
    s = settings
    failing = signal.calls > 0 and signal.error_share > s.error_threshold
    opened = BreakerDecision(BreakerState(BreakerMode.OPEN, now), True, None, "opened: errors")
    if state.mode is BreakerMode.CLOSED:
        if failing and signal.calls >= s.min_calls:
            return opened
        return BreakerDecision(state, False, None, "closed")
    if state.mode is BreakerMode.OPEN:
        opened_at = now if state.opened_at is None else state.opened_at
        if now - opened_at >= s.open_seconds:
            return BreakerDecision(
                BreakerState(BreakerMode.HALF_OPEN, opened_at), False, s.probe_limit, "probe"
            )
        return BreakerDecision(BreakerState(BreakerMode.OPEN, opened_at), True, None, "cooling down")
    return _after_probe(state, signal, failing, opened, s)


def _after_probe(
    state: BreakerState, signal: Signal, failing: bool, opened: BreakerDecision, s: BreakerSettings
) -> BreakerDecision:
    """HALF_OPEN: the interval's calls were the probe."""
    if failing:
        return replace(opened, reason="reopened: probe failed")
    if signal.calls == 0:
        return BreakerDecision(state, False, s.probe_limit, "probe: no calls yet")
    return BreakerDecision(BreakerState(), False, None, "closed: probe healthy")


@dataclass(frozen=True)
class Stored:
    """The controller's memory between steps (one DynamoDB item)."""

    limit: int
    controller: ControllerState
    breaker: BreakerState
    window_end: int
    """End (epoch seconds) of the last window decided on: a window is never decided twice."""
    version: int
    """0: no item yet."""


@dataclass(frozen=True)
class Deployed:
    """What the worker runs with now."""

    reserved: int | None
    mappings: dict[str, tuple[bool, int | None]]
    """By UUID: (enabled, MaximumConcurrency)."""


class StateUnreadable(Exception):  # noqa: N818 - names the state, like StateConflict
    """The state item exists but cannot be read (edited by hand, another release): start afresh
    from what is deployed, writing over it (its version is kept for the conditional write)."""

    def __init__(self, version: int, detail: str) -> None:
        super().__init__(detail)
        self.version = version


class StateConflict(Exception):  # noqa: N818 - a control signal: another controller wrote first
    """The state changed since it was read: another controller is acting."""
