"""Bad args fail at construction, naming the value and the fix, before any resource exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sluice_fanout.components.validation import SluiceConfigError
from sluice_fanout.handlers.settings import config_key
from tests.support.mocks import run_program

HTTP = {"url": "https://erp.example.internal/api"}
OK: dict[str, Any] = {"concurrency": 4, "http_target": HTTP}


def construct(args: dict[str, Any]) -> list[str]:
    """Build ThrottledFanOut; return the registered resource types (for the no-half-stack check)."""
    failure: list[BaseException] = []

    def program() -> None:
        from sluice_fanout.components import ThrottledFanOut

        try:
            ThrottledFanOut("orders", args)  # type: ignore[arg-type]
        except SluiceConfigError as exc:
            failure.append(exc)

    recorder = run_program(program)
    if failure:
        raise failure[0]
    return [r.typ for r in recorder.resources]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"concurrency": 0}, "concurrency must be between 1 and 1000, got 0 (set sluice:concurrency)"),
        ({"concurrency": 2.5}, "concurrency must be a whole number, got 2.5"),
        ({"concurrency": True}, "concurrency must be a whole number, got True"),
        ({"priorities": []}, "priorities must name at least one priority"),
        ({"priorities": ["HIGH", "HIGH"]}, "names must be unique"),
        ({"priorities": ["high"]}, "upper case"),
        ({"priorities": "HIGH"}, "single string"),
        (
            {"dispatch": "fifo"},
            "dispatch must be one of ['yield', 'ticket'], got 'fifo' (set sluice:dispatch)",
        ),
        ({"dispatch": "ticket", "share_period": 1}, "share_period must be between 2 and 1000, got 1"),
        (
            {"worker_timeout_seconds": 60, "visibility_timeout_seconds": 300},
            "at least 6x worker_timeout_seconds",
        ),
        ({"max_receive_count": 5}, "must exceed force_after_receives - 1 + max_attempts = 5"),
        ({"force_after_receives": 0}, "force_after_receives must be between 1 and 100, got 0"),
        # None is not "use the default": an explicit null is refused, naming the key.
        ({"force_after_receives": None}, "force_after_receives must be a whole number, got None"),
        ({"dispatch": None}, "dispatch must be one of"),
        ({"batch_size": 11}, "batch_size must be between 1 and 10, got 11 (set sluice:batchSize)"),
        ({"esm_maximum_concurrency": 1}, "esm_maximum_concurrency must be between 2 and 1000, got 1"),
        ({"retry_base_seconds": float("nan")}, "retry_base_seconds must be a number"),
        (
            {"calls_per_second": 0},
            "calls_per_second must be > 0 and at most 1000, got 0.0 (set sluice:callsPerSecond)",
        ),
        ({"calls_per_second": -2.5}, "calls_per_second must be > 0 and at most 1000, got -2.5"),
        ({"calls_per_second": 1500}, "calls_per_second must be > 0 and at most 1000, got 1500.0"),
        ({"calls_per_second": "4"}, "calls_per_second must be a number, got '4' (set sluice:callsPerSecond)"),
        ({"calls_per_second": float("nan")}, "calls_per_second must be a number"),
        (
            # 4 invocations at 0.2/s: the last waits 21 s for its slot, over 30 / 2 - 1 = 14 s.
            {"calls_per_second": 0.2},
            "calls_per_second is too low for concurrency 4: a call could wait 21.0s for its slot, more "
            "than half the worker timeout (30s) less 1s; lower the concurrency (sluice:concurrency) or "
            "raise the timeout (sluice:workerTimeoutSeconds), got 0.2 (set sluice:callsPerSecond)",
        ),
        (
            {"default_priority": "LOW"},
            "default_priority must be one of ['HIGH', 'NORMAL', 'BATCH'], got 'LOW'",
        ),
        ({"throttle_rule": {"Variable": "$.x", "IsPresent": True, "Next": "X"}}, "without Next"),
        ({"callback_timeout_seconds": 0}, "callback_timeout_seconds must be between 1 and 31536000"),
        ({"log_level": "DEBUG"}, "log_level must be one of"),
        ({"tolerated_failure_percentage": 101}, "tolerated_failure_percentage must be between 0 and 100"),
        (
            {"http_target": None, "target_handler": "x.y"},
            "target_dir must be an existing directory, got None",
        ),
        ({"target_dir": ".", "target_handler": "x.y"}, "not both"),
        (
            {"http_target": {**HTTP, "secret_arn": "a", "ssm_parameter_arn": "b", "ssm_parameter_name": "c"}},
            "not both",
        ),
        ({"surprise": 1}, "unknown args ['surprise']"),
        ({"adaptive": 3}, "adaptive must be an object with AdaptiveArgs fields, got 3 (set sluice:adaptive)"),
        ({"adaptive": {"minimum": 1}}, "adaptive has unknown keys ['minimum']; known keys are ["),
        (
            {"adaptive": {"min_concurrency": 5}},
            "adaptive.min_concurrency must be at most concurrency (4), got 5 "
            "(set sluice:adaptive.minConcurrency)",
        ),
        (
            {"adaptive": {"min_concurrency": 0}},
            "adaptive.min_concurrency must be between 1 and 1000, got 0 (set sluice:adaptive.minConcurrency)",
        ),
        (
            {"adaptive": {"interval_seconds": 15}},
            "adaptive.interval_seconds must be one of [1, 5, 10, 30, 60], got 15 "
            "(set sluice:adaptive.intervalSeconds)",
        ),
        (
            {"adaptive": {"signal_delay_seconds": 60}},
            "adaptive.signal_delay_seconds must be between 0 and 59, got 60",
        ),
        (
            {"adaptive": {"signal_delay_seconds": -1}},
            "adaptive.signal_delay_seconds must be between 0 and 59",
        ),
        (
            {"adaptive": {"throttle_threshold": 1}},
            "adaptive.throttle_threshold must be >= 0 and < 1, got 1 (set sluice:adaptive.throttleThreshold)",
        ),
        ({"adaptive": {"error_threshold": -0.1}}, "adaptive.error_threshold must be >= 0 and < 1, got -0.1"),
        ({"adaptive": {"error_threshold": "0.1"}}, "adaptive.error_threshold must be a number, got '0.1'"),
        (
            {"adaptive": {"latency_tolerance": 1}},
            "adaptive.latency_tolerance must be > 1 and at most 100, got 1 "
            "(set sluice:adaptive.latencyTolerance)",
        ),
        (
            {"adaptive": {"latency_tolerance": float("inf")}},
            "adaptive.latency_tolerance must be > 1 and at most 100, got inf",
        ),
        ({"adaptive": {"min_calls": 0}}, "adaptive.min_calls must be between 1 and 1000000, got 0"),
        ({"adaptive": {"probe_intervals": 1.5}}, "adaptive.probe_intervals must be a whole number, got 1.5"),
        (
            {"adaptive": {"breaker": "yes"}},
            "adaptive.breaker must be true or false, got 'yes' (set sluice:adaptive.breaker)",
        ),
        (
            {"adaptive": {"breaker_error_threshold": 1.0}},
            "adaptive.breaker_error_threshold must be >= 0 and < 1",
        ),
        (
            # Checked with the breaker off too: turning it on later must not reveal a bad value.
            {"adaptive": {"breaker": False, "breaker_error_threshold": 2}},
            "adaptive.breaker_error_threshold must be >= 0 and < 1, got 2",
        ),
        ({"adaptive": {"breaker_min_calls": 0}}, "adaptive.breaker_min_calls must be between 1 and 1000000"),
        (
            # 120 s open + 2 x 10 s: the paused items' tokens would time out first.
            {"callback_timeout_seconds": 140, "adaptive": {}},
            "adaptive.breaker_open_seconds must be less than callback_timeout_seconds (140) - 2 x "
            "adaptive.interval_seconds (10) = 120, so work paused while the breaker is open is resumed "
            "before its task tokens time out, got 120 (set sluice:adaptive.breakerOpenSeconds)",
        ),
        (
            {
                "callback_timeout_seconds": 600,
                "adaptive": {"breaker_open_seconds": 500, "interval_seconds": 60},
            },
            "callback_timeout_seconds (600) - 2 x adaptive.interval_seconds (60) = 480",
        ),
        (
            {"esm_maximum_concurrency": 4, "adaptive": {}},
            "esm_maximum_concurrency must not be set with adaptive: the controller sets each mapping's "
            "MaximumConcurrency, got 4 (set sluice:esmMaximumConcurrency)",
        ),
    ],
)
def test_invalid_args_fail_whole_with_a_clear_message(overrides: dict[str, Any], expected: str) -> None:
    args = {**OK, **overrides}
    if args.get("http_target") is None:
        args.pop("http_target", None)
    with pytest.raises(SluiceConfigError, match=re.escape(expected)) as caught:
        construct(args)
    assert str(caught.value).startswith("ThrottledFanOut 'orders'")


def test_neither_target_is_refused() -> None:
    with pytest.raises(SluiceConfigError, match="not neither"):
        construct({"concurrency": 1})


def test_no_resource_is_registered_for_an_invalid_stack() -> None:
    """The last check (the workflow's) fails: nothing, not even the queues, was registered."""
    failure: list[BaseException] = []

    def program() -> None:
        from sluice_fanout.components import ThrottledFanOut

        try:
            ThrottledFanOut("orders", {**OK, "log_level": "LOUD"})  # type: ignore[typeddict-item]
        except SluiceConfigError as exc:
            failure.append(exc)

    recorder = run_program(program)
    assert len(failure) == 1
    assert recorder.resources == []


def test_a_valid_stack_registers_resources(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text("def call(item, ctx):\n    return item\n")
    assert "sluice:index:ThrottledFanOut" in construct(
        {"concurrency": 1, "target_dir": str(tmp_path), "target_handler": "t.call"}
    )


@pytest.mark.parametrize(
    ("arg", "key"), [("concurrency", "sluice:concurrency"), ("max_receive_count", "sluice:maxReceiveCount")]
)
def test_config_key(arg: str, key: str) -> None:
    assert config_key(arg) == key


@pytest.mark.parametrize(
    "adaptive",
    [
        {"min_concurrency": 4, "interval_seconds": 1, "signal_delay_seconds": 59},
        {
            "throttle_threshold": 0,
            "error_threshold": 0.99,
            "latency_tolerance": 100,
            "min_calls": 1,
            "probe_intervals": 1,
        },
        # The pause rule is the breaker's: without it the timeout does not bound anything.
        {"breaker": False, "breaker_open_seconds": 10_000},
        {"breaker_open_seconds": 579, "interval_seconds": 10},
    ],
)
def test_adaptive_edges_are_accepted(adaptive: dict[str, Any]) -> None:
    args = {**OK, "callback_timeout_seconds": 600, "adaptive": adaptive}
    assert "sluice:index:AdaptiveController" in construct(args)


def test_adaptive_controller_alone_checks_its_args() -> None:
    from sluice_fanout.components import AdaptiveController

    with pytest.raises(
        SluiceConfigError, match=r"^AdaptiveController 'c': adaptive.min_concurrency must be at most"
    ):
        AdaptiveController(
            "c",
            {
                "adaptive": {"min_concurrency": 3},
                "max_concurrency": 2,
                "priorities": ["HIGH"],
                "worker_function_name": "w",
                "worker_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:w",
                "mapping_uuids": ["u"],
                "state_table_name": "t",
                "state_table_arn": "arn:aws:dynamodb:us-east-1:123456789012:table/t",
            },
        )


def test_nested_config_keys() -> None:
    assert config_key("adaptive.breaker_open_seconds") == "sluice:adaptive.breakerOpenSeconds"
