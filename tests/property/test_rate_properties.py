"""The calls-per-second limit's invariants, for any arrival pattern of reservations."""

from __future__ import annotations

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from sluice_fanout.handlers.rate import Denied, Grant, interval_for, reserve

rates = st.floats(min_value=0.1, max_value=1_000.0)
# Gaps between successive arrivals (a reservation's `now`), ties included.
gaps = st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=60)
max_waits = st.lists(st.floats(min_value=0.0, max_value=30.0), min_size=60, max_size=60)


@given(
    rate=rates,
    arrival_gaps=gaps,
    waits=max_waits,
    start=st.floats(min_value=0, max_value=2e9),
    lead=st.sampled_from([0.0, 0.05]),
)
def test_granted_slots_are_spaced_and_never_early(
    rate: float, arrival_gaps: list[float], waits: list[float], start: float, lead: float
) -> None:
    interval = interval_for(rate)
    tat: float | None = None
    now = start
    granted: list[float] = []
    for gap, max_wait in zip(arrival_gaps, waits, strict=False):
        now += gap
        decision = reserve(tat, now, interval, max_wait, lead)
        if isinstance(decision, Denied):
            assert decision.wait > max_wait
            continue  # nothing reserved: the TAT is unchanged
        assert decision.at >= now + lead  # never granted earlier than requested
        assert decision.wait == decision.at - now <= max_wait
        granted.append(decision.at)
        tat = decision.tat
    for earlier, later in itertools.pairwise(granted):
        assert later - earlier >= interval - 1e-6  # float resolution of epoch seconds
    # Hence any one-second window holds at most `rate` granted slots (a fractional rate, a call
    # every 1/rate s, allows ceil(rate) in one second), and any window of 1/rate s at most one.
    for i, first in enumerate(granted):
        assert len([t for t in granted[i:] if t - first < 1.0]) <= math.ceil(rate)
        assert len([t for t in granted[i:] if t - first < 1.0 / rate]) == 1


@given(rate=rates, now=st.floats(min_value=0, max_value=2e9), idle=st.floats(min_value=0, max_value=1e6))
def test_idle_time_banks_no_burst(rate: float, now: float, idle: float) -> None:
    interval = interval_for(rate)
    first = reserve(None, now, interval, 0.0)
    assert isinstance(first, Grant)
    later = now + interval + idle
    second = reserve(first.tat, later, interval, 0.0)
    assert isinstance(second, Grant)
    third = reserve(second.tat, later, interval, 0.0)
    assert isinstance(third, Denied)  # the second call used the slot; the next is an interval on
