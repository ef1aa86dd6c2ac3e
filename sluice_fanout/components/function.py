"""A Sluice Lambda function with what each one has: its role, its log group, its role policy
(which names the log group) and the function, logging JSON to that group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pulumi
import pulumi_aws as aws

from sluice_fanout.components.bundle import handler_archive
from sluice_fanout.components.policies import build_assume_role_policy

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

LAMBDA_RUNTIME = "python3.13"


@dataclass(frozen=True)
class SluiceFunction:
    role: aws.iam.Role
    log_group: aws.cloudwatch.LogGroup
    function: aws.lambda_.Function


def sluice_function(
    parent: pulumi.Resource,
    *,
    prefix: str,
    function_name: str,
    handler: str,
    retention_days: int,
    policy: Callable[[pulumi.Output[str]], pulumi.Input[Mapping[str, Any]]],
    timeout_seconds: int,
    memory_mb: int,
    environment: Mapping[str, pulumi.Input[str]] | None = None,
    target_dir: str | None = None,
    reserved_concurrency: int | None = None,
    ignore_changes: list[str] | None = None,
) -> SluiceFunction:
    """`{prefix}-role`, `{prefix}-logs`, `{prefix}-policy` and the function `function_name`.

    `policy(log_group_arn)` gives the role's policy document. The function depends on the policy:
    whatever invokes it (a mapping that starts polling, a schedule) must find its role allowed.
    """
    child = pulumi.ResourceOptions(parent=parent)
    role = aws.iam.Role(
        f"{prefix}-role",
        assume_role_policy=pulumi.Output.json_dumps(build_assume_role_policy("lambda.amazonaws.com")),
        opts=child,
    )
    log_group = aws.cloudwatch.LogGroup(f"{prefix}-logs", retention_in_days=retention_days, opts=child)
    role_policy = aws.iam.RolePolicy(
        f"{prefix}-policy",
        role=role.id,
        policy=pulumi.Output.json_dumps(policy(log_group.arn)),
        opts=child,
    )
    function = aws.lambda_.Function(
        function_name,
        role=role.arn,
        runtime=LAMBDA_RUNTIME,
        handler=handler,
        code=handler_archive(target_dir),
        timeout=timeout_seconds,
        memory_size=memory_mb,
        reserved_concurrent_executions=reserved_concurrency,
        environment={"variables": dict(environment)} if environment else None,
        logging_config={"log_format": "JSON", "log_group": log_group.name},
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[role_policy], ignore_changes=ignore_changes),
    )
    return SluiceFunction(role=role, log_group=log_group, function=function)
