"""The dashboard and alarms: exact documents from the pure builders, and the resources
ThrottledFanOut creates from them under Pulumi mocks. What this cannot prove: that CloudWatch
draws the widgets or fires the alarms (a real deploy would); that the names match what the
worker publishes is asserted against the same contract constants the worker uses."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pulumi
import pytest

from sluice_fanout.components.observability_documents import build_alarm_specs, build_dashboard_body
from sluice_fanout.components.validation import SluiceConfigError
from tests.support.mocks import ACCOUNT, REGION, Recorder, run_program

SNS_RULE = "must be an SNS topic ARN (arn:aws:sns:<region>:<account>:<topic name>)"
HTTP = {"url": "https://erp.example.internal/api"}
TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:sluice-alerts"
SM_ARN = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:orders-workflow-state-machine"
FN = "orders-worker-function"
PRIORITIES = ["HIGH", "NORMAL", "BATCH"]
QUEUES = {p: f"orders-queues-{p.lower()}" for p in PRIORITIES}
DLQS = {p: f"orders-queues-{p.lower()}-dlq" for p in PRIORITIES}
TICKETS = "orders-queues-dispatch-tickets"
TICKETS_DLQ = "orders-queues-dispatch-tickets-dlq"


def dashboard(*, ticket: bool = True, age: int = 300, keyed: bool = False) -> dict[str, Any]:
    return build_dashboard_body(
        region=REGION,
        priorities=PRIORITIES,
        queue_names=QUEUES,
        dlq_names=DLQS,
        ticket_queue_name=TICKETS if ticket else None,
        ticket_dlq_name=TICKETS_DLQ if ticket else None,
        function_name=FN,
        concurrency=4,
        state_machine_arn=SM_ARN,
        high_age_alarm_seconds=age,
        keyed=keyed,
    )


def alarms(*, ticket: bool = True, topic: str | None = TOPIC, age: int = 300) -> dict[str, dict[str, Any]]:
    return build_alarm_specs(
        priorities=PRIORITIES,
        queue_names=QUEUES,
        dlq_names=DLQS,
        ticket_dlq_name=TICKETS_DLQ if ticket else None,
        function_name=FN,
        high_age_alarm_seconds=age,
        alarm_topic_arn=topic,
    )


def sqs(metric: str, queue: str, label: str) -> list[Any]:
    return ["AWS/SQS", metric, "QueueName", queue, {"label": label}]


def emf(metric: str, priority: str) -> list[Any]:
    return [
        "Sluice",
        metric,
        "FunctionName",
        FN,
        "Priority",
        priority,
        "service",
        "sluice-worker",
        {"label": f"{metric} {priority}"},
    ]


VISIBLE, AGE = "ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage"
EXPECTED_WIDGETS: list[tuple[str, list[list[Any]], str, list[dict[str, Any]] | None]] = [
    (
        "Queue depth (visible messages)",
        [*(sqs(VISIBLE, QUEUES[p], p) for p in PRIORITIES), sqs(VISIBLE, TICKETS, "tickets")],
        "Maximum",
        None,
    ),
    (
        "Age of oldest message (s)",
        [sqs(AGE, QUEUES[p], p) for p in PRIORITIES],
        "Maximum",
        [{"label": "HIGH age alarm", "value": 300}],
    ),
    (
        "Dead-letter queue depth",
        [*(sqs(VISIBLE, DLQS[p], p) for p in PRIORITIES), sqs(VISIBLE, TICKETS_DLQ, "tickets")],
        "Maximum",
        None,
    ),
    (
        "Worker errors and throttles",
        [["AWS/Lambda", "Errors", "FunctionName", FN], ["AWS/Lambda", "Throttles", "FunctionName", FN]],
        "Sum",
        None,
    ),
    (
        "Worker invocations in flight",
        [["AWS/Lambda", "ConcurrentExecutions", "FunctionName", FN]],
        "Maximum",
        [{"label": "API concurrency limit", "value": 4}],
    ),
    (
        "Batch execution time (ms)",
        [["AWS/States", "ExecutionTime", "StateMachineArn", SM_ARN]],
        "Average",
        None,
    ),
    (
        "Batch executions",
        [
            ["AWS/States", "ExecutionsSucceeded", "StateMachineArn", SM_ARN],
            ["AWS/States", "ExecutionsFailed", "StateMachineArn", SM_ARN],
            ["AWS/States", "ExecutionsTimedOut", "StateMachineArn", SM_ARN],
        ],
        "Sum",
        None,
    ),
    (
        "Items finished by priority",
        [emf(m, p) for m in ("ItemsProcessed", "ItemsFailed") for p in PRIORITIES],
        "Sum",
        None,
    ),
    (
        "Items sent back by priority",
        [emf(m, p) for m in ("ItemsRetried", "ItemsYielded", "ItemsForced") for p in PRIORITIES],
        "Sum",
        None,
    ),
    ("Queue wait p90 (ms)", [emf("QueueWaitTime", p) for p in PRIORITIES], "p90", None),
    ("API latency p90 (ms)", [emf("ApiLatency", p) for p in PRIORITIES], "p90", None),
]


def test_dashboard_widgets_are_exact() -> None:
    widgets = dashboard()["widgets"]
    assert len(widgets) == len(EXPECTED_WIDGETS)
    for i, (widget, (title, metrics, stat, horizontal)) in enumerate(
        zip(widgets, EXPECTED_WIDGETS, strict=True)
    ):
        properties = {
            "title": title,
            "view": "timeSeries",
            "region": REGION,
            "metrics": metrics,
            "stat": stat,
            "period": 60,
        }
        if horizontal is not None:
            properties["annotations"] = {"horizontal": horizontal}
        assert widget == {
            "type": "metric",
            "properties": properties,
            "x": (i % 2) * 12,
            "y": (i // 2) * 6,
            "width": 12,
            "height": 6,
        }, title


def test_a_stack_with_keys_shows_its_top_keys_by_items_waiting() -> None:
    plain, keyed = dashboard()["widgets"], dashboard(keyed=True)["widgets"]
    assert keyed[: len(plain)] == plain
    top, count = (w["properties"] for w in keyed[len(plain) :])
    assert top["title"] == "Top keys by items waiting"
    assert top["metrics"][0] == [
        {
            "expression": "SELECT MAX(KeyWaitingItems) "
            "FROM SCHEMA(Sluice, FunctionName, Key, Priority, service) "
            "WHERE FunctionName = 'orders-worker-function' "
            "GROUP BY Key, Priority ORDER BY MAX() DESC LIMIT 10",
            "id": "topkeys",
            "label": "",
        }
    ]
    assert top["metrics"][1:] == [
        ["Sluice", "OtherKeysWaitingItems", "FunctionName", FN, "Priority", p, "service", "sluice-worker",
         {"label": f"OtherKeysWaitingItems {p}"}]
        for p in PRIORITIES
    ]  # fmt: skip
    assert count["title"] == "Keys with items waiting"
    assert [m[1] for m in count["metrics"]] == ["KeysWaiting"] * 3


def test_the_yield_dispatch_dashboard_has_no_ticket_queue() -> None:
    widgets = {w["properties"]["title"]: w["properties"] for w in dashboard(ticket=False)["widgets"]}
    assert widgets["Queue depth (visible messages)"]["metrics"] == [
        sqs(VISIBLE, QUEUES[p], p) for p in PRIORITIES
    ]
    assert widgets["Dead-letter queue depth"]["metrics"] == [sqs(VISIBLE, DLQS[p], p) for p in PRIORITIES]


def dlq_alarm(queue: str, actions: list[str]) -> dict[str, Any]:
    return {
        "alarm_description": (
            f"Dead letters in {queue}: items or tickets that need a person (see RELIABILITY.md)."
        ),
        "namespace": "AWS/SQS",
        "metric_name": VISIBLE,
        "dimensions": {"QueueName": queue},
        "statistic": "Maximum",
        "period": 60,
        "evaluation_periods": 1,
        "threshold": 0,
        "comparison_operator": "GreaterThanThreshold",
        "treat_missing_data": "ignore",
        "alarm_actions": actions,
        "ok_actions": actions,
    }


def expected_alarms(actions: list[str], *, ticket: bool = True, age: int = 300) -> dict[str, dict[str, Any]]:
    expected = {f"dlq-{p.lower()}": dlq_alarm(DLQS[p], actions) for p in PRIORITIES}
    if ticket:
        expected["dlq-tickets"] = dlq_alarm(TICKETS_DLQ, actions)
    expected["age-high"] = {
        "alarm_description": f"HIGH work has waited over {age}s in orders-queues-high.",
        "namespace": "AWS/SQS",
        "metric_name": AGE,
        "dimensions": {"QueueName": "orders-queues-high"},
        "statistic": "Maximum",
        "period": 60,
        "evaluation_periods": 3,
        "threshold": age,
        "comparison_operator": "GreaterThanThreshold",
        "treat_missing_data": "notBreaching",
        "alarm_actions": actions,
        "ok_actions": actions,
    }
    expected["worker-errors"] = {
        "alarm_description": f"Worker {FN} crashed or timed out (item errors are returned, not raised).",
        "namespace": "AWS/Lambda",
        "metric_name": "Errors",
        "dimensions": {"FunctionName": FN},
        "statistic": "Sum",
        "period": 60,
        "evaluation_periods": 1,
        "threshold": 0,
        "comparison_operator": "GreaterThanThreshold",
        "treat_missing_data": "notBreaching",
        "alarm_actions": actions,
        "ok_actions": actions,
    }
    return expected


def test_alarm_specs_are_exact() -> None:
    assert alarms() == expected_alarms([TOPIC])
    assert alarms(topic=None, ticket=False, age=900) == expected_alarms([], ticket=False, age=900)


# ---- the component ---------------------------------------------------------------------------


def build(args: dict[str, Any]) -> Recorder:
    def program() -> Any:
        from sluice_fanout.components import ThrottledFanOut

        fan_out = ThrottledFanOut("orders", args)  # type: ignore[arg-type]
        return pulumi.Output.all(fan_out.alarm_arns, fan_out.dashboard_name)

    return run_program(program)


def camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


def test_the_stack_creates_the_dashboard_and_alarms_from_the_builders() -> None:
    rec = build({"concurrency": 4, "http_target": HTTP, "alarm_topic_arn": TOPIC})
    (board,) = rec.of_type("aws:cloudwatch/dashboard:Dashboard")
    assert board.name == "orders-observability-dashboard"
    assert board.inputs["dashboardName"] == "sluice-test-orders-observability"
    assert json.loads(board.inputs["dashboardBody"]) == dashboard()
    created = {r.name: r.inputs for r in rec.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")}
    assert created == {
        f"orders-observability-alarm-{role}": {camel(k): v for k, v in spec.items()}
        for role, spec in expected_alarms([TOPIC]).items()
    }


def test_a_stack_with_keys_gets_the_keys_dashboard() -> None:
    rec = build({"concurrency": 4, "http_target": HTTP, "keys": {"field": "tenant"}})
    (board,) = rec.of_type("aws:cloudwatch/dashboard:Dashboard")
    assert json.loads(board.inputs["dashboardBody"]) == dashboard(keyed=True)


def test_dashboard_and_alarms_can_each_be_turned_off() -> None:
    rec = build({"concurrency": 4, "http_target": HTTP, "dashboard": False})
    assert rec.of_type("aws:cloudwatch/dashboard:Dashboard") == []
    assert len(rec.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")) == 6  # ticket DLQ too
    rec = build({"concurrency": 4, "http_target": HTTP, "alarms": False})
    assert len(rec.of_type("aws:cloudwatch/dashboard:Dashboard")) == 1
    assert rec.of_type("aws:cloudwatch/metricAlarm:MetricAlarm") == []


@pytest.mark.parametrize(
    ("arg", "value", "rule"),
    [
        ("alarm_topic_arn", "sluice-alerts", SNS_RULE),
        ("alarm_topic_arn", TOPIC.replace(":sns:", ":sqs:"), SNS_RULE),
        ("alarm_topic_arn", TOPIC + "\n", SNS_RULE),
        ("high_age_alarm_seconds", 59, "must be between 60 and 1209600"),
        ("high_age_alarm_seconds", "300", "must be a whole number"),
        ("dashboard", "false", "must be true or false"),
        ("alarms", 0, "must be true or false"),
    ],
)
def test_bad_observability_args_fail_whole_naming_value_and_key(arg: str, value: Any, rule: str) -> None:
    failures: list[SluiceConfigError] = []

    def program() -> None:
        from sluice_fanout.components import ThrottledFanOut

        try:
            ThrottledFanOut("orders", {"concurrency": 4, "http_target": HTTP, arg: value})  # type: ignore[misc]
        except SluiceConfigError as exc:
            failures.append(exc)

    rec = run_program(program)
    assert rec.resources == []
    key = {"alarm_topic_arn": "alarmTopicArn", "high_age_alarm_seconds": "highAgeAlarmSeconds"}.get(arg, arg)
    assert str(failures[0]) == f"ThrottledFanOut 'orders': {arg} {rule}, got {value!r} (set sluice:{key})"


def test_stack_config_sets_the_observability_args() -> None:
    root = Path(__file__).resolve().parents[2]
    config = {
        "sluice:concurrency": "2",
        "sluice:httpUrl": HTTP["url"],
        "sluice:alarmTopicArn": TOPIC,
        "sluice:highAgeAlarmSeconds": "120",
        "sluice:dashboard": "false",
    }
    rec = run_program(lambda: runpy.run_path(str(root / "__main__.py")), config=config)
    assert rec.of_type("aws:cloudwatch/dashboard:Dashboard") == []
    age = rec.named("sluice-observability-alarm-age-high").inputs
    assert (age["threshold"], age["alarmActions"], age["okActions"]) == (120, [TOPIC], [TOPIC])
    rec = run_program(
        lambda: runpy.run_path(str(root / "__main__.py")), config={**config, "sluice:alarms": "false"}
    )
    assert rec.of_type("aws:cloudwatch/metricAlarm:MetricAlarm") == []


def test_each_priority_can_have_a_wait_objective_alarm_and_dashboard_line() -> None:
    rec = build({"concurrency": 4, "http_target": HTTP, "wait_objectives": {"NORMAL": 900, "BATCH": "3600"}})
    alarms = {r.name: r.inputs for r in rec.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")}
    ages = {
        name.rsplit("-", 1)[1]: (a["threshold"], a["dimensions"], a["evaluationPeriods"])
        for name, a in alarms.items()
        if "-alarm-age-" in name
    }
    assert ages == {
        "high": (300, {"QueueName": QUEUES["HIGH"]}, 3),  # high_age_alarm_seconds' default
        "normal": (900, {"QueueName": QUEUES["NORMAL"]}, 3),
        "batch": (3600, {"QueueName": QUEUES["BATCH"]}, 3),
    }
    (board,) = rec.of_type("aws:cloudwatch/dashboard:Dashboard")
    widgets = {
        w["properties"]["title"]: w["properties"]
        for w in json.loads(board.inputs["dashboardBody"])["widgets"]
    }
    assert widgets["Age of oldest message (s)"]["annotations"]["horizontal"] == [
        {"label": "HIGH age alarm", "value": 300},
        {"label": "NORMAL age alarm", "value": 900},
        {"label": "BATCH age alarm", "value": 3600},
    ]


@pytest.mark.parametrize(
    ("objectives", "extra", "message"),
    [
        (
            {"LOW": 600},
            {},
            "wait_objectives names 'LOW', not one of the priorities ['HIGH', 'NORMAL', 'BATCH']",
        ),
        ({"NORMAL": 59}, {}, "wait_objectives['NORMAL'] must be between 60 and 1209600, got 59"),
        ([600], {}, 'wait_objectives must map priorities to seconds, e.g. {"NORMAL": 900}'),
        (
            {"HIGH": 60},
            {"high_age_alarm_seconds": 120},
            "names 'HIGH', whose objective high_age_alarm_seconds also sets",
        ),
    ],
)
def test_bad_wait_objectives_are_refused_by_name(
    objectives: Any, extra: dict[str, Any], message: str
) -> None:
    failures: list[SluiceConfigError] = []

    def program() -> None:
        from sluice_fanout.components import ThrottledFanOut

        try:
            ThrottledFanOut(
                "orders", {"concurrency": 4, "http_target": HTTP, "wait_objectives": objectives, **extra}
            )  # type: ignore[misc]
        except SluiceConfigError as exc:
            failures.append(exc)

    rec = run_program(program)
    assert rec.resources == []
    assert message in str(failures[0])


def test_stack_config_sets_the_wait_objectives() -> None:
    root = Path(__file__).resolve().parents[2]
    config = {
        "sluice:concurrency": "2",
        "sluice:httpUrl": HTTP["url"],
        "sluice:waitObjectives": '{"BATCH": 7200}',
    }
    rec = run_program(lambda: runpy.run_path(str(root / "__main__.py")), config=config)
    assert rec.named("sluice-observability-alarm-age-batch").inputs["threshold"] == 7200
