"""The IAM and queue policy documents, built from plain values: tests assert them exactly and
parliament lints them; the state machine's definition is in definition.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sluice_fanout.handlers.contract import ORDERED_PREFIX, RESULTS_PREFIX

if TYPE_CHECKING:
    from collections.abc import Sequence


def build_assume_role_policy(service: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
    }


def _statement(sid: str, actions: Sequence[str], resources: Sequence[str]) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": list(resources)}


# SQS calls KMS as the principal that sends or receives: GenerateDataKey to encrypt a message it
# sends, Decrypt to read one (and to check a cached data key when sending). Nothing else.
QUEUE_KEY_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey")


def _queue_key_statement(kms_key_arn: str) -> dict[str, Any]:
    """Use of the queues' customer KMS key, scoped to that key."""
    if ":alias/" not in kms_key_arn:
        return _statement("UseQueueKey", QUEUE_KEY_ACTIONS, [kms_key_arn])
    # IAM authorizes cryptographic operations against the key's ARN, never the alias's, so an
    # alias ARN in Resource grants nothing. AWS's documented way to grant by alias: the
    # account's and region's keys, narrowed to the one the alias points at.
    account_prefix, alias = kms_key_arn.split(":alias/", 1)
    statement = _statement("UseQueueKey", QUEUE_KEY_ACTIONS, [f"{account_prefix}:key/*"])
    statement["Condition"] = {"ForAnyValue:StringEquals": {"kms:ResourceAliases": f"alias/{alias}"}}
    return statement


def build_worker_policy(
    *,
    queue_arns: Sequence[str],
    dlq_arns: Sequence[str],
    log_group_arn: str,
    idempotency_table_arn: str,
    results_bucket_arn: str | None = None,
    secret_arn: str | None = None,
    ssm_parameter_arn: str | None = None,
    kms_key_arn: str | None = None,
    keyed_table_arn: str | None = None,
) -> dict[str, Any]:
    """What the worker may do: consume its queues, dead-letter, answer tokens, keep its
    idempotency records, spill large results, log; with keys, pick and finish keyed items.

    With `kms_key_arn` (the queues' customer key) it may also decrypt what it receives and
    encrypt what it sends to the DLQs.
    """
    statements = [
        _statement(
            "ConsumePriorityQueues",
            [
                "sqs:ChangeMessageVisibility",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
                "sqs:ReceiveMessage",
            ],
            queue_arns,
        ),
        _statement("DeadLetterMalformed", ["sqs:SendMessage"], dlq_arns),
        # Unavoidable wildcard: SendTask* support no resource-level permissions (IAM's service
        # authorization reference lists Resource "*" only; a state machine ARN here grants
        # nothing). A caller needs a live, unguessable task token to act at all.
        _statement(
            "AnswerTaskTokens",
            ["states:SendTaskFailure", "states:SendTaskHeartbeat", "states:SendTaskSuccess"],
            ["*"],
        ),
        _statement(
            "KeepIdempotencyRecords",
            ["dynamodb:DeleteItem", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
            [idempotency_table_arn],
        ),
        _statement(
            "WriteOwnLogs",
            ["logs:CreateLogStream", "logs:PutLogEvents"],
            [log_group_arn, f"{log_group_arn}:*"],
        ),
    ]
    if results_bucket_arn:
        statements.append(
            _statement("SpillLargeResults", ["s3:PutObject"], [f"{results_bucket_arn}/{RESULTS_PREFIX}*"])
        )
    if secret_arn:
        statements.append(_statement("ReadApiSecret", ["secretsmanager:GetSecretValue"], [secret_arn]))
    if ssm_parameter_arn:
        statements.append(_statement("ReadApiParameter", ["ssm:GetParameter"], [ssm_parameter_arn]))
    if kms_key_arn:
        statements.append(_queue_key_statement(kms_key_arn))
    if keyed_table_arn:
        statements.append(
            _statement(
                "WorkKeyedItems",
                ["dynamodb:DeleteItem", "dynamodb:GetItem", "dynamodb:Query", "dynamodb:UpdateItem"],
                [keyed_table_arn, f"{keyed_table_arn}/index/*"],
            )
        )
    return {"Version": "2012-10-17", "Statement": statements}


def event_source_mapping_arn(function_arn: str, uuid: str) -> str:
    """An event source mapping's ARN, from its function's: the same partition, region and account
    (`arn:aws:lambda:<region>:<account>:event-source-mapping:<uuid>`)."""
    prefix = function_arn.split(":function:", 1)[0]
    return f"{prefix}:event-source-mapping:{uuid}"


def build_controller_policy(
    *,
    worker_function_arn: str,
    mapping_arns: Sequence[str],
    state_table_arn: str,
    state_key: str,
    limits_key: str,
    log_group_arn: str,
) -> dict[str, Any]:
    """What the adaptive controller may do: read the worker's metrics, set the worker's reserved
    concurrency and its mappings' MaximumConcurrency and Enabled, keep its one state item, read
    the operator's run-time limits, log.

    The table is the worker's idempotency table; dynamodb:LeadingKeys confines the controller to
    its own item (`state_key`) and to reading `limits_key`, so it can never read or overwrite an
    item's stored outcome.
    """
    state = _statement(
        "KeepControllerState",
        ["dynamodb:GetItem", "dynamodb:PutItem"],
        [state_table_arn],
    )
    state["Condition"] = {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [state_key]}}
    operator = _statement("ReadOperatorLimits", ["dynamodb:GetItem"], [state_table_arn])
    operator["Condition"] = {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [limits_key]}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            # Unavoidable wildcard: GetMetricData supports no resource-level permissions (IAM's
            # service authorization reference lists Resource "*" only). It reads, never writes.
            _statement("ReadWorkerMetrics", ["cloudwatch:GetMetricData"], ["*"]),
            _statement(
                "SetWorkerConcurrency",
                ["lambda:GetFunctionConcurrency", "lambda:PutFunctionConcurrency"],
                [worker_function_arn],
            ),
            _statement(
                "SetWorkerMappings",
                ["lambda:GetEventSourceMapping", "lambda:UpdateEventSourceMapping"],
                mapping_arns,
            ),
            state,
            operator,
            _statement(
                "WriteOwnLogs",
                ["logs:CreateLogStream", "logs:PutLogEvents"],
                [log_group_arn, f"{log_group_arn}:*"],
            ),
        ],
    }


def build_order_policy(
    *, results_bucket_arn: str, input_bucket_arns: Sequence[str], log_group_arn: str
) -> dict[str, Any]:
    """What the order function may do: read batches, write their ordered copies, log."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            _statement("ReadBatchItems", ["s3:GetObject"], [f"{arn}/*" for arn in input_bucket_arns]),
            _statement("WriteOrderedBatches", ["s3:PutObject"], [f"{results_bucket_arn}/{ORDERED_PREFIX}*"]),
            _statement(
                "WriteOwnLogs",
                ["logs:CreateLogStream", "logs:PutLogEvents"],
                [log_group_arn, f"{log_group_arn}:*"],
            ),
        ],
    }


def build_aggregate_policy(*, results_bucket_arn: str, log_group_arn: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            _statement(
                "ReadMapResults",
                ["s3:GetObject"],
                [f"{results_bucket_arn}/results/*", f"{results_bucket_arn}/{RESULTS_PREFIX}*"],
            ),
            _statement(
                "WriteOwnLogs",
                ["logs:CreateLogStream", "logs:PutLogEvents"],
                [log_group_arn, f"{log_group_arn}:*"],
            ),
        ],
    }


def build_state_machine_policy(
    *,
    queue_arns: Sequence[str],
    function_arns: Sequence[str],
    results_bucket_arn: str,
    input_bucket_arns: Sequence[str],
    kms_key_arn: str | None = None,
    keyed_table_arn: str | None = None,
) -> dict[str, Any]:
    """What the state machine needs before it exists (CreateStateMachine checks logging).
    With `keyed_table_arn`, a keyed item's wait step writes its record and its key's ledger
    (one TransactWriteItems: IAM checks its Put and its Update).

    With `kms_key_arn` (the queues' customer key) it may also encrypt the messages it sends.
    """
    input_objects = [f"{arn}/*" for arn in input_bucket_arns]
    key_statements = [_queue_key_statement(kms_key_arn)] if kms_key_arn else []
    return {
        "Version": "2012-10-17",
        "Statement": [
            _statement("EnqueueThrottledItems", ["sqs:SendMessage"], queue_arns),
            *key_statements,
            *(
                [_statement("WaitKeyedItems", ["dynamodb:PutItem", "dynamodb:UpdateItem"], [keyed_table_arn])]
                if keyed_table_arn
                else []
            ),
            _statement(
                "InvokeFunctions",
                ["lambda:InvokeFunction"],
                [*function_arns, *(f"{arn}:*" for arn in function_arns)],
            ),
            _statement("ReadBatchItems", ["s3:GetObject"], input_objects),
            _statement(
                "WriteMapResults",
                ["s3:AbortMultipartUpload", "s3:ListMultipartUploadParts", "s3:PutObject"],
                [f"{results_bucket_arn}/results/*"],
            ),
            # CloudWatch Logs vended delivery has no resource-level permissions: AWS documents
            # these actions with Resource "*" for Step Functions logging.
            _statement(
                "DeliverExecutionLogs",
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
                ["*"],
            ),
        ],
    }


def build_map_run_policy(*, state_machine_arn: str) -> dict[str, Any]:
    """What a Distributed Map needs to run its children: start, watch and stop its own runs."""
    execution_arns = state_machine_arn.replace(":stateMachine:", ":execution:") + "/*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            _statement("StartChildExecutions", ["states:StartExecution"], [state_machine_arn]),
            _statement(
                "ManageChildExecutions",
                ["states:DescribeExecution", "states:RedriveExecution", "states:StopExecution"],
                [execution_arns],
            ),
        ],
    }


def build_redrive_policy(*, dead_letter_arn: str, max_receive_count: int) -> dict[str, Any]:
    return {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": max_receive_count}


def build_redrive_allow_policy(*, source_queue_arn: str) -> dict[str, Any]:
    """Only its own source queue may use a DLQ, so a DLQ's contents always have one home."""
    return {"redrivePermission": "byQueue", "sourceQueueArns": [source_queue_arn]}


def build_tls_only_queue_policy(*, queue_arn: str) -> dict[str, Any]:
    """Deny any access to the queue that does not use TLS."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "sqs:*",
                "Resource": queue_arn,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }
