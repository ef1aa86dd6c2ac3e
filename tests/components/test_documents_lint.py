"""The generated documents pass the linters no emulator replaces: asl-validator and parliament."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import parliament
import pytest

from sluice_fanout.components.definition import build_state_machine_definition
from sluice_fanout.components.policies import (
    build_aggregate_policy,
    build_controller_policy,
    build_map_run_policy,
    build_order_policy,
    build_state_machine_policy,
    build_tls_only_queue_policy,
    build_worker_policy,
)

ROOT = Path(__file__).resolve().parents[2]
ASL_VALIDATOR = ROOT / "node_modules" / ".bin" / "asl-validator"
ACCOUNT, REGION = "123456789012", "us-east-1"
SM_ARN = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:sm"
LOGS = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:lg"


def queue_urls(priorities: list[str]) -> dict[str, str]:
    return {p: f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{p.lower()}" for p in priorities}


DEFINITIONS = {
    "default": build_state_machine_definition(
        priorities=["HIGH", "NORMAL", "BATCH"],
        queue_urls=queue_urls(["HIGH", "NORMAL", "BATCH"]),
        aggregate_function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:agg",
        order_function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:order",
        results_bucket="results",
    ),
    "ticket": build_state_machine_definition(
        priorities=["HIGH", "NORMAL", "BATCH"],
        queue_urls=queue_urls(["HIGH", "NORMAL", "BATCH"]),
        aggregate_function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:agg",
        order_function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:order",
        results_bucket="results",
        ticket_queue_url=f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/tickets",
    ),
    "one-priority-direct-function-custom-rule": build_state_machine_definition(
        priorities=["ONLY"],
        queue_urls=queue_urls(["ONLY"]),
        aggregate_function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:agg",
        order_function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:order",
        results_bucket="results",
        throttle_rule={"Variable": "$.item.kind", "StringEquals": "erp"},
        direct_function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:direct",
        callback_timeout_seconds=600,
        map_max_concurrency=10,
    ),
}


def run_asl_validator(definition: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert ASL_VALIDATOR.exists(), "asl-validator is missing: run `make tools` (make test does it)"
    path = tmp_path / "definition.json"
    path.write_text(json.dumps(definition))
    return subprocess.run(  # noqa: S603 - our own tool on our own file
        [str(ASL_VALIDATOR), "--json-path", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
def test_definitions_pass_asl_validator(name: str, tmp_path: Path) -> None:
    result = run_asl_validator(DEFINITIONS[name], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_asl_validator_catches_a_broken_definition(tmp_path: Path) -> None:
    broken = json.loads(json.dumps(DEFINITIONS["default"]))
    del broken["States"]["Aggregate"]["End"]  # a Task with neither Next nor End
    assert run_asl_validator(broken, tmp_path).returncode != 0


# Each finding parliament reports on our policies, with why it stands.
JUSTIFIED = {
    # parliament's IAM data knows DescribeExecution only on express executions; AWS documents
    # execution ARNs (stateMachineName/*) for Distributed Map child runs.
    ("map-run", "RESOURCE_MISMATCH"),
    # parliament checks conditions against the action's own keys only; its IAM data lists
    # kms:ResourceAliases under the `key` resource type, which is how AWS documents granting a
    # key by alias.
    ("state-machine-kms-alias", "UNKNOWN_CONDITION_FOR_ACTION"),
}

POLICIES = {
    "worker": build_worker_policy(
        queue_arns=[f"arn:aws:sqs:{REGION}:{ACCOUNT}:q"],
        dlq_arns=[f"arn:aws:sqs:{REGION}:{ACCOUNT}:q-dlq"],
        log_group_arn=LOGS,
        idempotency_table_arn=f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/idempotency",
        results_bucket_arn="arn:aws:s3:::results",
        secret_arn=f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:erp-AbCdEf",
        ssm_parameter_arn=f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/erp/token",
    ),
    "aggregate": build_aggregate_policy(results_bucket_arn="arn:aws:s3:::results", log_group_arn=LOGS),
    "order": build_order_policy(
        results_bucket_arn="arn:aws:s3:::results",
        input_bucket_arns=["arn:aws:s3:::results", "arn:aws:s3:::inputs"],
        log_group_arn=LOGS,
    ),
    "state-machine": build_state_machine_policy(
        queue_arns=[f"arn:aws:sqs:{REGION}:{ACCOUNT}:q"],
        function_arns=[f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:agg"],
        results_bucket_arn="arn:aws:s3:::results",
        input_bucket_arns=["arn:aws:s3:::results", "arn:aws:s3:::inputs"],
    ),
    "worker-kms-key": build_worker_policy(
        queue_arns=[f"arn:aws:sqs:{REGION}:{ACCOUNT}:q"],
        dlq_arns=[f"arn:aws:sqs:{REGION}:{ACCOUNT}:q-dlq"],
        log_group_arn=LOGS,
        idempotency_table_arn=f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/idempotency",
        kms_key_arn=f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    ),
    "state-machine-kms-alias": build_state_machine_policy(
        queue_arns=[f"arn:aws:sqs:{REGION}:{ACCOUNT}:q"],
        function_arns=[f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:agg"],
        results_bucket_arn="arn:aws:s3:::results",
        input_bucket_arns=["arn:aws:s3:::results"],
        kms_key_arn=f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/sluice/queues",
    ),
    "map-run": build_map_run_policy(state_machine_arn=SM_ARN),
    "tls-only": build_tls_only_queue_policy(queue_arn=f"arn:aws:sqs:{REGION}:{ACCOUNT}:q"),
    "controller": build_controller_policy(
        worker_function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:worker",
        mapping_arns=[
            f"arn:aws:lambda:{REGION}:{ACCOUNT}:event-source-mapping:0f1e2d3c-aaaa-bbbb-cccc-123456789012"
        ],
        state_table_arn=f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/idempotency",
        state_key="controller#worker",
        limits_key="limits#worker",
        log_group_arn=LOGS,
    ),
}


def findings(policy: dict[str, Any]) -> set[str]:
    analyzed = parliament.analyze_policy_string(json.dumps(policy), include_community_auditors=False)
    return {f.issue for f in analyzed.findings}


def test_parliament_reports_only_justified_findings() -> None:
    found = {(name, issue) for name, policy in POLICIES.items() for issue in findings(policy)}
    assert found == JUSTIFIED


def test_parliament_catches_a_bad_policy() -> None:
    bad = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sqs:Recieve", "Resource": "*"}],
    }
    assert findings(bad)


def test_only_the_justified_statements_use_wildcard_resources() -> None:
    wildcards = {
        (name, s["Sid"])
        for name, policy in POLICIES.items()
        for s in policy["Statement"]
        if s["Effect"] == "Allow" and "*" in s["Resource"]
    }
    assert wildcards == {
        ("worker", "AnswerTaskTokens"),
        ("worker-kms-key", "AnswerTaskTokens"),
        ("state-machine", "DeliverExecutionLogs"),
        ("state-machine-kms-alias", "DeliverExecutionLogs"),
        ("controller", "ReadWorkerMetrics"),
    }
