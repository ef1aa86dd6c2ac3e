"""FanOutWorkflow: the STANDARD state machine with the Distributed Map, and its Aggregate Lambda."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import pulumi
import pulumi_aws as aws

from sluice_fanout.components import validation as v
from sluice_fanout.components.definition import build_state_machine_definition
from sluice_fanout.components.function import sluice_function
from sluice_fanout.components.policies import (
    build_aggregate_policy,
    build_assume_role_policy,
    build_map_run_policy,
    build_order_policy,
    build_state_machine_policy,
)
from sluice_fanout.handlers import contract, limits
from sluice_fanout.handlers.contract import DEFAULT_THROTTLE_RULE
from sluice_fanout.handlers.fair import KeysSettings

COMPONENT = "FanOutWorkflow"
DISTRIBUTED_MAP_MAX_CONCURRENCY = 10_000  # child executions a Distributed Map runs at once
LOG_LEVELS = ("ALL", "ERROR", "FATAL", "OFF")
WORKFLOW_FUNCTION_TIMEOUT_SECONDS = 300
WORKFLOW_FUNCTION_MEMORY_MB = 1024


class FanOutWorkflowArgs(TypedDict):
    priorities: Sequence[str]
    """Priority names, highest first."""
    queue_urls: pulumi.Input[Mapping[str, str]]
    queue_arns: pulumi.Input[Mapping[str, str]]
    throttle_rule: NotRequired[Mapping[str, Any]]
    """An ASL Choice rule (without Next) over the child input `{"item", "index", "execution"}`
    selecting items that go through the queues. Default: items with a `priority`."""
    default_priority: NotRequired[str]
    """Queue for selected items that carry no priority. Default: the lowest priority."""
    callback_timeout_seconds: NotRequired[int]
    """How long an item may wait for the worker, queueing included. Default 86400 (1 day)."""
    map_max_concurrency: NotRequired[int]
    """Child executions running at once. Default 1000."""
    tolerated_failure_percentage: NotRequired[float]
    """Share of children allowed to fail outright (infrastructure failure) before the batch
    fails. Default 5."""
    direct_function_arn: NotRequired[pulumi.Input[str]]
    """Lambda run for items that skip the queues. Default: none, the item is its own result."""
    input_bucket_arns: NotRequired[Sequence[pulumi.Input[str]]]
    """Extra buckets the Map may read batches from (the results bucket is always allowed)."""
    log_level: NotRequired[str]
    """State machine log level. Default ERROR, without execution data."""
    log_retention_days: NotRequired[int]
    """Default 14."""
    ticket_queue_url: NotRequired[pulumi.Input[str]]
    """The `ticket` dispatch's ticket queue: each throttled item drops a ticket there first."""
    ticket_queue_arn: NotRequired[pulumi.Input[str]]
    """Its ARN, for the state machine's IAM policy."""
    queue_kms_key_arn: NotRequired[str]
    """The customer KMS key encrypting the queues (as given to PriorityQueues), if any: the role
    may then encrypt the messages it sends, with that key only."""
    keys: NotRequired[KeysSettings]
    """Fair share between keys (docs/keys.md, `ticket` dispatch only): throttled items with a
    string in the key field wait in a keyed table this component creates. Default: none."""


class FanOutWorkflow(pulumi.ComponentResource):
    """The parent state machine: Distributed Map over the batch, then Aggregate."""

    state_machine_arn: pulumi.Output[str]
    state_machine_name: pulumi.Output[str]
    results_bucket_arn: pulumi.Output[str]
    results_bucket: pulumi.Output[str]
    """Bucket for batches read from S3 (upload under `inputs/`) and Map results (`results/`)."""
    keyed_table_name: pulumi.Output[str] | None
    """With `keys`: the table where keyed items wait, and their keys' ledgers; else None."""
    keyed_table_arn: pulumi.Output[str] | None
    aggregate_function_name: pulumi.Output[str]
    order_function_name: pulumi.Output[str]
    """Sorts a batch larger than the Map's concurrency by priority before the Map opens it."""

    def __init__(
        self, name: str, args: FanOutWorkflowArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        cfg = check_workflow_args(name, args)
        priorities = cfg.priorities
        retention = cfg.log_retention_days
        super().__init__("sluice:index:FanOutWorkflow", name, {}, opts)
        child = pulumi.ResourceOptions(parent=self)

        bucket = aws.s3.Bucket(f"{name}-results", force_destroy=False, opts=child)
        aws.s3.BucketPublicAccessBlock(
            f"{name}-results-private",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )

        input_bucket_arns = pulumi.Output.all(bucket.arn, *args.get("input_bucket_arns", []))
        # The order function holds a whole batch (up to the 100,000s of items an S3 source may
        # have) in memory once; the aggregate reads results one at a time, but a big batch's
        # result files take a while to read and Lambda's CPU grows with memory.
        aggregate = sluice_function(
            self,
            prefix=f"{name}-aggregate",
            function_name=f"{name}-aggregate",
            handler=contract.AGGREGATE_HANDLER,
            retention_days=retention,
            policy=lambda logs_arn: pulumi.Output.all(bucket.arn, logs_arn).apply(
                lambda a: build_aggregate_policy(results_bucket_arn=a[0], log_group_arn=a[1])
            ),
            timeout_seconds=WORKFLOW_FUNCTION_TIMEOUT_SECONDS,
            memory_mb=WORKFLOW_FUNCTION_MEMORY_MB,
        ).function
        order = sluice_function(
            self,
            prefix=f"{name}-order",
            function_name=f"{name}-order",
            handler=contract.ORDER_HANDLER,
            retention_days=retention,
            policy=lambda logs_arn: pulumi.Output.all(bucket.arn, input_bucket_arns, logs_arn).apply(
                lambda a: build_order_policy(
                    results_bucket_arn=a[0], input_bucket_arns=a[1], log_group_arn=a[2]
                )
            ),
            timeout_seconds=WORKFLOW_FUNCTION_TIMEOUT_SECONDS,
            memory_mb=WORKFLOW_FUNCTION_MEMORY_MB,
            environment={
                contract.ENV_ORDER_BUCKET: bucket.bucket,
                contract.ENV_ORDER_PRIORITIES: json.dumps(priorities),
                contract.ENV_ORDER_DEFAULT_PRIORITY: cfg.default_priority,
            },
        ).function

        keys = args.get("keys")
        keyed_table = keyed_table_for(name, child) if keys is not None else None

        # State machine.
        sm_role = aws.iam.Role(
            f"{name}-sfn-role",
            assume_role_policy=pulumi.Output.json_dumps(build_assume_role_policy("states.amazonaws.com")),
            opts=child,
        )
        direct_arn = args.get("direct_function_arn")
        function_arns: list[pulumi.Input[str]] = [aggregate.arn, order.arn] + (
            [direct_arn] if direct_arn is not None else []
        )
        sm_policy = aws.iam.RolePolicy(
            f"{name}-sfn-policy",
            role=sm_role.id,
            policy=pulumi.Output.json_dumps(
                pulumi.Output.all(
                    queue_arns=args["queue_arns"],
                    ticket_arn=args.get("ticket_queue_arn"),
                    function_arns=pulumi.Output.all(*function_arns),
                    bucket_arn=bucket.arn,
                    input_bucket_arns=input_bucket_arns,
                    keyed_arn=keyed_table.arn if keyed_table is not None else None,
                ).apply(
                    lambda a: build_state_machine_policy(
                        queue_arns=[a["queue_arns"][p] for p in priorities]
                        + ([a["ticket_arn"]] if a["ticket_arn"] else []),
                        function_arns=a["function_arns"],
                        results_bucket_arn=a["bucket_arn"],
                        input_bucket_arns=a["input_bucket_arns"],
                        kms_key_arn=cfg.kms_key_arn,
                        keyed_table_arn=a["keyed_arn"],
                    )
                )
            ),
            opts=child,
        )
        sm_logs = aws.cloudwatch.LogGroup(
            f"{name}-sfn-logs",
            # Vended logs for Step Functions must go to a group under /aws/vendedlogs/ to keep
            # the logs resource policy small (AWS recommendation).
            name_prefix="/aws/vendedlogs/states/sluice-",
            retention_in_days=retention,
            opts=child,
        )
        definition = pulumi.Output.all(
            queue_urls=args["queue_urls"],
            aggregate_arn=aggregate.arn,
            order_arn=order.arn,
            bucket=bucket.bucket,
            direct_arn=direct_arn,
            ticket_url=args.get("ticket_queue_url"),
            keyed_table=keyed_table.name if keyed_table is not None else None,
        ).apply(
            lambda a: build_state_machine_definition(
                priorities=priorities,
                queue_urls=a["queue_urls"],
                aggregate_function_arn=a["aggregate_arn"],
                order_function_arn=a["order_arn"],
                results_bucket=a["bucket"],
                throttle_rule=cfg.throttle_rule,
                default_priority=cfg.default_priority,
                callback_timeout_seconds=cfg.callback_timeout_seconds,
                map_max_concurrency=cfg.map_max_concurrency,
                tolerated_failure_percentage=cfg.tolerated_failure_percentage,
                direct_function_arn=a["direct_arn"],
                ticket_queue_url=a["ticket_url"],
                keys=keys,
                keyed_table=a["keyed_table"],
            )
        )
        state_machine = aws.sfn.StateMachine(
            f"{name}-state-machine",
            type="STANDARD",  # callbacks (waitForTaskToken) need STANDARD
            role_arn=sm_role.arn,
            definition=pulumi.Output.json_dumps(definition),
            logging_configuration={
                "level": cfg.log_level,
                # Execution data holds items and results: keep it out of logs by default.
                "include_execution_data": False,
                "log_destination": sm_logs.arn.apply(lambda arn: f"{arn}:*"),
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[sm_policy]),
        )
        aws.iam.RolePolicy(
            f"{name}-sfn-map-run-policy",
            role=sm_role.id,
            policy=pulumi.Output.json_dumps(
                state_machine.arn.apply(lambda arn: build_map_run_policy(state_machine_arn=arn))
            ),
            opts=child,
        )

        self.state_machine_arn = state_machine.arn
        self.state_machine_name = state_machine.name
        self.results_bucket = bucket.bucket
        self.results_bucket_arn = bucket.arn
        self.keyed_table_name = keyed_table.name if keyed_table is not None else None
        self.keyed_table_arn = keyed_table.arn if keyed_table is not None else None
        self.aggregate_function_name = aggregate.name
        self.order_function_name = order.name
        self.register_outputs(
            {
                "state_machine_arn": self.state_machine_arn,
                "state_machine_name": self.state_machine_name,
                "results_bucket": self.results_bucket,
                "results_bucket_arn": self.results_bucket_arn,
                "aggregate_function_name": self.aggregate_function_name,
                "order_function_name": self.order_function_name,
                "keyed_table_name": self.keyed_table_name,
            }
        )


def keyed_table_for(name: str, opts: pulumi.ResourceOptions) -> aws.dynamodb.Table:
    """Where keyed items wait (docs/keys.md): a table of its own, created only with keys, so a
    stack without them gets nothing new and the idempotency table keeps its one job."""
    attributes = {contract.IDEMPOTENCY_KEY_ATTRIBUTE: "S"}
    indexes = []
    for index, ((hash_name, hash_type), (range_name, range_type)) in contract.KEYED_INDEXES.items():
        attributes |= {hash_name: hash_type, range_name: range_type}
        indexes.append(
            aws.dynamodb.TableGlobalSecondaryIndexArgs(
                name=index, hash_key=hash_name, range_key=range_name, projection_type="ALL"
            )
        )
    return aws.dynamodb.Table(
        f"{name}-keyed",
        billing_mode="PAY_PER_REQUEST",
        hash_key=contract.IDEMPOTENCY_KEY_ATTRIBUTE,
        attributes=[aws.dynamodb.TableAttributeArgs(name=n, type=t) for n, t in attributes.items()],
        global_secondary_indexes=indexes,
        ttl={"attribute_name": contract.IDEMPOTENCY_EXPIRY_ATTRIBUTE, "enabled": True},
        server_side_encryption={"enabled": True},
        opts=opts,
    )


@dataclass(frozen=True)
class WorkflowSettings:
    priorities: list[str]
    default_priority: str
    throttle_rule: Mapping[str, Any]
    callback_timeout_seconds: int
    map_max_concurrency: int
    tolerated_failure_percentage: float
    log_level: str
    log_retention_days: int
    kms_key_arn: str | None


def check_workflow_args(name: str, args: Mapping[str, Any], component: str = COMPONENT) -> WorkflowSettings:
    """Check the plain args (Inputs are not read); return them with defaults filled in."""
    c = component
    priorities = v.check_priorities(c, name, args.get("priorities"))
    default_priority = v.check_choice(
        c, name, "default_priority", args.get("default_priority", priorities[-1]), priorities
    )
    throttle_rule = args.get("throttle_rule", DEFAULT_THROTTLE_RULE)
    if not isinstance(throttle_rule, Mapping) or "Next" in throttle_rule or not throttle_rule:
        raise v.fail(
            c, name, "throttle_rule", "must be an ASL Choice rule object without Next", throttle_rule
        )
    callback_timeout = v.check_int(
        c,
        name,
        "callback_timeout_seconds",
        args.get("callback_timeout_seconds", 86_400),
        low=1,
        high=limits.SFN_MAX_TIMEOUT_SECONDS,
    )
    map_max_concurrency = v.check_int(
        c,
        name,
        "map_max_concurrency",
        args.get("map_max_concurrency", 1_000),
        low=1,
        high=DISTRIBUTED_MAP_MAX_CONCURRENCY,
    )
    tolerated = v.check_number(
        c,
        name,
        "tolerated_failure_percentage",
        args.get("tolerated_failure_percentage", 5.0),
        low=0,
        high=100,
    )
    log_level = v.check_choice(c, name, "log_level", args.get("log_level", "ERROR"), LOG_LEVELS)
    retention = v.check_log_retention_days(c, name, args.get("log_retention_days", 14))
    return WorkflowSettings(
        priorities=priorities,
        default_priority=default_priority,
        throttle_rule=throttle_rule,
        callback_timeout_seconds=callback_timeout,
        map_max_concurrency=map_max_concurrency,
        tolerated_failure_percentage=tolerated,
        log_level=log_level,
        log_retention_days=retention,
        kms_key_arn=v.check_kms_key_arn(c, name, "queue_kms_key_arn", args.get("queue_kms_key_arn")),
    )
