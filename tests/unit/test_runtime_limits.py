"""Run-time limits (`sluice limits`): names, values and how the overrides meet the deployment."""

from __future__ import annotations

import json

import pytest

from sluice_fanout.cli.limits import (
    LimitsInputError,
    deployed_from,
    format_report,
    parse_assignments,
    stack_from_outputs,
)
from sluice_fanout.handlers import contract
from sluice_fanout.handlers.fair import KeyRule, KeysSettings
from sluice_fanout.handlers.runtime_limits import Deployed, LimitsError, Overrides

PRIORITIES = ("HIGH", "BATCH")
KEYS = KeysSettings(field="tenant", weights={"big": 2.0}, concurrency=2, concurrency_per_key={"vip": 4})
DEPLOYED = Deployed(
    concurrency=8, calls_per_second=None, keys=KEYS, priorities=PRIORITIES, timeout_seconds=30
)


def changed(*assignments: str, base: Overrides | None = None) -> Overrides:
    return (base or Overrides()).setting(parse_assignments(assignments), DEPLOYED)


def test_nothing_stored_means_the_deployed_limits() -> None:
    effective = Overrides().apply(DEPLOYED)
    assert (effective.concurrency, effective.calls_per_second, effective.keys) == (8, None, KEYS)


def test_each_limit_can_be_overridden() -> None:
    overrides = changed(
        "concurrency=4",
        "callsPerSecond=2.5",
        "keys.concurrency=1",
        "keys.concurrencyPerKey.acme=3",
        "keys.weights.acme=5",
    )
    assert overrides.values == {
        "concurrency": 4,
        "callsPerSecond": 2.5,
        "keys.concurrency": 1,
        "keys.concurrencyPerKey.acme": 3,
        "keys.weights.acme": 5.0,
    }
    effective = overrides.apply(DEPLOYED)
    assert (effective.concurrency, effective.calls_per_second) == (4, 2.5)
    assert effective.keys is not None
    assert effective.keys.rule("acme", "BATCH") == KeyRule(weight=5.0, cap=3)
    assert effective.keys.rule("vip", "BATCH") == KeyRule(weight=1.0, cap=4)  # deployed, untouched
    assert effective.keys.rule("other", "BATCH") == KeyRule(weight=1.0, cap=1)  # the new default cap
    assert effective.keys.rule("big", "BATCH") == KeyRule(weight=2.0, cap=1)
    assert Overrides.from_json(overrides.to_json()) == overrides


def test_none_lifts_a_rate_or_a_cap_and_unset_returns_to_the_deployed_value() -> None:
    with_rate = Deployed(8, 10.0, KEYS, PRIORITIES, 30)
    overrides = Overrides().setting(
        [("callsPerSecond", "none"), ("keys.concurrencyPerKey.vip", "none"), ("keys.concurrency", "NONE")],
        with_rate,
    )
    effective = overrides.apply(with_rate)
    assert effective.calls_per_second is None
    assert effective.keys is not None
    assert effective.keys.rule("vip", "BATCH").cap is None
    assert effective.keys.rule("anyone", "BATCH").cap is None
    back = overrides.unsetting(
        ["callsPerSecond", "keys.concurrencyPerKey.vip", "keys.concurrency"], with_rate
    )
    assert back.values == {}
    assert back.apply(with_rate).calls_per_second == 10.0


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("concurency=4", "unknown limit 'concurency'; the limits are concurrency, callsPerSecond"),
        ("concurrency=0", "concurrency=0 must be 1..1000"),
        ("concurrency=2.5", "concurrency=2.5 must be a whole number"),
        ("concurrency=none", "a concurrency cannot be lifted"),
        ("concurrency=many", "concurrency='many' is not a number; write e.g. concurrency=4"),
        ("callsPerSecond=0", "callsPerSecond=0 must be above 0 and at most 1000 (or none"),
        ("callsPerSecond=nan", "'nan' is not a finite number"),
        ("keys.weights.acme=0", "keys.weights['acme']"),
        ("keys.weights.acme=none", "a weight cannot be lifted"),
        ("keys.concurrencyPerKey.acme=-1", "keys.concurrency_per_key['acme']"),
        ("keys.weights.=3", "'keys.weights.' names no key; write keys.weights.<key>"),
        ("callsPerSecond=0.1", "callsPerSecond 0.1 is too low for concurrency 8: a call could wait 84.0s"),
    ],
)
def test_a_bad_limit_is_refused_by_name_with_the_fix(assignment: str, message: str) -> None:
    with pytest.raises(LimitsError, match=None) as caught:
        changed(assignment)
    assert message in str(caught.value)


def test_keys_limits_need_a_stack_with_keys() -> None:
    without = Deployed(8, None, None, PRIORITIES, 30)
    with pytest.raises(LimitsError, match=r"this stack has no keys setting; set sluice:keys"):
        Overrides().setting([("keys.weights.acme", "2")], without)


def test_a_higher_concurrency_is_checked_against_the_rate_already_stored() -> None:
    slow = changed("callsPerSecond=1")
    with pytest.raises(LimitsError, match="too low for concurrency 20"):
        changed("concurrency=20", base=slow)


@pytest.mark.parametrize("text", ["concurrency", "=4", "concurrency="])
def test_an_assignment_needs_a_name_and_a_value(text: str) -> None:
    with pytest.raises(LimitsInputError, match="write NAME=VALUE"):
        parse_assignments([text])


def test_the_stack_outputs_name_the_worker_and_its_table() -> None:
    stack = stack_from_outputs(
        {
            "workerFunctionName": "w",
            "idempotencyTable": "t",
            "stateMachineArn": "arn:aws:states:eu-west-1:123456789012:stateMachine:s",
            "controllerFunctionName": "c",
        },
        "stack.json",
    )
    assert (stack.worker, stack.table, stack.adaptive, stack.region) == ("w", "t", True, "eu-west-1")
    with pytest.raises(LimitsInputError, match=r"stack\.json: no idempotencyTable output"):
        stack_from_outputs({"workerFunctionName": "w"}, "stack.json")


def worker_configuration(**env: str) -> dict[str, object]:
    return {
        "FunctionName": "w",
        "Timeout": 30,
        "Environment": {
            "Variables": {
                contract.ENV_QUEUES: json.dumps([{"priority": p} for p in PRIORITIES]),
                contract.ENV_CONCURRENCY: "8",
                contract.ENV_KEYS: KEYS.to_json(),
                **env,
            }
        },
    }


def test_the_deployed_limits_come_from_the_workers_configuration() -> None:
    assert deployed_from(worker_configuration()) == DEPLOYED
    assert deployed_from(worker_configuration(**{contract.ENV_CALLS_PER_SECOND: "4"})).calls_per_second == 4.0
    old = worker_configuration()
    del old["Environment"]["Variables"][contract.ENV_CONCURRENCY]  # type: ignore[index]
    with pytest.raises(LimitsInputError, match="deployed by an older release; `pulumi up` with this one"):
        deployed_from(old)


def report(**extra: object) -> dict[str, object]:
    return {
        "worker": "w",
        "table": "t",
        "adaptive": False,
        "version": 2,
        "updatedAt": 1_796_400_000.0,
        "updatedBy": "ops@host",
        "limits": [
            {"name": "concurrency", "deployed": 8, "override": 4, "overridden": True, "effective": 4},
            {
                "name": "callsPerSecond",
                "deployed": None,
                "override": None,
                "overridden": False,
                "effective": None,
            },
        ],
        "reservedConcurrency": 4,
        "ignored": None,
        "changes": [],
    } | extra


def test_the_report_is_a_table_of_deployed_override_and_in_effect() -> None:
    lines = format_report(report())
    assert lines == [
        "limits of w (version 2, changed 2026-12-04T16:00:00Z by ops@host)",
        "  name             deployed   override  in effect",
        "  concurrency             8          4          4",
        "  callsPerSecond       none          -       none",
    ]


def test_the_report_says_when_a_deploy_reset_the_concurrency() -> None:
    (*_, last) = format_report(report(reservedConcurrency=8))
    assert last == (
        "the worker runs at reserved concurrency 8, not 4 (a deploy sets the stack's value back): "
        "`sluice limits set concurrency=4` applies it again"
    )
    (*_, last) = format_report(report(adaptive=True, reservedConcurrency=3))
    assert last == "adaptive controller: it moves the limit up to 4 (now 3); its next step applies a change"
