"""The adaptive controller on the embedded AWS: deployed by the stack program, fired by its
schedule, reading the worker's metrics (EMF lines extracted into CloudWatch), and moving the
worker's limit through the Lambda API, which the local runner and mappings follow.

What this cannot prove: EventBridge's timing (the embedded schedule fires at once, then every
minute), CloudWatch's EMF ingestion delay (here under 0.25 s, so the signal delay is 1 s),
IAM on the controller's calls, and AWS's Enabling/Disabling/Updating mapping states.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from localcloud.legacy_api import ApiProfile
from localcloud.runner import run_scenario
from localcloud.scenario import Batch, Feed, Scenario

if TYPE_CHECKING:
    from localcloud.runner import RunResult

ADAPTIVE: dict[str, Any] = {"interval_seconds": 5, "signal_delay_seconds": 1, "min_calls": 5}
BASE: dict[str, Any] = {"sluice:workerTimeoutSeconds": "20", "sluice:callbackTimeoutSeconds": "600"}


def settings(result: RunResult, prefix: str) -> list[tuple[float, Any]]:
    """(seconds from the first execution, value) of one kind of setting the data plane applied."""
    t0 = min(r.started for r in result.executions)
    return [(t - t0, v) for t, what, v in result.limits if what.startswith(prefix)]


@pytest.mark.timeout(240)
def test_the_controller_lowers_the_limit_when_the_api_capacity_drops() -> None:
    scenario = Scenario(
        "adaptive-drop",
        (Batch(start_s=0.0, counts={"HIGH": 1}),),
        ApiProfile(concurrency_limit=4, service_time_s=1.0, service_jitter=0.1),
        stack_config=BASE | {"sluice:concurrency": "4", "sluice:adaptive": ADAPTIVE},
        deadline_s=150,
        feed=Feed(outstanding=10, batch_size=4, until_s=45),
        capacity_changes=((15.0, 2),),
    )
    result = run_scenario(scenario)
    worker = result.stack.outputs["workerFunctionName"]
    reserved = settings(result, f"reserved:{worker}")
    assert reserved[0][1] == 4  # deployed at `concurrency`, the max
    lowered = [(t, v) for t, v in reserved if v < 4]
    assert lowered, f"the limit never moved: {reserved}"
    # Moved by the controller after the drop, never below the new capacity's neighbour of 1.
    assert lowered[0][0] > 15.0
    assert all(v >= 1 for _, v in reserved)
    # The mapping's pollers follow the limit (never below AWS's minimum of 2).
    pollers = [v for _, v in settings(result, "maximum_concurrency:")]
    assert min(pollers) == max(2, min(v for _, v in reserved))
    steps = [r for r in result.controller_logs if r.get("message") == "control step"]
    assert any(r["reason"] == "throttled" for r in steps)
    # Capacity dropping is a reason to wait, never to lose work.
    assert all(r.status == "SUCCEEDED" for r in result.executions)
    refused = [c for c in result.calls if c.status == 429]
    last_decrease = lowered[0][0] + min(r.started for r in result.executions)
    # After the controller acted, refusals stop but for its probes: far fewer than before.
    assert sum(1 for c in refused if c.start > last_decrease + 10) <= 3


@pytest.mark.timeout(240)
def test_the_breaker_pauses_the_mappings_while_the_api_fails_then_probes_and_resumes() -> None:
    """Every item fails twice with a 500 first: the breaker opens on the error share, disables
    the mapping (messages wait in their queues, tokens keep waiting), probes at limit 1 after
    its pause, and closes once the probe's calls succeed; every item then succeeds."""
    items = tuple({"id": f"f{n}", "priority": "NORMAL", "fail_first": 2} for n in range(16))
    scenario = Scenario(
        "adaptive-breaker",
        (Batch(start_s=0.0, counts={}, items=items),),
        ApiProfile(concurrency_limit=4, service_time_s=0.5, service_jitter=0.1),
        stack_config=BASE
        | {
            "sluice:concurrency": "4",
            "sluice:maxAttempts": "5",
            "sluice:retryBaseSeconds": "1",
            "sluice:retryMaxSeconds": "2",
            "sluice:adaptive": ADAPTIVE
            | {"breaker_min_calls": 5, "breaker_open_seconds": 10, "breaker_error_threshold": 0.5},
        },
        deadline_s=150,
    )
    result = run_scenario(scenario)
    enabled = [(round(t, 1), v) for t, v in settings(result, "enabled:")]
    values = [v for _, v in enabled]
    assert values[0] is True
    assert False in values, f"never paused: {enabled}"
    paused_at = next(t for t, v in enabled if v is False)
    resumed = [t for t, v in enabled if v is True and t > paused_at]
    assert resumed, f"never resumed: {enabled}"
    # Paused for at least the breaker's 10 s, measured on the data plane.
    assert resumed[0] - paused_at >= 9.0
    t0 = min(r.started for r in result.executions)
    during = [c for c in result.calls if paused_at + 1.5 < c.start - t0 < resumed[0] - 0.5]
    assert during == [], "calls reached the API while the mapping was disabled"
    worker = result.stack.outputs["workerFunctionName"]
    assert 1 in [v for _, v in settings(result, f"reserved:{worker}")]  # the half-open probe limit
    assert all(r.status == "SUCCEEDED" for r in result.executions)
    assert result.executions[0].output["succeeded"] == len(items)
