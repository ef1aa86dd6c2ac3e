"""Pure builders for the CloudWatch dashboard body and the alarm settings.

Plain values in (names, not Outputs), plain dicts out, so tests assert them exactly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sluice_fanout.handlers.contract import (
    DIMENSION_FUNCTION,
    DIMENSION_KEY,
    DIMENSION_PRIORITY,
    DIMENSION_SERVICE,
    METRIC_API_LATENCY,
    METRIC_FAILED,
    METRIC_FORCED,
    METRIC_KEY_WAITING_ITEMS,
    METRIC_KEYS_WAITING,
    METRIC_OTHER_KEYS_WAITING_ITEMS,
    METRIC_PROCESSED,
    METRIC_QUEUE_WAIT,
    METRIC_RETRIED,
    METRIC_YIELDED,
    METRICS_NAMESPACE,
    METRICS_SERVICE,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

PERIOD_SECONDS = 60  # SQS and Lambda publish one-minute data; finer periods would show gaps
DEFAULT_HIGH_AGE_ALARM_SECONDS = 300
"""An urgent item waiting 5 minutes means the API's limit no longer keeps up with urgent work."""
HIGH_AGE_EVALUATION_PERIODS = 3
"""Three minutes in a row over the threshold: one slow minute is not a page."""
TICKETS_LABEL = "tickets"
WIDGET_WIDTH = 12  # two widgets per row of the 24-column grid
WIDGET_HEIGHT = 6


def queue_name_of(url: str) -> str:
    """SQS's QueueName dimension: the last path segment of the queue URL."""
    return url.rsplit("/", 1)[-1]


def region_of(arn: str) -> str:
    return arn.split(":")[3]


def _widget(
    title: str,
    region: str,
    metrics: list[list[Any]],
    stat: str,
    annotations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "title": title,
        "view": "timeSeries",
        "region": region,
        "metrics": metrics,
        "stat": stat,
        "period": PERIOD_SECONDS,
    }
    if annotations:
        properties["annotations"] = {"horizontal": annotations}
    return {"type": "metric", "properties": properties}


def _sqs(metric: str, names: Mapping[str, str]) -> list[list[Any]]:
    return [["AWS/SQS", metric, "QueueName", queue, {"label": label}] for label, queue in names.items()]


def _sluice(metric: str, function_name: str, priorities: Sequence[str]) -> list[list[Any]]:
    """A worker EMF metric by priority, with every dimension the worker publishes it with.

    Every metric is queried with the exact dimension set it is published with: CloudWatch matches
    no subset.
    """
    return [
        [
            METRICS_NAMESPACE,
            metric,
            DIMENSION_FUNCTION,
            function_name,
            DIMENSION_PRIORITY,
            p,
            DIMENSION_SERVICE,
            METRICS_SERVICE,
            {"label": f"{metric} {p}"},
        ]
        for p in priorities
    ]


TOP_KEYS_SHOWN = 10


def top_keys_query(function_name: str) -> str:
    """Metrics Insights: the keys with the most items waiting, any priority (the worker names
    at most a few per priority per minute, so the query reads a bounded set)."""
    schema = ", ".join(
        (METRICS_NAMESPACE, DIMENSION_FUNCTION, DIMENSION_KEY, DIMENSION_PRIORITY, DIMENSION_SERVICE)
    )
    # A Lambda function name is letters, digits, - and _ only: nothing in it can end the quote.
    return (
        f"SELECT MAX({METRIC_KEY_WAITING_ITEMS}) FROM SCHEMA({schema}) "  # noqa: S608 - Metrics Insights, not a database
        f"WHERE {DIMENSION_FUNCTION} = '{function_name}' GROUP BY {DIMENSION_KEY}, {DIMENSION_PRIORITY} "
        f"ORDER BY MAX() DESC LIMIT {TOP_KEYS_SHOWN}"
    )


def _keys_widgets(region: str, function_name: str, priorities: Sequence[str]) -> list[dict[str, Any]]:
    top = _widget(
        "Top keys by items waiting",
        region,
        [
            [{"expression": top_keys_query(function_name), "id": "topkeys", "label": ""}],
            *_sluice(METRIC_OTHER_KEYS_WAITING_ITEMS, function_name, priorities),
        ],
        "Maximum",
    )
    return [
        top,
        _widget(
            "Keys with items waiting",
            region,
            _sluice(METRIC_KEYS_WAITING, function_name, priorities),
            "Maximum",
        ),
    ]


def build_dashboard_body(
    *,
    region: str,
    priorities: Sequence[str],
    queue_names: Mapping[str, str],
    dlq_names: Mapping[str, str],
    ticket_queue_name: str | None,
    ticket_dlq_name: str | None,
    function_name: str,
    concurrency: int,
    state_machine_arn: str,
    high_age_alarm_seconds: int,
    wait_objectives: Mapping[str, int] | None = None,
    keyed: bool = False,
) -> dict[str, Any]:
    """The dashboard: queues, DLQs, the worker against its limit, executions, and the worker's
    own item metrics, all by priority (and, with `keys`, the top keys by items waiting). Names
    by priority, highest first."""
    queues = {p: queue_names[p] for p in priorities}
    dlqs = {p: dlq_names[p] for p in priorities}
    if ticket_queue_name is not None:
        queues[TICKETS_LABEL] = ticket_queue_name
    if ticket_dlq_name is not None:
        dlqs[TICKETS_LABEL] = ticket_dlq_name
    fn = ["FunctionName", function_name]
    sm = ["StateMachineArn", state_machine_arn]
    widgets = [
        _widget(
            "Queue depth (visible messages)",
            region,
            _sqs("ApproximateNumberOfMessagesVisible", queues),
            "Maximum",
        ),
        _widget(
            "Age of oldest message (s)",
            region,
            _sqs("ApproximateAgeOfOldestMessage", {p: queue_names[p] for p in priorities}),
            "Maximum",
            [
                {"label": f"{p} age alarm", "value": seconds}
                for p, seconds in _objectives(priorities, high_age_alarm_seconds, wait_objectives).items()
            ],
        ),
        _widget(
            "Dead-letter queue depth", region, _sqs("ApproximateNumberOfMessagesVisible", dlqs), "Maximum"
        ),
        _widget(
            "Worker errors and throttles",
            region,
            [["AWS/Lambda", "Errors", *fn], ["AWS/Lambda", "Throttles", *fn]],
            "Sum",
        ),
        _widget(
            "Worker invocations in flight",
            region,
            [["AWS/Lambda", "ConcurrentExecutions", *fn]],
            "Maximum",
            [{"label": "API concurrency limit", "value": concurrency}],
        ),
        _widget("Batch execution time (ms)", region, [["AWS/States", "ExecutionTime", *sm]], "Average"),
        _widget(
            "Batch executions",
            region,
            [
                ["AWS/States", "ExecutionsSucceeded", *sm],
                ["AWS/States", "ExecutionsFailed", *sm],
                ["AWS/States", "ExecutionsTimedOut", *sm],
            ],
            "Sum",
        ),
        _widget(
            "Items finished by priority",
            region,
            _sluice(METRIC_PROCESSED, function_name, priorities)
            + _sluice(METRIC_FAILED, function_name, priorities),
            "Sum",
        ),
        _widget(
            "Items sent back by priority",
            region,
            [
                *_sluice(METRIC_RETRIED, function_name, priorities),
                *_sluice(METRIC_YIELDED, function_name, priorities),
                *_sluice(METRIC_FORCED, function_name, priorities),
            ],
            "Sum",
        ),
        _widget("Queue wait p90 (ms)", region, _sluice(METRIC_QUEUE_WAIT, function_name, priorities), "p90"),
        _widget(
            "API latency p90 (ms)", region, _sluice(METRIC_API_LATENCY, function_name, priorities), "p90"
        ),
    ]
    if keyed:
        widgets += _keys_widgets(region, function_name, priorities)
    for i, widget in enumerate(widgets):
        widget |= {
            "x": (i % 2) * WIDGET_WIDTH,
            "y": (i // 2) * WIDGET_HEIGHT,
            "width": WIDGET_WIDTH,
            "height": WIDGET_HEIGHT,
        }
    return {"widgets": widgets}


def _alarm(
    *,
    description: str,
    namespace: str,
    metric: str,
    dimensions: dict[str, str],
    statistic: str,
    threshold: float,
    evaluation_periods: int,
    treat_missing_data: str,
    actions: list[str],
) -> dict[str, Any]:
    return {
        "alarm_description": description,
        "namespace": namespace,
        "metric_name": metric,
        "dimensions": dimensions,
        "statistic": statistic,
        "period": PERIOD_SECONDS,
        "evaluation_periods": evaluation_periods,
        "threshold": threshold,
        "comparison_operator": "GreaterThanThreshold",
        "treat_missing_data": treat_missing_data,
        "alarm_actions": actions,
        "ok_actions": actions,
    }


def _objectives(
    priorities: Sequence[str], high_age_alarm_seconds: int, wait_objectives: Mapping[str, int] | None
) -> dict[str, int]:
    """Each priority's longest-wait objective, highest priority first."""
    given = {priorities[0]: high_age_alarm_seconds} | dict(wait_objectives or {})
    return {p: given[p] for p in priorities if p in given}


def build_alarm_specs(
    *,
    priorities: Sequence[str],
    queue_names: Mapping[str, str],
    dlq_names: Mapping[str, str],
    ticket_dlq_name: str | None,
    function_name: str,
    high_age_alarm_seconds: int,
    alarm_topic_arn: str | None,
    wait_objectives: Mapping[str, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """MetricAlarm arguments by role (the role names the resource): one per DLQ, the highest
    priority's age, and worker errors. `alarm_topic_arn` gets both ALARM and OK notifications."""
    actions = [alarm_topic_arn] if alarm_topic_arn else []
    dlqs = {p.lower(): dlq_names[p] for p in priorities}
    if ticket_dlq_name is not None:
        dlqs[TICKETS_LABEL] = ticket_dlq_name
    specs = {
        # "ignore" keeps the state while SQS reports nothing: it stops reporting a queue idle for
        # six hours even with messages in it, which must not turn a full DLQ back to OK.
        f"dlq-{role}": _alarm(
            description=f"Dead letters in {queue}: items or tickets that need a person (see RELIABILITY.md).",
            namespace="AWS/SQS",
            metric="ApproximateNumberOfMessagesVisible",
            dimensions={"QueueName": queue},
            statistic="Maximum",
            threshold=0,
            evaluation_periods=1,
            treat_missing_data="ignore",
            actions=actions,
        )
        for role, queue in dlqs.items()
    }
    for p, seconds in _objectives(priorities, high_age_alarm_seconds, wait_objectives).items():
        specs[f"age-{p.lower()}"] = _alarm(
            description=f"{p} work has waited over {seconds}s in {queue_names[p]}.",
            namespace="AWS/SQS",
            metric="ApproximateAgeOfOldestMessage",
            dimensions={"QueueName": queue_names[p]},
            statistic="Maximum",
            threshold=seconds,
            evaluation_periods=HIGH_AGE_EVALUATION_PERIODS,
            # An idle queue reports nothing: nothing is waiting.
            treat_missing_data="notBreaching",
            actions=actions,
        )
    specs["worker-errors"] = _alarm(
        description=f"Worker {function_name} crashed or timed out (item errors are returned, not raised).",
        namespace="AWS/Lambda",
        metric="Errors",
        dimensions={"FunctionName": function_name},
        statistic="Sum",
        threshold=0,
        evaluation_periods=1,
        treat_missing_data="notBreaching",
        actions=actions,
    )
    return specs
