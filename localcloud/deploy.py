"""Deploy the real stack program to the embedded AWS: no second, hand-written copy of the
infrastructure."""

from __future__ import annotations

import io
import json
import runpy
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pulumi
from pulumi.runtime.settings import get_root_resource

from localcloud.control_plane import create_detached_mapping
from localcloud.specs import MappingSpec, ScheduleSpec

if TYPE_CHECKING:
    from localcloud.cloud import EmbeddedAws

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class DeployedStack:
    outputs: dict[str, Any]
    mappings: list[MappingSpec]
    resources: dict[str, str] = field(default_factory=dict)
    """Pulumi type by resource name, for tests and the summary."""
    schedules: list[ScheduleSpec] = field(default_factory=list)
    """Scheduled invocations, one per rule target (the adaptive controller's)."""


def archive_zip(archive: Any) -> bytes:
    """Zip a Pulumi AssetArchive as `pulumi up` would upload it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        _add(zf, archive, "")
    return buffer.getvalue()


def _add(zf: zipfile.ZipFile, node: Any, prefix: str) -> None:
    if isinstance(node, pulumi.AssetArchive):
        for name, child in node.assets.items():
            _add(zf, child, f"{prefix}{name}" if isinstance(child, pulumi.Asset) else f"{prefix}{name}/")
    elif isinstance(node, pulumi.FileArchive):
        base = Path(node.path)
        for path in sorted(base.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, prefix + str(path.relative_to(base)))
    elif isinstance(node, pulumi.FileAsset):
        zf.write(node.path, prefix.rstrip("/"))
    elif isinstance(node, pulumi.StringAsset):
        zf.writestr(prefix.rstrip("/"), node.text)
    else:
        raise TypeError(f"cannot zip {type(node).__name__} at {prefix!r}")


class MotoResources(pulumi.runtime.Mocks):
    """Creates each registered resource in moto and returns its real attributes."""

    def __init__(self, aws: EmbeddedAws) -> None:
        self.aws = aws
        self.mappings: list[MappingSpec] = []
        self.schedules: list[ScheduleSpec] = []
        self._schedule_expressions: dict[str, str] = {}
        """Schedule expression by rule name, for the targets that follow their rule."""
        self.types: dict[str, str] = {}
        self._clients: dict[str, Any] = {}

    def _c(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.aws.client(service)
        return self._clients[service]

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:  # noqa: ARG002 - Mocks' signature
        return {}, None

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.types[args.name] = args.typ
        create = getattr(self, "_" + args.typ.split(":")[-1], None)
        if args.typ.startswith("sluice:") or create is None:
            if not args.typ.startswith("sluice:") and args.custom:
                raise NotImplementedError(f"the embedded AWS cannot create {args.typ} ({args.name})")
            return f"{args.name}-id", dict(args.inputs)
        physical_id, attributes = create(args.name, args.inputs)
        return physical_id, {**args.inputs, **attributes}

    # One method per resource type the components create, named after the type's last part.

    def _Queue(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802 - one signature for every creator
        attrs = {
            "VisibilityTimeout": str(int(i.get("visibilityTimeoutSeconds", 30))),
            "MessageRetentionPeriod": str(int(i.get("messageRetentionSeconds", 345_600))),
            "SqsManagedSseEnabled": str(bool(i.get("sqsManagedSseEnabled", False))).lower(),
        }
        if "redrivePolicy" in i:
            attrs["RedrivePolicy"] = i["redrivePolicy"]
        url = self._c("sqs").create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
        arn = self._c("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        return url, {"url": url, "arn": arn, "name": name}

    def _QueuePolicy(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802, ARG002 - one signature for every creator
        self._c("sqs").set_queue_attributes(QueueUrl=i["queueUrl"], Attributes={"Policy": i["policy"]})
        return i["queueUrl"], {}

    def _RedriveAllowPolicy(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802, ARG002 - one signature for every creator
        self._c("sqs").set_queue_attributes(
            QueueUrl=i["queueUrl"], Attributes={"RedriveAllowPolicy": i["redriveAllowPolicy"]}
        )
        return i["queueUrl"], {}

    def _Role(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802 - one signature for every creator
        role = self._c("iam").create_role(RoleName=name, AssumeRolePolicyDocument=i["assumeRolePolicy"])[
            "Role"
        ]
        return name, {"arn": role["Arn"], "name": name}

    def _RolePolicy(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802 - one signature for every creator
        self._c("iam").put_role_policy(RoleName=i["role"], PolicyName=name, PolicyDocument=i["policy"])
        return f"{i['role']}:{name}", {"name": name}

    def _LogGroup(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802 - one signature for every creator
        group = i.get("namePrefix", "") + name if "namePrefix" in i else i.get("name", name)
        self._c("logs").create_log_group(logGroupName=group)
        described = self._c("logs").describe_log_groups(logGroupNamePrefix=group)["logGroups"][0]
        return group, {"arn": described["arn"].removesuffix(":*"), "name": group}

    def _Bucket(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802, ARG002 - one signature for every creator
        self._c("s3").create_bucket(Bucket=name)
        return name, {"bucket": name, "arn": f"arn:aws:s3:::{name}"}

    def _BucketPublicAccessBlock(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802, ARG002 - one signature for every creator
        self._c("s3").put_public_access_block(
            Bucket=i["bucket"],
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        return i["bucket"], {}

    def _Function(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802 - one signature for every creator
        code = archive_zip(i["code"])
        env = dict(i.get("environment", {}).get("variables", {}))
        created = self._c("lambda").create_function(
            FunctionName=name,
            Runtime=i["runtime"],
            Role=i["role"],
            Handler=i["handler"],
            Code={"ZipFile": code},
            Timeout=int(i.get("timeout", 3)),
            MemorySize=int(i.get("memorySize", 128)),
            Environment={"Variables": env},
        )
        reserved = i.get("reservedConcurrentExecutions")
        if reserved is not None:
            self._c("lambda").put_function_concurrency(
                FunctionName=name, ReservedConcurrentExecutions=int(reserved)
            )
        self.aws.runner.register(
            name=name,
            arn=created["FunctionArn"],
            zip_bytes=code,
            handler=i["handler"],
            env=env,
            timeout_s=float(i.get("timeout", 3)),
            memory_mb=int(i.get("memorySize", 128)),
            reserved=int(reserved) if reserved is not None else None,
        )
        return name, {"arn": created["FunctionArn"], "name": name, "invokeArn": created["FunctionArn"]}

    def _EventSourceMapping(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802 - one signature for every creator
        spec = MappingSpec(
            uuid=f"esm-{name}",
            queue_arn=i["eventSourceArn"],
            function_name=i["functionName"].rsplit(":", 1)[-1],
            batch_size=int(i.get("batchSize", 10)),
            maximum_concurrency=int(i.get("scalingConfig", {}).get("maximumConcurrency", 1000)),
            report_batch_item_failures="ReportBatchItemFailures" in i.get("functionResponseTypes", []),
        )
        # Also in moto, under moto's UUID, so the adaptive controller's Lambda API calls find
        # the mapping the local pollers run (they follow its settings: ControlPlaneSync).
        spec.uuid = create_detached_mapping(self._c("lambda"), spec)
        self.mappings.append(spec)
        return spec.uuid, {"uuid": spec.uuid}

    def _FunctionEventInvokeConfig(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802, ARG002 - one signature for every creator
        settings = {
            "MaximumRetryAttempts": int(i["maximumRetryAttempts"]),
            "MaximumEventAgeInSeconds": int(i["maximumEventAgeInSeconds"]),
        }
        self._c("lambda").put_function_event_invoke_config(FunctionName=i["functionName"], **settings)
        return i["functionName"], {}

    def _Permission(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802 - one signature for every creator
        self._c("lambda").add_permission(
            FunctionName=i["function"],
            StatementId=name,
            Action=i["action"],
            Principal=i["principal"],
            SourceArn=i["sourceArn"],
        )
        return f"{i['function']}/{name}", {"statementId": name}

    def _EventRule(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802 - one signature for every creator
        arn = self._c("events").put_rule(
            Name=name, ScheduleExpression=i["scheduleExpression"], Description=i.get("description", "")
        )["RuleArn"]
        self._schedule_expressions[name] = i["scheduleExpression"]
        return name, {"arn": arn, "name": name}

    def _EventTarget(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802 - one signature for every creator
        self._c("events").put_targets(Rule=i["rule"], Targets=[{"Id": name, "Arn": i["arn"]}])
        self.schedules.append(
            ScheduleSpec(
                function_name=i["arn"].rsplit(":", 1)[-1], expression=self._schedule_expressions[i["rule"]]
            )
        )
        return f"{i['rule']}-{name}", {"targetId": name}

    def _Table(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802 - one signature for every creator
        ddb = self._c("dynamodb")
        ddb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": i["hashKey"], "KeyType": "HASH"}],
            AttributeDefinitions=[
                {"AttributeName": a["name"], "AttributeType": a["type"]} for a in i["attributes"]
            ],
            BillingMode=i.get("billingMode", "PAY_PER_REQUEST"),
            SSESpecification={"Enabled": bool(i.get("serverSideEncryption", {}).get("enabled", False))},
            **_indexes(i.get("globalSecondaryIndexes") or []),
        )
        ttl = i.get("ttl") or {}
        if ttl.get("enabled"):
            ddb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["attributeName"]},
            )
        arn = ddb.describe_table(TableName=name)["Table"]["TableArn"]
        return name, {"arn": arn, "name": name}

    def _Dashboard(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802, ARG002 - one signature for every creator
        board = i["dashboardName"]
        self._c("cloudwatch").put_dashboard(DashboardName=board, DashboardBody=i["dashboardBody"])
        arn = self._c("cloudwatch").get_dashboard(DashboardName=board)["DashboardArn"]
        return board, {"dashboardArn": arn}

    def _MetricAlarm(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802 - one signature for every creator
        cloudwatch = self._c("cloudwatch")
        cloudwatch.put_metric_alarm(
            AlarmName=name,
            AlarmDescription=i.get("alarmDescription", ""),
            Namespace=i["namespace"],
            MetricName=i["metricName"],
            Dimensions=[{"Name": k, "Value": v} for k, v in i.get("dimensions", {}).items()],
            Statistic=i["statistic"],
            Period=int(i["period"]),
            EvaluationPeriods=int(i["evaluationPeriods"]),
            Threshold=float(i["threshold"]),
            ComparisonOperator=i["comparisonOperator"],
            TreatMissingData=i.get("treatMissingData", "missing"),
            AlarmActions=list(i.get("alarmActions", [])),
            OKActions=list(i.get("okActions", [])),
        )
        arn = cloudwatch.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]["AlarmArn"]
        return name, {"arn": arn, "name": name}

    def _StateMachine(self, name: str, i: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802 - one signature for every creator
        arn = self._c("stepfunctions").create_state_machine(
            name=name, definition=i["definition"], roleArn=i["roleArn"], type=i.get("type", "STANDARD")
        )["stateMachineArn"]
        return arn, {"arn": arn, "name": name}


def deploy(aws: EmbeddedAws, config: dict[str, Any], program: Path = ROOT / "__main__.py") -> DeployedStack:
    """Run the stack program against the embedded AWS with `config` (keys like `sluice:concurrency`).

    The program (`__main__.py`) and its components run unchanged under Pulumi mocks; the mocks'
    resource hook creates each resource in moto and hands back moto's real ids, ARNs and URLs.
    Event source mappings are not created in moto (its mapping invokes synchronously inside
    SendMessage and never retries); they are recorded for the local poller, which keeps AWS's
    semantics.
    """
    mocks = MotoResources(aws)
    pulumi.runtime.set_mocks(mocks, project="sluice", stack="local", preview=False)
    pulumi.runtime.set_all_config({k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()})

    outputs: dict[str, Any] = {}

    def run_stack_program() -> Any:
        runpy.run_path(str(program), run_name="__main__")
        # `pulumi.export` puts Outputs on the root stack; resolve them to plain values.
        exported = get_root_resource().outputs  # type: ignore[union-attr]
        return pulumi.Output.all(**exported).apply(outputs.update)

    run_under_mocks: Any = pulumi.runtime.test  # untyped in the SDK
    run_under_mocks(run_stack_program)()
    return DeployedStack(
        outputs=outputs, mappings=mocks.mappings, resources=mocks.types, schedules=mocks.schedules
    )


def _indexes(declared: list[dict[str, Any]]) -> dict[str, Any]:
    """A table's global secondary indexes as Pulumi declared them (the keyed table's)."""
    if not declared:
        return {}
    return {
        "GlobalSecondaryIndexes": [
            {
                "IndexName": index["name"],
                "KeySchema": [{"AttributeName": index["hashKey"], "KeyType": "HASH"}]
                + (
                    [{"AttributeName": index["rangeKey"], "KeyType": "RANGE"}]
                    if index.get("rangeKey")
                    else []
                ),
                "Projection": {"ProjectionType": index.get("projectionType", "ALL")},
            }
            for index in declared
        ]
    }
