"""Bad args fail at construction, naming the value and the fix, before any resource exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sluice_fanout.components.validation import SluiceConfigError, config_key
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
