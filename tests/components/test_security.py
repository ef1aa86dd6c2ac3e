"""Security properties of the mocked stack, walked over every resource rather than named ones:
encrypted and TLS-only queues, least-privilege IAM, secrets by reference, no execution data in
logs. What the mocks cannot prove: that AWS accepts the key policy or enforces these documents
(parliament lints them in test_documents_lint.py; a real deploy would be the proof)."""

from __future__ import annotations

import json
import runpy
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from components.validation import SluiceConfigError
from tests.support.mocks import ACCOUNT, REGION, Recorder, run_program

HTTP = {"url": "https://erp.example.internal/api"}
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ALIAS_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/sluice/queues"
SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:erp-token-AbCdEf"
SSM_ARN = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/erp/token"
SSM_NAME = "/erp/token"
INPUT_BUCKET_ARN = "arn:aws:s3:::orders-inbox"
DIRECT_FUNCTION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:direct"

STACKS: dict[str, dict[str, Any]] = {
    "ticket": {"concurrency": 4, "http_target": {**HTTP, "secret_arn": SECRET_ARN}},
    "yield": {
        "concurrency": 4,
        "dispatch": "yield",
        "http_target": {**HTTP, "ssm_parameter_arn": SSM_ARN, "ssm_parameter_name": SSM_NAME},
        "input_bucket_arns": [INPUT_BUCKET_ARN],
        "direct_function_arn": DIRECT_FUNCTION_ARN,
    },
    "kms-key": {"concurrency": 4, "http_target": HTTP, "queue_kms_key_arn": KEY_ARN},
    "kms-alias": {
        "concurrency": 4,
        "dispatch": "yield",
        "http_target": HTTP,
        "queue_kms_key_arn": ALIAS_ARN,
    },
}
QUEUE_COUNT = {"ticket": 8, "yield": 6, "kms-key": 8, "kms-alias": 6}
"""A queue and a DLQ per priority, plus the ticket queue and its DLQ with the ticket dispatch."""


@cache
def stack(kind: str) -> Recorder:
    def program() -> None:
        from components import ThrottledFanOut

        ThrottledFanOut("orders", STACKS[kind])  # type: ignore[arg-type]

    return run_program(program)


def queues(rec: Recorder) -> list[Any]:
    return rec.of_type("aws:sqs/queue:Queue")


def policy_of(rec: Recorder, name: str) -> dict[str, Any]:
    return json.loads(rec.named(name).inputs["policy"])  # type: ignore[no-any-return]


# ---- 1. encryption ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ticket", "yield"])
def test_every_queue_uses_sqs_managed_encryption_by_default(kind: str) -> None:
    rec = stack(kind)
    assert len(queues(rec)) == QUEUE_COUNT[kind]
    for queue in queues(rec):
        assert queue.inputs["sqsManagedSseEnabled"] is True, queue.name
        assert "kmsMasterKeyId" not in queue.inputs, queue.name
    # No key, no KMS permission anywhere.
    for policy in rec.of_type("aws:iam/rolePolicy:RolePolicy"):
        assert "kms:" not in policy.inputs["policy"], policy.name


@pytest.mark.parametrize(("kind", "key"), [("kms-key", KEY_ARN), ("kms-alias", ALIAS_ARN)])
def test_a_customer_key_encrypts_every_queue(kind: str, key: str) -> None:
    rec = stack(kind)
    assert len(queues(rec)) == QUEUE_COUNT[kind]
    for queue in queues(rec):
        assert queue.inputs["kmsMasterKeyId"] == key, queue.name
        assert queue.inputs["kmsDataKeyReusePeriodSeconds"] == 300, queue.name
        # SSE-SQS and SSE-KMS are exclusive: SQS refuses a queue with both.
        assert "sqsManagedSseEnabled" not in queue.inputs, queue.name


def key_statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in policy["Statement"] if any(a.startswith("kms:") for a in s["Action"])]


@pytest.mark.parametrize("role_policy", ["orders-worker-policy", "orders-workflow-sfn-policy"])
def test_the_key_is_granted_to_the_roles_that_send_and_receive(role_policy: str) -> None:
    """The worker receives and dead-letters, the state machine sends: both need exactly
    Decrypt and GenerateDataKey, on that key alone. Aggregate and map-run never touch a queue."""
    assert key_statements(policy_of(stack("kms-key"), role_policy)) == [
        {
            "Sid": "UseQueueKey",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": [KEY_ARN],
        }
    ]
    # IAM matches key use against key ARNs only: an alias is granted through its condition key.
    assert key_statements(policy_of(stack("kms-alias"), role_policy)) == [
        {
            "Sid": "UseQueueKey",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": [f"arn:aws:kms:{REGION}:{ACCOUNT}:key/*"],
            "Condition": {"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/sluice/queues"}},
        }
    ]
    for name in ("orders-workflow-aggregate-policy", "orders-workflow-sfn-map-run-policy"):
        assert key_statements(policy_of(stack("kms-key"), name)) == []


def test_stack_config_sets_the_queue_key() -> None:
    root = Path(__file__).resolve().parents[2]
    config = {
        "sluice:concurrency": "2",
        "sluice:httpUrl": HTTP["url"],
        "sluice:queueKmsKeyArn": KEY_ARN,
    }
    rec = run_program(lambda: runpy.run_path(str(root / "__main__.py")), config=config)
    assert {q.inputs["kmsMasterKeyId"] for q in queues(rec)} == {KEY_ARN}
    assert key_statements(policy_of(rec, "sluice-worker-policy"))[0]["Resource"] == [KEY_ARN]


@pytest.mark.parametrize(
    "value",
    [
        "1234abcd-12ab-34cd-56ef-1234567890ab",  # a bare key id: nothing for IAM to scope to
        "alias/sluice",
        f"arn:aws:kms:{REGION}:{ACCOUNT}:key/not-a-key-id",
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        f"arn:aws:kms:{REGION}:12345:alias/sluice",
        f"{KEY_ARN} ",
        "",
        42,
    ],
)
def test_a_bad_queue_key_fails_whole(value: Any) -> None:
    failure: list[SluiceConfigError] = []

    def program() -> None:
        from components import ThrottledFanOut

        try:
            ThrottledFanOut("orders", {"concurrency": 1, "http_target": HTTP, "queue_kms_key_arn": value})
        except SluiceConfigError as exc:
            failure.append(exc)

    rec = run_program(program)
    (error,) = failure
    assert str(error).startswith("ThrottledFanOut 'orders': queue_kms_key_arn must be a KMS key ARN")
    assert str(error).endswith(f"got {value!r} (set sluice:queueKmsKeyArn)")
    assert rec.resources == []


def test_priority_queues_alone_check_the_key() -> None:
    from components import PriorityQueues

    with pytest.raises(SluiceConfigError, match=r"^PriorityQueues 'q': queue_kms_key_arn must be"):
        PriorityQueues("q", {"queue_kms_key_arn": "alias/sluice"})
