"""Observability: the CloudWatch dashboard and alarms of one Sluice stack."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NotRequired, TypedDict

import pulumi
import pulumi_aws as aws

from sluice_fanout.components.observability_documents import (
    build_alarm_specs,
    build_dashboard_body,
    queue_name_of,
    region_of,
)

DASHBOARD_NAME_MAX = 255
DASHBOARD_NAME_INVALID = re.compile(r"[^A-Za-z0-9_-]")  # PutDashboard: letters, digits, - and _


class ObservabilityArgs(TypedDict):
    priorities: Sequence[str]
    """Priority names, highest first. Plain values: they decide which alarms exist."""
    queue_urls: pulumi.Input[Mapping[str, str]]
    dlq_urls: pulumi.Input[Mapping[str, str]]
    ticket_queue_url: NotRequired[pulumi.Input[str] | None]
    ticket_dlq_url: NotRequired[pulumi.Input[str] | None]
    """The ticket queue and its DLQ (ticket dispatch); its DLQ gets an alarm like the others."""
    function_name: pulumi.Input[str]
    """The worker function: the FunctionName dimension of Lambda's and the worker's metrics."""
    state_machine_arn: pulumi.Input[str]
    """Its region is the dashboard's."""
    concurrency: int
    """Drawn as the limit line on the in-flight widget."""
    high_age_alarm_seconds: int
    alarm_topic_arn: NotRequired[str | None]
    """An existing SNS topic told of every ALARM and OK; none: alarms only change state."""
    dashboard: NotRequired[bool]
    """Create the dashboard. Default True."""
    wait_objectives: NotRequired[Mapping[str, int]]
    """Longest wait by priority in seconds: an age alarm and a dashboard line each (the highest
    priority's is `high_age_alarm_seconds` unless named here)."""
    keyed: NotRequired[bool]
    """The stack has `keys`: the dashboard shows the top keys by items waiting. Default False."""
    alarms: NotRequired[bool]
    """Create the alarms. Default True."""


class Observability(pulumi.ComponentResource):
    """A CloudWatch dashboard and metric alarms for one Sluice stack, from pure builders."""

    dashboard_name: pulumi.Output[str] | None
    """None when the dashboard is disabled."""
    alarm_arns: pulumi.Output[dict[str, str]]
    """Alarm ARN by role (`dlq-high`, `dlq-tickets`, `age-high`, `worker-errors`); empty when
    alarms are disabled."""

    def __init__(
        self, name: str, args: ObservabilityArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("sluice:index:Observability", name, {}, opts)
        child = pulumi.ResourceOptions(parent=self)
        priorities = list(args["priorities"])
        names = pulumi.Output.all(
            queue_urls=args["queue_urls"],
            dlq_urls=args["dlq_urls"],
            ticket_queue_url=args.get("ticket_queue_url"),
            ticket_dlq_url=args.get("ticket_dlq_url"),
            function_name=args["function_name"],
            state_machine_arn=args["state_machine_arn"],
        ).apply(_names)

        self.dashboard_name = None
        if args.get("dashboard", True):
            dashboard = aws.cloudwatch.Dashboard(
                f"{name}-dashboard",
                dashboard_name=_dashboard_name(name),
                dashboard_body=pulumi.Output.json_dumps(
                    names.apply(
                        lambda n: build_dashboard_body(
                            region=region_of(n["state_machine_arn"]),
                            priorities=priorities,
                            queue_names=n["queue_names"],
                            dlq_names=n["dlq_names"],
                            ticket_queue_name=n["ticket_queue_name"],
                            ticket_dlq_name=n["ticket_dlq_name"],
                            function_name=n["function_name"],
                            concurrency=args["concurrency"],
                            state_machine_arn=n["state_machine_arn"],
                            high_age_alarm_seconds=args["high_age_alarm_seconds"],
                            wait_objectives=args.get("wait_objectives"),
                            keyed=args.get("keyed", False),
                        )
                    )
                ),
                opts=child,
            )
            self.dashboard_name = dashboard.dashboard_name

        alarms: dict[str, aws.cloudwatch.MetricAlarm] = {}
        if args.get("alarms", True):
            specs = names.apply(
                lambda n: build_alarm_specs(
                    priorities=priorities,
                    queue_names=n["queue_names"],
                    dlq_names=n["dlq_names"],
                    ticket_dlq_name=n["ticket_dlq_name"],
                    function_name=n["function_name"],
                    high_age_alarm_seconds=args["high_age_alarm_seconds"],
                    alarm_topic_arn=args.get("alarm_topic_arn"),
                    wait_objectives=args.get("wait_objectives"),
                )
            )
            # Which alarms exist is known from plain values; only their settings wait on names.
            roles = [f"dlq-{p.lower()}" for p in priorities]
            if "ticket_dlq_url" in args and args["ticket_dlq_url"] is not None:
                roles.append("dlq-tickets")
            ages = {priorities[0], *args.get("wait_objectives", {})}
            roles += [f"age-{p.lower()}" for p in priorities if p in ages] + ["worker-errors"]
            for role in roles:
                alarms[role] = aws.cloudwatch.MetricAlarm(
                    f"{name}-alarm-{role}", **_alarm_inputs(specs, role), opts=child
                )
        self.alarm_arns = pulumi.Output.all(**{r: a.arn for r, a in alarms.items()}).apply(dict)
        self.register_outputs({"dashboard_name": self.dashboard_name, "alarm_arns": self.alarm_arns})


def _names(a: dict[str, Any]) -> dict[str, Any]:
    return {
        "queue_names": {p: queue_name_of(u) for p, u in a["queue_urls"].items()},
        "dlq_names": {p: queue_name_of(u) for p, u in a["dlq_urls"].items()},
        "ticket_queue_name": queue_name_of(a["ticket_queue_url"]) if a["ticket_queue_url"] else None,
        "ticket_dlq_name": queue_name_of(a["ticket_dlq_url"]) if a["ticket_dlq_url"] else None,
        "function_name": a["function_name"],
        "state_machine_arn": a["state_machine_arn"],
    }


def _alarm_inputs(
    specs: pulumi.Output[dict[str, dict[str, Any]]], role: str
) -> dict[str, pulumi.Output[Any]]:
    keys = (
        "alarm_description",
        "namespace",
        "metric_name",
        "dimensions",
        "statistic",
        "period",
        "evaluation_periods",
        "threshold",
        "comparison_operator",
        "treat_missing_data",
        "alarm_actions",
        "ok_actions",
    )

    def setting(key: str) -> pulumi.Output[Any]:
        return specs.apply(lambda by_role: by_role[role][key])

    return {key: setting(key) for key in keys}


def _dashboard_name(name: str) -> str:
    """Dashboard names are unique per account and region, and not autonamed by Pulumi: the
    project and stack keep two Sluice stacks (or two components) apart."""
    raw = f"{pulumi.get_project()}-{pulumi.get_stack()}-{name}"
    return DASHBOARD_NAME_INVALID.sub("-", raw)[:DASHBOARD_NAME_MAX]
