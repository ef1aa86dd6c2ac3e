"""Security properties of the mocked stack, walked over every resource rather than named ones:
encrypted and TLS-only queues, least-privilege IAM, secrets by reference, no execution data in
logs. What the mocks cannot prove: that AWS accepts the key policy or enforces these documents
(parliament lints them in test_documents_lint.py; a real deploy would be the proof)."""

from __future__ import annotations

import json
import re
import runpy
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from sluice_fanout.components.validation import SluiceConfigError
from sluice_fanout.handlers import contract
from tests.support.mocks import ACCOUNT, REGION, Recorder, run_program

HTTP = {"url": "https://erp.example.internal/api"}
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ALIAS_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/sluice/queues"
SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:erp-token-AbCdEf"
SSM_ARN = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/erp/token"
SSM_NAME = "/erp/token"
INPUT_BUCKET_ARN = "arn:aws:s3:::orders-inbox"
DIRECT_FUNCTION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:direct"
GIVEN_ARNS = (KEY_ARN, SECRET_ARN, SSM_ARN, INPUT_BUCKET_ARN, DIRECT_FUNCTION_ARN)
"""ARNs handed in as args: a policy may name them though the stack does not own them."""

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
    "adaptive": {"concurrency": 4, "dispatch": "yield", "http_target": HTTP, "adaptive": {}},
}
QUEUE_COUNT = {"ticket": 8, "yield": 6, "kms-key": 8, "kms-alias": 6, "adaptive": 6}
"""A queue and a DLQ per priority, plus the ticket queue and its DLQ with the ticket dispatch."""


@cache
def stack(kind: str) -> Recorder:
    def program() -> None:
        from sluice_fanout.components import ThrottledFanOut

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
    Decrypt and GenerateDataKey, on that key alone. Aggregate, order and map-run never touch a queue."""
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
    for name in (
        "orders-workflow-aggregate-policy",
        "orders-workflow-order-policy",
        "orders-workflow-sfn-map-run-policy",
    ):
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
        from sluice_fanout.components import ThrottledFanOut

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
    from sluice_fanout.components import PriorityQueues

    with pytest.raises(SluiceConfigError, match=r"^PriorityQueues 'q': queue_kms_key_arn must be"):
        PriorityQueues("q", {"queue_kms_key_arn": "alias/sluice"})


# ---- 2. TLS only -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(STACKS))
def test_every_queue_denies_access_without_tls(kind: str) -> None:
    rec = stack(kind)
    policies: dict[str, list[dict[str, Any]]] = {}
    for p in rec.of_type("aws:sqs/queuePolicy:QueuePolicy"):
        policies.setdefault(p.inputs["queueUrl"], []).append(json.loads(p.inputs["policy"]))
    for queue in queues(rec):
        (policy,) = policies.get(queue.outputs["url"], [{"Statement": []}])
        assert {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "sqs:*",
            "Resource": queue.outputs["arn"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        } in policy["Statement"], queue.name


# ---- 3. least privilege ----------------------------------------------------------------------

WILDCARD_RESOURCE_ACTIONS = {
    # IAM's service authorization reference lists these with Resource "*" only; a caller needs
    # a live, unguessable task token to act at all.
    "states:SendTaskSuccess": "no resource-level permissions; scoped by the task token",
    "states:SendTaskFailure": "no resource-level permissions; scoped by the task token",
    "states:SendTaskHeartbeat": "no resource-level permissions; scoped by the task token",
    # CloudWatch Logs vended delivery: AWS documents these with "*" for Step Functions logging.
    **dict.fromkeys(
        [
            "logs:CreateLogDelivery",
            "logs:DeleteLogDelivery",
            "logs:DescribeLogGroups",
            "logs:DescribeResourcePolicies",
            "logs:GetLogDelivery",
            "logs:ListLogDeliveries",
            "logs:PutResourcePolicy",
            "logs:UpdateLogDelivery",
        ],
        "log delivery has no resource-level permissions (Step Functions logging guide)",
    ),
    # The adaptive controller reads the worker's metrics; IAM's service authorization reference
    # lists GetMetricData with Resource "*" only. It reads metrics, never changes anything.
    "cloudwatch:GetMetricData": "no resource-level permissions; read only",
}
"""The only actions that may be allowed on Resource "*", each with the reason."""


def documents(rec: Recorder) -> list[tuple[str, dict[str, Any]]]:
    """Every policy document in any resource input, found by shape, not by name, so a document
    a new resource adds is walked too."""
    found: list[tuple[str, dict[str, Any]]] = []

    def walk(owner: str, node: Any) -> None:
        if isinstance(node, str) and node.lstrip().startswith("{"):
            try:
                node = json.loads(node)
            except ValueError:
                return
        if isinstance(node, dict):
            if "Statement" in node:
                found.append((owner, node))
                return
            for value in node.values():
                walk(owner, value)
        elif isinstance(node, list):
            for value in node:
                walk(owner, value)

    for record in rec.resources:
        walk(record.name, record.inputs)
    return found


def own_arns(rec: Recorder) -> set[str]:
    arns = {r.outputs["arn"] for r in rec.resources if isinstance(r.outputs.get("arn"), str)}
    # A Distributed Map's children are executions of its own state machine.
    arns |= {a.replace(":stateMachine:", ":execution:") for a in arns if ":stateMachine:" in a}
    return arns


def within(resource: str, arns: set[str]) -> bool:
    """`resource` is one of `arns`, or a path or qualifier under one (`bucket/results/*`,
    `log-group:*`, `function:*`, `execution:machine/*`)."""
    return any(resource == arn or resource.startswith((f"{arn}/", f"{arn}:")) for arn in arns)


def is_alias_grant(statement: dict[str, Any], resource: str) -> bool:
    """The one documented way to grant a key by alias: this account's keys, narrowed by
    kms:ResourceAliases to the alias given."""
    condition = statement.get("Condition", {}).get("ForAnyValue:StringEquals", {})
    return (
        resource == f"arn:aws:kms:{REGION}:{ACCOUNT}:key/*"
        and set(statement["Action"]) <= {"kms:Decrypt", "kms:GenerateDataKey"}
        and f"arn:aws:kms:{REGION}:{ACCOUNT}:{condition.get('kms:ResourceAliases')}" == ALIAS_ARN
    )


def listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def privilege_problems(rec: Recorder) -> list[str]:
    allowed = own_arns(rec) | set(GIVEN_ARNS)
    problems = []
    for owner, document in documents(rec):
        for statement in listed(document["Statement"]):
            where = f"{owner}/{statement.get('Sid', '?')}"
            actions = listed(statement.get("Action", []))
            if "NotAction" in statement or "NotResource" in statement:
                problems.append(f"{where}: NotAction/NotResource")
            if statement["Effect"] == "Deny":
                # A deny only narrows; it must be conditional or it would lock the stack out.
                if "Condition" not in statement:
                    problems.append(f"{where}: unconditional deny")
                continue
            problems += [f"{where}: wildcard action {a}" for a in actions if "*" in a]
            if "Principal" in statement:
                # Trust policies: only an AWS service may assume a Sluice role.
                if statement["Principal"] == "*" or set(statement["Principal"]) != {"Service"}:
                    problems.append(f"{where}: principal {statement['Principal']}")
                if actions != ["sts:AssumeRole"]:
                    problems.append(f"{where}: trust policy allows {actions}")
                continue
            for resource in listed(statement["Resource"]):
                if resource == "*":
                    problems += [f"{where}: {a} on *" for a in actions if a not in WILDCARD_RESOURCE_ACTIONS]
                elif not within(resource, allowed) and not is_alias_grant(statement, resource):
                    problems.append(f"{where}: {resource} is not this stack's")
    return problems


@pytest.mark.parametrize("kind", sorted(STACKS))
def test_every_policy_is_least_privilege(kind: str) -> None:
    rec = stack(kind)
    # The walk must see every role policy, trust policy and queue policy, or it proves nothing.
    owners = {owner for owner, _ in documents(rec)}
    expected = {
        r.name
        for r in rec.resources
        if r.typ in ("aws:iam/rolePolicy:RolePolicy", "aws:iam/role:Role", "aws:sqs/queuePolicy:QueuePolicy")
    }
    # Four roles (worker, aggregate, order, state machine) with a policy each, the map-run
    # policy; the controller's role and policy.
    assert len(expected) == 9 + QUEUE_COUNT[kind] + (2 if "adaptive" in STACKS[kind] else 0)
    assert expected <= owners
    assert privilege_problems(rec) == []


def test_the_privilege_walk_catches_broad_grants() -> None:
    """Each rule of the walk fails on a document that breaks it."""
    rec = stack("ticket")
    worker = rec.named("orders-worker-policy")
    original = worker.inputs["policy"]
    bad_statements = [
        {
            "Effect": "Allow",
            "Action": ["sqs:*"],
            "Resource": [f"arn:aws:sqs:{REGION}:{ACCOUNT}:orders-queues-high"],
        },
        {"Effect": "Allow", "Action": ["sqs:SendMessage"], "Resource": ["*"]},
        {
            "Effect": "Allow",
            "Action": ["sqs:SendMessage"],
            "Resource": [f"arn:aws:sqs:{REGION}:{ACCOUNT}:other"],
        },
        {"Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": [f"arn:aws:kms:{REGION}:{ACCOUNT}:key/*"]},
        {"Effect": "Deny", "Action": ["sqs:*"], "Resource": ["*"]},
    ]
    try:
        for bad in bad_statements:
            policy = json.loads(original)
            policy["Statement"].append({"Sid": "Bad", **bad})
            worker.inputs["policy"] = json.dumps(policy)
            assert [p for p in privilege_problems(rec) if "/Bad:" in p], bad
    finally:
        worker.inputs["policy"] = original
    assert privilege_problems(rec) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"Action": ["lambda:UpdateEventSourceMapping"], "Resource": ["*"]},
        {"Action": ["lambda:PutFunctionConcurrency"], "Resource": ["*"]},
        {
            "Action": ["lambda:UpdateEventSourceMapping"],
            "Resource": [f"arn:aws:lambda:{REGION}:{ACCOUNT}:event-source-mapping:someone-elses"],
        },
        {
            "Action": ["lambda:PutFunctionConcurrency"],
            "Resource": [f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:x"],
        },
    ],
)
def test_the_walk_catches_a_controller_that_reaches_beyond_its_worker(bad: dict[str, Any]) -> None:
    rec = stack("adaptive")
    controller = rec.named("orders-controller-policy")
    original = controller.inputs["policy"]
    try:
        policy = json.loads(original)
        policy["Statement"].append({"Sid": "Bad", "Effect": "Allow", **bad})
        controller.inputs["policy"] = json.dumps(policy)
        assert [p for p in privilege_problems(rec) if "/Bad:" in p]
    finally:
        controller.inputs["policy"] = original
    assert privilege_problems(rec) == []


def test_the_controller_may_touch_only_its_own_state_item() -> None:
    (state,) = [
        s
        for s in policy_of(stack("adaptive"), "orders-controller-policy")["Statement"]
        if s["Sid"] == "KeepControllerState"
    ]
    assert state["Condition"] == {
        "ForAllValues:StringEquals": {
            "dynamodb:LeadingKeys": [contract.CONTROLLER_STATE_PREFIX + "orders-worker-function"]
        }
    }
    assert "dynamodb:DeleteItem" not in state["Action"]


# ---- 4. secrets by reference -----------------------------------------------------------------

WORKER_ENV = {
    contract.ENV_QUEUES,
    contract.ENV_TARGET,
    contract.ENV_FORCE_AFTER_RECEIVES,
    contract.ENV_MAX_ATTEMPTS,
    contract.ENV_YIELD_DELAY_SECONDS,
    contract.ENV_RETRY_BASE_SECONDS,
    contract.ENV_RETRY_MAX_SECONDS,
    contract.ENV_DISPATCH,
    contract.ENV_CONTROLLED,
    contract.ENV_HTTP_URL,
    contract.ENV_HTTP_TIMEOUT_SECONDS,
    contract.ENV_HTTP_AUTH_HEADER,
    contract.ENV_IDEMPOTENCY_TABLE,
    contract.ENV_CONCURRENCY,
    contract.ENV_IDEMPOTENCY_TTL_SECONDS,
    contract.ENV_RESULTS_BUCKET,
    contract.ENV_SHARE_PERIOD,
}


def test_the_worker_environment_holds_a_secret_arn_not_a_secret() -> None:
    env = stack("ticket").named("orders-worker-function").inputs["environment"]["variables"]
    ticket_env = {contract.ENV_TICKET_QUEUE_URL}
    assert set(env) == WORKER_ENV | ticket_env | {contract.ENV_HTTP_SECRET_ARN}
    assert env[contract.ENV_HTTP_SECRET_ARN] == SECRET_ARN


def test_the_worker_environment_holds_a_parameter_name_not_a_secret() -> None:
    env = stack("yield").named("orders-worker-function").inputs["environment"]["variables"]
    assert set(env) == WORKER_ENV | {contract.ENV_HTTP_SSM_PARAMETER}
    assert env[contract.ENV_HTTP_SSM_PARAMETER] == SSM_NAME
    # The worker reads it through its own grant, on that parameter only.
    read = [
        s
        for s in policy_of(stack("yield"), "orders-worker-policy")["Statement"]
        if s["Sid"] == "ReadApiParameter"
    ]
    assert read == [
        {"Sid": "ReadApiParameter", "Effect": "Allow", "Action": ["ssm:GetParameter"], "Resource": [SSM_ARN]}
    ]


REFERENCE = re.compile(r"(_arn|_name|_arns)$")
CREDENTIAL_WORDS = re.compile(r"secret|token|password|passwd|credential|api_?key|auth|kms")
NOT_A_CREDENTIAL = {"auth_header": "the header's name, e.g. Authorization"}


def test_no_arg_accepts_a_plain_secret() -> None:
    """Every arg that could carry a credential or key takes a reference (an ARN or a name)."""
    from sluice_fanout.components import PriorityQueuesArgs, PriorityWorkerArgs, ThrottledFanOutArgs
    from sluice_fanout.components.fan_out_workflow import FanOutWorkflowArgs
    from sluice_fanout.components.priority_worker import HttpTargetArgs

    fields = {
        f"{args.__name__}.{field}": field
        for args in (
            ThrottledFanOutArgs,
            HttpTargetArgs,
            PriorityWorkerArgs,
            PriorityQueuesArgs,
            FanOutWorkflowArgs,
        )
        for field in args.__annotations__
    }
    sensitive = {path: f for path, f in fields.items() if CREDENTIAL_WORDS.search(f)}
    assert "HttpTargetArgs.secret_arn" in sensitive  # the filter sees what it must
    assert [p for p, f in sensitive.items() if not REFERENCE.search(f) and f not in NOT_A_CREDENTIAL] == []
    main = (Path(__file__).resolve().parents[2] / "__main__.py").read_text()
    keys = set(re.findall(r'"(http[A-Z]\w*)"', main))
    assert keys == {
        "httpUrl",
        "httpSecretArn",
        "httpSsmParameterArn",
        "httpSsmParameterName",
        "httpAuthHeader",
        "httpTimeoutSeconds",
    }


@pytest.mark.parametrize(
    ("http_target", "expected"),
    [
        ({**HTTP, "token": "hunter2"}, "http_target has unknown keys ['token']"),
        ({**HTTP, "password": "hunter2"}, "http_target has unknown keys ['password']"),
        ({**HTTP, "secret": "hunter2"}, "http_target has unknown keys ['secret']"),
        ({"url": "https://erp:hunter2@erp.example.internal/api"}, "http_url must not carry credentials"),
        ({"url": "ftp://erp.example.internal/api"}, "http_url must be an http(s) URL"),
        ({"secret_arn": SECRET_ARN}, "http_target must be an object with a url"),
    ],
)
def test_a_plain_secret_is_refused_and_never_echoed(http_target: dict[str, Any], expected: str) -> None:
    failure: list[SluiceConfigError] = []

    def program() -> None:
        from sluice_fanout.components import ThrottledFanOut

        try:
            ThrottledFanOut("orders", {"concurrency": 1, "http_target": http_target})  # type: ignore[typeddict-item]
        except SluiceConfigError as exc:
            failure.append(exc)

    rec = run_program(program)
    (error,) = failure
    assert expected in str(error)
    assert "hunter2" not in str(error)
    assert rec.resources == []


# ---- 5. logging ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(STACKS))
def test_the_state_machine_logs_without_execution_data_by_default(kind: str) -> None:
    logging = stack(kind).named("orders-workflow-state-machine").inputs["loggingConfiguration"]
    assert logging["level"] == "ERROR"
    assert logging["includeExecutionData"] is False


def test_even_full_logging_leaves_execution_data_out() -> None:
    def program() -> None:
        from sluice_fanout.components import ThrottledFanOut

        ThrottledFanOut("orders", {"concurrency": 1, "http_target": HTTP, "log_level": "ALL"})

    logging = run_program(program).named("orders-workflow-state-machine").inputs["loggingConfiguration"]
    assert (logging["level"], logging["includeExecutionData"]) == ("ALL", False)
