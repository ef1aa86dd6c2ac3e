"""Pulumi mocks that record every registered resource, with its resolved inputs and parent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockMonitor

ACCOUNT = "123456789012"
REGION = "us-east-1"


@dataclass
class Registered:
    typ: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    parent_urn: str
    urn: str


@dataclass
class Recorder(pulumi.runtime.Mocks):
    resources: list[Registered] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outputs = dict(args.inputs)
        outputs.update(fake_attributes(args.typ, args.name))
        self.resources.append(Registered(args.typ, args.name, dict(args.inputs), outputs, "", ""))
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        return {}

    # Lookups for assertions.
    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.typ == typ]

    def named(self, name: str) -> Registered:
        matches = [r for r in self.resources if r.name == name]
        assert len(matches) == 1, f"expected one resource named {name!r}, got {len(matches)}"
        return matches[0]


def fake_attributes(typ: str, name: str) -> dict[str, Any]:
    """The attributes AWS would compute, in AWS's formats, so wiring can be asserted exactly."""
    region, account = REGION, ACCOUNT
    table: dict[str, dict[str, Any]] = {
        "aws:sqs/queue:Queue": {
            "arn": f"arn:aws:sqs:{region}:{account}:{name}",
            "url": f"https://sqs.{region}.amazonaws.com/{account}/{name}",
        },
        "aws:lambda/function:Function": {
            "arn": f"arn:aws:lambda:{region}:{account}:function:{name}",
            "name": name,
        },
        "aws:sfn/stateMachine:StateMachine": {
            "arn": f"arn:aws:states:{region}:{account}:stateMachine:{name}",
            "name": name,
        },
        "aws:iam/role:Role": {"arn": f"arn:aws:iam::{account}:role/{name}", "name": name},
        "aws:cloudwatch/logGroup:LogGroup": {
            "arn": f"arn:aws:logs:{region}:{account}:log-group:{name}",
            "name": name,
        },
        "aws:s3/bucket:Bucket": {"arn": f"arn:aws:s3:::{name}", "bucket": name},
        "aws:dynamodb/table:Table": {
            "arn": f"arn:aws:dynamodb:{region}:{account}:table/{name}",
            "name": name,
        },
        "aws:lambda/eventSourceMapping:EventSourceMapping": {
            "uuid": f"uuid-{name}",
            "arn": f"arn:aws:lambda:{region}:{account}:event-source-mapping:uuid-{name}",
        },
        "aws:cloudwatch/eventRule:EventRule": {
            "arn": f"arn:aws:events:{region}:{account}:rule/{name}",
            "name": name,
        },
        "aws:cloudwatch/metricAlarm:MetricAlarm": {
            "arn": f"arn:aws:cloudwatch:{region}:{account}:alarm:{name}"
        },
    }
    return table.get(typ, {})


class _ParentRecordingMonitor(MockMonitor):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder)
        self._recorder = recorder

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            # Registrations run on several threads: find this one's record by type and name.
            (record,) = (
                r for r in self._recorder.resources if (r.typ, r.name) == (request.type, request.name)
            )
            record.parent_urn = request.parent
            record.urn = response.urn
        return response


def run_program(
    program: Callable[[], Any], config: dict[str, str] | None = None, project: str = "sluice"
) -> Recorder:
    """Run `program` under mocks and return every resource it registered."""
    recorder = Recorder()
    pulumi.runtime.set_mocks(
        recorder, project=project, stack="test", preview=False, monitor=_ParentRecordingMonitor(recorder)
    )
    pulumi.runtime.set_all_config(config or {})

    @pulumi.runtime.test
    def run() -> Any:
        return program()

    run()
    return recorder
