"""The state machine's definition (ASL), built from plain values: tests assert it exactly and
asl-validator lints it; IAM and queue policies are in policies.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sluice_fanout.handlers.contract import (
    DEFAULT_THROTTLE_RULE,
    DIRECT_PATH,
    ERROR_INVALID_KEY,
    ERROR_MALFORMED,
    ERROR_ORDER_BROKEN,
    ERROR_PERMANENT,
    ERROR_RETRIES_EXHAUSTED,
    ERROR_UNKNOWN_PRIORITY,
    FIELD_EXECUTION,
    FIELD_INDEX,
    FIELD_ITEM,
    FIELD_KEYED,
    FIELD_PRIORITY,
    FIELD_TOKEN,
    IDEMPOTENCY_KEY_ATTRIBUTE,
    KEYED_ARRIVAL_UPDATE,
    KEYED_INDEX_OFFSET,
    KEYED_LEDGER_PREFIX,
    KEYED_WAIT_PREFIX,
    STATUS_FAILED,
    STATUS_SUCCEEDED,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from sluice_fanout.handlers.fair import KeysSettings


# Error names the worker reports are verdicts (it already retried); the state machine must not
# send the item round again. Anything else a Task reports is a transient integration error.
WORKER_VERDICTS = [
    ERROR_PERMANENT,
    ERROR_RETRIES_EXHAUSTED,
    ERROR_MALFORMED,
    ERROR_UNKNOWN_PRIORITY,
    ERROR_ORDER_BROKEN,
]
"""The worker's final word on an item: never retried by the state machine (each would write the
item again)."""
LAMBDA_TRANSIENT_ERRORS = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
]


INLINE_PREFIX = "Inline-"
ORDERED_MAP_PREFIX = "Ordered-"


def _transient_retry() -> dict[str, Any]:
    return {
        "ErrorEquals": ["States.TaskFailed"],
        "IntervalSeconds": 2,
        "MaxAttempts": 3,
        "BackoffRate": 2.0,
        "JitterStrategy": "FULL",
    }


def _lambda_retry(attempts: int) -> list[dict[str, Any]]:
    return [
        {
            "ErrorEquals": LAMBDA_TRANSIENT_ERRORS,
            "IntervalSeconds": 2,
            "MaxAttempts": attempts,
            "BackoffRate": 2.0,
            "JitterStrategy": "FULL",
        }
    ]


def _catch_to(state: str) -> list[dict[str, Any]]:
    return [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": state}]


def _failed(priority: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"status": STATUS_FAILED, "index.$": "$.index", "error.$": "$.error"}
    if priority is not None:
        params["priority"] = priority
    return {"Type": "Pass", "Parameters": params, "End": True}


def build_item_processor(
    *,
    priorities: Sequence[str],
    queue_urls: Mapping[str, str],
    throttle_rule: Mapping[str, Any],
    default_priority: str,
    callback_timeout_seconds: int,
    direct_function_arn: str | None,
    prefix: str = "",
    ticket_queue_url: str | None = None,
    keys: KeysSettings | None = None,
    keyed_table: str | None = None,
) -> dict[str, Any]:
    """The child workflow run once per item. Every path ends in a structured result.

    State names are unique across a whole state machine, nested Maps included, so each Map's
    copy of this workflow names its states with its own `prefix`.

    With `ticket_queue_url` (the `ticket` dispatch) each throttled item first drops a ticket on
    the ticket queue, then waits on its priority queue: the worker, woken by any ticket, pulls
    the highest-priority waiting payload.

    Input: `{"item": ..., "index": n, "execution": parent ARN}` (the Map's ItemSelector).
    Output: `{"status": "SUCCEEDED"|"FAILED", "index", "priority"?, "path"?, "result"|"error"}`
    (`index` left out by a direct function's result; the aggregate has it from the input).
    States entered (each a billed transition, besides the child's start): direct 2, queued 2
    (`yield`) or 3 (`ticket`), one more for a failure.

    With `keys` (ticket dispatch only), a throttled item whose key field holds a string drops
    its ticket and then waits as a record in `keyed_table` (docs/keys.md): the same three
    states, so the same cost in transitions.
    """
    first_step = "Ticket" if ticket_queue_url is not None else "Enqueue"

    def throttled(rule: Mapping[str, Any]) -> dict[str, Any]:
        return {"And": [dict(throttle_rule), dict(rule)]}

    keyed_choices: list[dict[str, Any]] = []
    if keys is not None:
        key_path = f"$.item.{keys.field}"
        has_key = {"Variable": key_path, "IsPresent": True}
        keyed = {"And": [has_key, {"Variable": key_path, "IsString": True}]}
        keyed_choices = [
            *(
                {
                    **throttled({"And": [{"Variable": "$.item.priority", "StringEquals": p}, keyed]}),
                    "Next": f"KeyedTicket{p}",
                }
                for p in priorities
            ),
            {
                **throttled({"And": [{"Not": {"Variable": "$.item.priority", "IsPresent": True}}, keyed]}),
                "Next": f"KeyedTicket{default_priority}",
            },
            # A key that is not a string (a number, an object) is refused, not silently unkeyed.
            {**throttled(has_key), "Next": "InvalidKey"},
        ]
    states: dict[str, Any] = {
        # One Choice on throttled-or-not and priority at once: every state entered is a billed
        # transition, and a second Choice would cost one per throttled item.
        "Route": {
            "Type": "Choice",
            "Comment": "Throttled items wait in their priority's queue; the rest go direct.",
            "Choices": [
                *keyed_choices,
                *(
                    {
                        **throttled({"Variable": "$.item.priority", "StringEquals": p}),
                        "Next": f"{first_step}{p}",
                    }
                    for p in priorities
                ),
                {
                    **throttled({"Not": {"Variable": "$.item.priority", "IsPresent": True}}),
                    "Next": f"{first_step}{default_priority}",
                },
                {**throttle_rule, "Next": "UnknownPriority"},
            ],
            "Default": "Direct",
        },
        "UnknownPriority": {
            "Type": "Pass",
            "Parameters": {
                "status": STATUS_FAILED,
                "index.$": "$.index",
                "error": {
                    "Error": ERROR_UNKNOWN_PRIORITY,
                    "Cause": f"the item's priority is not one of {', '.join(priorities)}",
                },
            },
            "End": True,
        },
    }
    if keys is not None:
        if ticket_queue_url is None or keyed_table is None:
            raise ValueError("keys need the ticket dispatch and the keyed table")
        states["InvalidKey"] = {
            "Type": "Pass",
            "Parameters": {
                "status": STATUS_FAILED,
                "index.$": "$.index",
                "error": {
                    "Error": ERROR_INVALID_KEY,
                    "Cause": f"the item's {keys.field!r} field is not a string; "
                    "give each item its key as a string, or leave the field out",
                },
            },
            "End": True,
        }
        for p in priorities:
            states.update(_keyed_wait(p, keys.field, ticket_queue_url, keyed_table, callback_timeout_seconds))
    for p in priorities:
        if ticket_queue_url is not None:
            states[f"Ticket{p}"] = _ticket(p, ticket_queue_url, f"Enqueue{p}")
        states[f"Enqueue{p}"] = {
            "Type": "Task",
            "Comment": "Waits, using no compute, until the worker sends the item's final result.",
            "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
            "Parameters": {
                "QueueUrl": queue_urls[p],
                "MessageBody": {
                    f"{FIELD_TOKEN}.$": "$$.Task.Token",
                    f"{FIELD_ITEM}.$": "$.item",
                    f"{FIELD_INDEX}.$": "$.index",
                    f"{FIELD_EXECUTION}.$": "$.execution",
                    FIELD_PRIORITY: p,
                },
            },
            # No HeartbeatSeconds: it would fire while the message merely waits its turn.
            "TimeoutSeconds": callback_timeout_seconds,
            # The worker sends the whole structured result ({status, index, priority, result}),
            # so the child ends here: a Pass to shape it would be one more billed transition.
            "Retry": [{"ErrorEquals": WORKER_VERDICTS, "MaxAttempts": 0}, _transient_retry()],
            "Catch": _catch_to(f"Failed{p}"),
            "End": True,
        }
        states[f"Failed{p}"] = _failed(p)

    if direct_function_arn is None:
        # No direct function configured: the item passes through as its own result.
        states["Direct"] = {
            "Type": "Pass",
            "Parameters": {
                "status": STATUS_SUCCEEDED,
                "index.$": "$.index",
                "path": DIRECT_PATH,
                "result.$": "$.item",
            },
            "End": True,
        }
    else:
        states["Direct"] = {
            "Type": "Task",
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {
                "FunctionName": direct_function_arn,
                "Payload": {"item.$": "$.item", "index.$": "$.index", "execution.$": "$.execution"},
            },
            # The result without `index` (a selector sees only the task's result): the aggregate
            # takes it from the child's input, which the ResultWriter keeps beside each output.
            # A Pass to add it would be one more billed transition per direct item.
            "ResultSelector": {"status": STATUS_SUCCEEDED, "path": DIRECT_PATH, "result.$": "$.Payload"},
            "Retry": _lambda_retry(3),
            "Catch": _catch_to("DirectFailed"),
            "End": True,
        }
        states["DirectFailed"] = _failed(None)
    return {
        "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
        "StartAt": prefix + "Route",
        "States": {prefix + name: _prefixed(state, prefix) for name, state in states.items()},
    }


def _ticket(priority: str, ticket_queue_url: str, then: str, *, keyed: bool = False) -> dict[str, Any]:
    return {
        "Type": "Task",
        "Comment": "A ticket wakes one worker slot; it carries no payload.",
        "Resource": "arn:aws:states:::sqs:sendMessage",
        "Parameters": {
            "QueueUrl": ticket_queue_url,
            "MessageBody": {
                f"{FIELD_INDEX}.$": "$.index",
                f"{FIELD_EXECUTION}.$": "$.execution",
                FIELD_PRIORITY: priority,
                # Its item waits in the keyed table: a ticket that beats it waits there.
                **({FIELD_KEYED: True} if keyed else {}),
            },
        },
        "ResultPath": None,
        "Retry": [_transient_retry()],
        "Catch": _catch_to(f"Failed{priority}"),
        "Next": then,
    }


def _keyed_wait(
    p: str, field: str, ticket_queue_url: str, table: str, callback_timeout_seconds: int
) -> dict[str, Any]:
    """A keyed item's ticket, then its wait as a record of the keyed store (adapters.KeyedItems
    writes the same two records in tests): the item, and its key's ledger counted up."""
    key = f"$.item.{field}"
    # Submission order across executions: the batch's start, then its execution, then the
    # item's index made fixed-width so that it sorts as text.
    padded = f"States.MathAdd($.index, {KEYED_INDEX_OFFSET})"
    seq = f"States.Format('{{}}#{{}}#{{}}', $.submitted, $.execution, {padded})"
    return {
        f"KeyedTicket{p}": _ticket(p, ticket_queue_url, f"KeyedWait{p}", keyed=True),
        f"KeyedWait{p}": {
            "Type": "Task",
            "Comment": "Waits in its key's line, using no compute, until the worker sends its result.",
            "Resource": "arn:aws:states:::aws-sdk:dynamodb:transactWriteItems.waitForTaskToken",
            "Parameters": {
                "TransactItems": [
                    {
                        "Put": {
                            "TableName": table,
                            "Item": {
                                IDEMPOTENCY_KEY_ATTRIBUTE: {
                                    "S.$": f"States.Format('{KEYED_WAIT_PREFIX}{p}#{{}}#{{}}', {key}, {seq})"
                                },
                                "wkey": {"S.$": f"States.Format('{p}#{{}}', {key})"},
                                "wseq": {"S.$": seq},
                                "token": {"S.$": "$$.Task.Token"},
                                "item": {"S.$": "States.JsonToString($.item)"},
                                "idx": {"N.$": "States.Format('{}', $.index)"},
                                "execution": {"S.$": "$.execution"},
                            },
                        }
                    },
                    {
                        "Update": {
                            "TableName": table,
                            "Key": {
                                IDEMPOTENCY_KEY_ATTRIBUTE: {
                                    "S.$": f"States.Format('{KEYED_LEDGER_PREFIX}{p}#{{}}', {key})"
                                }
                            },
                            "UpdateExpression": KEYED_ARRIVAL_UPDATE,
                            "ExpressionAttributeValues": {
                                ":one": {"N": "1"},
                                ":p": {"S": p},
                                ":k": {"S.$": key},
                                ":zero": {"N": "0"},
                                ":none": {"M": {}},
                                ":now": {"S.$": "$$.State.EnteredTime"},
                            },
                        }
                    },
                ]
            },
            "TimeoutSeconds": callback_timeout_seconds,
            "Retry": [{"ErrorEquals": WORKER_VERDICTS, "MaxAttempts": 0}, _transient_retry()],
            "Catch": _catch_to(f"Failed{p}"),
            "End": True,
        },
    }


def _prefixed(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`state` with every transition target renamed by `prefix`."""

    def rename(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: (
                    prefix + value if key in ("Next", "Default") and isinstance(value, str) else rename(value)
                )
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [rename(v) for v in node]
        return node

    return rename(state)  # type: ignore[no-any-return]


def build_state_machine_definition(
    *,
    priorities: Sequence[str],
    queue_urls: Mapping[str, str],
    aggregate_function_arn: str,
    order_function_arn: str,
    results_bucket: str,
    throttle_rule: Mapping[str, Any] | None = None,
    default_priority: str | None = None,
    callback_timeout_seconds: int = 86_400,
    map_max_concurrency: int = 1_000,
    tolerated_failure_percentage: float = 5.0,
    direct_function_arn: str | None = None,
    ticket_queue_url: str | None = None,
    keys: KeysSettings | None = None,
    keyed_table: str | None = None,
) -> dict[str, Any]:
    """The parent state machine.

    Input: `{"items": [...]}` (inline, up to Step Functions' 256 KiB input) or
    `{"source": {"bucket": ..., "key": ...}}` (a JSON array in S3).

    Priority holds inside one batch: the Map opens `map_max_concurrency` children at a time, in
    item order, so a batch that may be larger than that (any S3 source, an inline batch with
    more items) is first copied to S3 sorted by priority by the order function, each entry
    carrying its original index, and the Map reads the copy. A smaller inline batch is opened
    whole at once and goes straight to the Map.

    Either way the children's results are written to `results_bucket` under `results/` (a
    ResultWriter on both Maps: the Map's own output would pass 256 KiB at a few thousand items
    and fail the batch with States.DataLimitExceeded after every item was worked), and the
    aggregate reads them there.
    """

    def processor(prefix: str) -> dict[str, Any]:
        return build_item_processor(
            priorities=priorities,
            queue_urls=queue_urls,
            throttle_rule=throttle_rule or DEFAULT_THROTTLE_RULE,
            default_priority=default_priority or priorities[-1],
            callback_timeout_seconds=callback_timeout_seconds,
            direct_function_arn=direct_function_arn,
            prefix=prefix,
            ticket_queue_url=ticket_queue_url,
            keys=keys,
            keyed_table=keyed_table,
        )

    def fan_out(item: str, index: str) -> dict[str, Any]:
        return {
            "Type": "Map",
            "ItemSelector": {"item.$": item, "index.$": index, "execution.$": "$$.Execution.Id"}
            # Keyed items sort by their batch's start: ordered keys keep order across executions.
            | ({"submitted.$": "$$.Execution.StartTime"} if keys is not None else {}),
            "MaxConcurrency": map_max_concurrency,
            # Children never fail by design (each ends in a result), so a failed child means
            # broken infrastructure; past this share the batch fails loudly instead of limping on.
            "ToleratedFailurePercentage": float(tolerated_failure_percentage),
            # Results go to S3, whatever the batch's size: the Map's output is then only a
            # pointer to the manifest, far under the 256 KiB a state's output may be.
            "ResultWriter": {
                "Resource": "arn:aws:states:::s3:putObject",
                "Parameters": {"Bucket": results_bucket, "Prefix": "results"},
            },
            "Next": "Aggregate",
        }

    return {
        "Comment": "Sluice: fan a batch out; throttled items wait in priority queues for the worker.",
        "StartAt": "Source",
        "States": {
            "Source": {
                "Type": "Choice",
                "Choices": [
                    {"Variable": "$.source", "IsPresent": True, "Next": "Order"},
                    # An item at this index means more items than the Map opens at once.
                    {"Variable": f"$.items[{map_max_concurrency}]", "IsPresent": True, "Next": "Order"},
                ],
                "Default": "FanOutInline",
            },
            "FanOutInline": {
                **fan_out("$$.Map.Item.Value", "$$.Map.Item.Index"),
                "Label": "Inline",
                "ItemsPath": "$.items",
                "ItemProcessor": processor(INLINE_PREFIX),
            },
            "Order": {
                "Type": "Task",
                "Comment": "Copies the batch to S3 sorted by priority, so the Map opens HIGH items first.",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {
                    "FunctionName": order_function_arn,
                    "Payload": {"batch.$": "$", "execution.$": "$$.Execution.Name"},
                },
                "OutputPath": "$.Payload",
                "Retry": _lambda_retry(3),
                "Next": "FanOutOrdered",
            },
            "FanOutOrdered": {
                **fan_out(f"$$.Map.Item.Value.{FIELD_ITEM}", f"$$.Map.Item.Value.{FIELD_INDEX}"),
                "Label": "Ordered",
                "ItemProcessor": processor(ORDERED_MAP_PREFIX),
                "ItemReader": {
                    "Resource": "arn:aws:states:::s3:getObject",
                    "ReaderConfig": {"InputType": "JSON"},
                    "Parameters": {"Bucket.$": "$.bucket", "Key.$": "$.key"},
                },
            },
            "Aggregate": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {
                    "FunctionName": aggregate_function_arn,
                    "Payload": {"map_output.$": "$", "execution.$": "$$.Execution.Id"},
                },
                "OutputPath": "$.Payload",
                "Retry": _lambda_retry(6),
                "End": True,
            },
        },
    }
