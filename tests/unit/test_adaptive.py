"""The controller Lambda's loop and step against in-memory fakes: what it reads, decides, stores
and applies, and when it stops."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sluice_fanout.handlers import contract
from sluice_fanout.handlers.adapters import signal_from
from sluice_fanout.handlers.adaptive import (
    AdaptiveConfig,
    AdaptiveConfigError,
    AdaptiveDeps,
    run,
    step,
)
from sluice_fanout.handlers.controller import (
    BreakerMode,
    BreakerSettings,
    BreakerState,
    ControllerSettings,
    ControllerState,
    Deployed,
    Signal,
    StateConflict,
    StateUnreadable,
    Stored,
)

HEALTHY = Signal(calls=100, throttled=0, errors=0, latency_ms=500.0, in_flight=8.0)
THROTTLED = Signal(calls=100, throttled=40, errors=0, latency_ms=500.0, in_flight=4.0)
FAILING = Signal(calls=100, throttled=0, errors=90, latency_ms=500.0, in_flight=4.0)
PROBE = Signal(calls=20, throttled=0, errors=0, latency_ms=500.0, in_flight=1.0)
QUIET = Signal(calls=0, throttled=0, errors=0, latency_ms=0.0, in_flight=0.0)


def config(breaker: BreakerSettings | None = None, interval: int = 5, delay: int = 0) -> AdaptiveConfig:
    return AdaptiveConfig(
        worker="w",
        mappings=("m1",),
        priorities=("HIGH",),
        table="t",
        limit=ControllerSettings(min_limit=1, max_limit=8, min_calls=10, cooldown_intervals=0),
        breaker=breaker,
        interval_seconds=interval,
        signal_delay_seconds=delay,
    )


@dataclass
class Fakes:
    signals: list[Signal]
    reads: list[tuple[int, int]] = field(default_factory=list)
    deployed: Deployed = field(default_factory=lambda: Deployed(8, {"m1": (True, 8)}))
    stored: Stored | None = None
    conflict_after: int | None = None
    saves: int = 0
    now: float = 1_000.0

    def read(self, start: int, end: int) -> Signal:
        self.reads.append((start, end))
        return self.signals.pop(0)

    def load(self) -> Stored | None:
        return self.stored

    def save(self, state: Stored) -> None:
        if self.conflict_after is not None and self.saves >= self.conflict_after:
            raise StateConflict("another writer")
        self.saves += 1
        self.stored = state

    def current(self) -> Deployed:
        return self.deployed

    def apply(self, limit: int, paused: bool, now: Deployed) -> list[str]:
        assert now == self.deployed
        self.deployed = Deployed(limit, {"m1": (not paused, max(2, limit))})
        return [f"{limit}/{paused}"]

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


def deps_for(fakes: Fakes, cfg: AdaptiveConfig) -> AdaptiveDeps:
    class Controls:
        deployed = staticmethod(fakes.current)
        apply = staticmethod(fakes.apply)

    return AdaptiveDeps(
        config=cfg,
        signals=fakes,
        controls=Controls(),
        store=fakes,
        clock=lambda: fakes.now,
        sleep=fakes.sleep,
    )


def test_a_throttled_window_lowers_the_reserved_concurrency_and_the_pollers() -> None:
    fakes = Fakes([THROTTLED])
    done = step(deps_for(fakes, config()), 1_000)
    assert done is not None
    assert fakes.reads == [(995, 1_000)]
    assert done.limit == 4  # dropped to what the API served (in_flight 4), at most halved
    assert fakes.deployed == Deployed(4, {"m1": (True, 4)})
    assert fakes.stored is not None
    assert (fakes.stored.limit, fakes.stored.window_end, fakes.stored.version) == (4, 1_000, 1)


def test_the_first_step_starts_from_the_deployed_limit() -> None:
    fakes = Fakes([QUIET], deployed=Deployed(6, {"m1": (True, 6)}))
    done = step(deps_for(fakes, config()), 1_000)
    assert done is not None
    assert done.limit == 6
    assert fakes.deployed == Deployed(6, {"m1": (True, 6)})


def test_a_window_is_never_decided_twice() -> None:
    fakes = Fakes([THROTTLED, THROTTLED])
    deps = deps_for(fakes, config())
    assert step(deps, 1_000) is not None
    assert step(deps, 1_000) is None
    assert step(deps, 995) is None
    assert fakes.reads == [(995, 1_000)]


def test_run_steps_on_each_boundary_after_the_delay_for_the_run_length() -> None:
    fakes = Fakes([HEALTHY] * 20, now=1_002.5)
    steps = run(deps_for(fakes, config(interval=10, delay=3)), lambda: 600_000)
    # Windows end on 10 s boundaries and each is read 3 s after it ends, for 60 s from the
    # start; the first is the latest window complete at the start.
    assert [s.window_end for s in steps] == [990, 1_000, 1_010, 1_020, 1_030, 1_040, 1_050]
    assert fakes.reads[0] == (980, 990)
    assert fakes.now == pytest.approx(1_053.0)


def test_run_stops_before_the_invocation_times_out() -> None:
    fakes = Fakes([HEALTHY] * 20, now=1_000.0)
    steps = run(deps_for(fakes, config(interval=5)), lambda: 22_000)
    # 22 s left, 5 s margin: steps at 1000, 1005, 1010, 1015 at most, all before 1017.
    assert [s.window_end for s in steps] == [1_000, 1_005, 1_010, 1_015]


def test_a_second_controller_that_lost_the_write_stops_without_applying() -> None:
    fakes = Fakes([THROTTLED, THROTTLED, THROTTLED], conflict_after=1)
    steps = run(deps_for(fakes, config()), lambda: 600_000)
    assert len(steps) == 1
    assert fakes.deployed.reserved == 4  # only the won step applied


def test_the_breaker_pauses_the_mappings_then_probes_at_its_limit_then_resumes() -> None:
    breaker = BreakerSettings(error_threshold=0.5, min_calls=20, open_seconds=10, probe_limit=1)
    fakes = Fakes([FAILING, QUIET, QUIET, PROBE])
    deps = deps_for(fakes, config(breaker=breaker))
    opened = step(deps, 1_000)
    assert opened is not None
    assert opened.paused
    assert fakes.deployed.mappings == {"m1": (False, 4)}  # errors also halve the limit
    assert step(deps, 1_005) is not None
    assert fakes.deployed.mappings["m1"][0] is False  # still cooling down
    probe = step(deps, 1_010)
    assert probe is not None
    assert probe.breaker is not None
    assert probe.breaker.state.mode is BreakerMode.HALF_OPEN
    assert fakes.deployed == Deployed(1, {"m1": (True, 2)})  # probe limit, AWS's minimum pollers
    closed = step(deps, 1_015)
    assert closed is not None
    assert closed.breaker is not None
    assert closed.breaker.state.mode is BreakerMode.CLOSED
    assert fakes.deployed.reserved == 4
    assert fakes.deployed.mappings["m1"][0] is True


def test_signal_from_metric_sums() -> None:
    signal = signal_from(calls=20, throttled=3, errors=2, latency_sum_ms=8_500, latency_count=17, seconds=5)
    assert signal == Signal(calls=20, throttled=3, errors=2, latency_ms=500.0, in_flight=1.7)
    # A line split at a period boundary never makes an impossible signal.
    assert signal_from(
        calls=1, throttled=2, errors=2, latency_sum_ms=0, latency_count=0, seconds=5
    ) == Signal(calls=1, throttled=1, errors=0, latency_ms=0.0, in_flight=0.0)


def env(settings: Any) -> dict[str, str]:
    return {
        contract.ENV_CONTROLLER_WORKER: "w",
        contract.ENV_CONTROLLER_MAPPINGS: json.dumps(["u1", "u2"]),
        contract.ENV_CONTROLLER_PRIORITIES: json.dumps(["HIGH", "BATCH"]),
        contract.ENV_CONTROLLER_TABLE: "t",
        contract.ENV_CONTROLLER_SETTINGS: json.dumps(settings),
    }


def test_config_from_the_environment_the_component_writes() -> None:
    cfg = AdaptiveConfig.from_env(
        env(
            {
                "min_limit": 2,
                "max_limit": 9,
                "interval_seconds": 10,
                "signal_delay_seconds": 10,
                "throttle_threshold": 0.03,
                "breaker": {"open_seconds": 60},
            }
        )
    )
    assert cfg.mappings == ("u1", "u2")
    assert cfg.priorities == ("HIGH", "BATCH")
    assert cfg.limit == ControllerSettings(min_limit=2, max_limit=9, throttle_threshold=0.03)
    assert cfg.breaker == BreakerSettings(open_seconds=60)
    base = {"min_limit": 1, "max_limit": 4, "interval_seconds": 5, "signal_delay_seconds": 0, "breaker": None}
    assert AdaptiveConfig.from_env(env(base)).breaker is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"min_limit": 1, "max_limit": 4, "interval_seconds": 7, "signal_delay_seconds": 0},
            "interval_seconds",
        ),
        ({"min_limit": 1, "max_limit": 4, "interval_seconds": 5, "signal_delay_seconds": -1}, "signal_delay"),
        ({"min_limit": 5, "max_limit": 4, "interval_seconds": 5, "signal_delay_seconds": 0}, "max_limit"),
        (
            {"max_limit": 4, "interval_seconds": 5, "signal_delay_seconds": 0, "limit": 3},
            "unknown settings keys",
        ),
        (
            {"max_limit": 4, "interval_seconds": 5, "signal_delay_seconds": 0, "breaker": {"open": 1}},
            "unknown breaker keys",
        ),
        ([1], "JSON object"),
    ],
)
def test_bad_settings_name_the_value(settings: Any, message: str) -> None:
    with pytest.raises(AdaptiveConfigError, match=message):
        AdaptiveConfig.from_env(env(settings))


def test_a_missing_variable_is_named() -> None:
    broken = env({"max_limit": 4, "interval_seconds": 5, "signal_delay_seconds": 0})
    del broken[contract.ENV_CONTROLLER_MAPPINGS]
    with pytest.raises(AdaptiveConfigError, match=contract.ENV_CONTROLLER_MAPPINGS):
        AdaptiveConfig.from_env(broken)


def test_an_aws_error_skips_one_window_and_the_run_goes_on() -> None:
    fakes = Fakes([THROTTLED, HEALTHY, HEALTHY], now=1_000.0)
    reads = fakes.read

    def flaky(start: int, end: int) -> Signal:
        if end == 1_000:
            raise ClientError({"Error": {"Code": "Throttling"}}, "GetMetricData")
        return reads(start, end)

    fakes.read = flaky  # type: ignore[method-assign]
    steps = run(deps_for(fakes, config(interval=5)), lambda: 22_000)
    assert [s.window_end for s in steps] == [1_005, 1_010, 1_015]
    assert steps[0].limit == 4  # the first window it could read


def test_an_unreadable_state_starts_afresh_over_it() -> None:
    fakes = Fakes([QUIET], deployed=Deployed(6, {"m1": (True, 6)}))

    def unreadable() -> Stored | None:
        raise StateUnreadable(7, "bad")

    fakes.load = unreadable  # type: ignore[method-assign]
    done = step(deps_for(fakes, config()), 1_000)
    assert done is not None
    assert done.limit == 6
    assert fakes.stored is not None
    assert fakes.stored.version == 8  # written over the unreadable version 7


def test_the_operators_concurrency_is_the_ceiling_the_controller_moves_below() -> None:
    healthy = Signal(calls=50, throttled=0, errors=0, latency_ms=100.0, in_flight=6.0)
    fakes = Fakes([healthy, healthy, THROTTLED], stored=Stored(6, ControllerState(), BreakerState(), 0, 1))
    ceiling: list[int | None] = [3]
    deps = dataclasses.replace(deps_for(fakes, config()), ceiling=lambda: ceiling[0])
    first = step(deps, 1_000)
    assert first is not None
    assert first.limit == 3  # above the operator's 3 before: brought down to it at once
    assert fakes.deployed == Deployed(3, {"m1": (True, 3)})
    ceiling[0] = None  # unset: the deployed 8 is the ceiling again, and the rule climbs back
    second = step(deps, 1_005)
    assert second is not None
    assert second.limit == 4
    ceiling[0] = 1  # below the controller's min_limit: the operator still wins
    third = step(deps, 1_010)
    assert third is not None
    assert third.limit == 1
