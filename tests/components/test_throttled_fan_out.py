"""ThrottledFanOut under Pulumi mocks: children, names, exact inputs, parentage, wiring."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pulumi
import pytest

from sluice_fanout.handlers import contract
from tests.support.mocks import ACCOUNT, REGION, Recorder, run_program

HTTP = {"url": "https://erp.example.internal/api"}


def build(args: dict[str, Any], name: str = "orders") -> Recorder:
    def program() -> Any:
        from sluice_fanout.components import ThrottledFanOut

        fan_out = ThrottledFanOut(name, args)  # type: ignore[arg-type]
        return pulumi.Output.all(
            fan_out.state_machine_arn,
            fan_out.queue_urls,
            fan_out.dlq_urls,
            fan_out.worker_function_name,
            fan_out.results_bucket,
        )

    return run_program(program)


@pytest.fixture(scope="module")
def default() -> Recorder:
    """The yield dispatch, whose per-priority mappings most of these tests look at; the ticket
    dispatch (the default) has its own test below."""
    return build({"concurrency": 4, "http_target": HTTP, "dispatch": "yield"})


def url(name: str) -> str:
    return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}"


def arn(name: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"


def test_children_by_type(default: Recorder) -> None:
    assert Counter(r.typ for r in default.resources) == {
        "sluice:index:ThrottledFanOut": 1,
        "sluice:index:PriorityQueues": 1,
        "sluice:index:FanOutWorkflow": 1,
        "sluice:index:PriorityWorker": 1,
        "sluice:index:Observability": 1,
        "aws:sqs/queue:Queue": 6,
        "aws:sqs/queuePolicy:QueuePolicy": 6,
        "aws:sqs/redriveAllowPolicy:RedriveAllowPolicy": 3,
        "aws:lambda/function:Function": 3,
        "aws:lambda/eventSourceMapping:EventSourceMapping": 3,
        "aws:dynamodb/table:Table": 1,
        "aws:iam/role:Role": 4,
        "aws:iam/rolePolicy:RolePolicy": 5,
        "aws:cloudwatch/logGroup:LogGroup": 4,
        "aws:s3/bucket:Bucket": 1,
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": 1,
        "aws:sfn/stateMachine:StateMachine": 1,
        "aws:cloudwatch/dashboard:Dashboard": 1,
        "aws:cloudwatch/metricAlarm:MetricAlarm": 5,  # a DLQ alarm per priority, HIGH age, errors
    }


def test_every_child_is_named_after_and_parented_to_its_component(default: Recorder) -> None:
    by_urn = {r.urn: r for r in default.resources}
    for record in default.resources:
        if record.typ == "sluice:index:ThrottledFanOut":
            assert record.parent_urn.endswith("::sluice-test")
            continue
        parent = by_urn[record.parent_urn]
        assert record.name.startswith(f"{parent.name}-"), (record.name, parent.name)


def test_queues_and_dead_letter_queues(default: Recorder) -> None:
    for p in ("high", "normal", "batch"):
        queue = default.named(f"orders-queues-{p}")
        assert queue.inputs == {
            "visibilityTimeoutSeconds": 180,  # 6 x the 30 s worker timeout
            "messageRetentionSeconds": 345_600,
            "sqsManagedSseEnabled": True,
            "redrivePolicy": json.dumps(
                {"deadLetterTargetArn": arn(f"orders-queues-{p}-dlq"), "maxReceiveCount": 10}
            ),
        }
        assert default.named(f"orders-queues-{p}-dlq").inputs == {
            "messageRetentionSeconds": 1_209_600,
            "sqsManagedSseEnabled": True,
        }
        allow = default.named(f"orders-queues-{p}-dlq-redrive-allow").inputs
        assert allow["queueUrl"] == url(f"orders-queues-{p}-dlq")
        assert json.loads(allow["redriveAllowPolicy"]) == {
            "redrivePermission": "byQueue",
            "sourceQueueArns": [arn(f"orders-queues-{p}")],
        }
        for q in (f"orders-queues-{p}", f"orders-queues-{p}-dlq"):
            policy = json.loads(default.named(f"{q}-tls-only").inputs["policy"])
            (statement,) = policy["Statement"]
            assert statement["Effect"] == "Deny"
            assert statement["Resource"] == arn(q)
            assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_event_source_mappings(default: Recorder) -> None:
    for p in ("high", "normal", "batch"):
        assert default.named(f"orders-worker-{p}-mapping").inputs == {
            "eventSourceArn": arn(f"orders-queues-{p}"),
            "functionName": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:orders-worker-function",
            "batchSize": 1,
            "functionResponseTypes": ["ReportBatchItemFailures"],
            "scalingConfig": {"maximumConcurrency": 4},
        }


def test_worker_function(default: Recorder) -> None:
    fn = default.named("orders-worker-function").inputs
    assert fn["runtime"] == "python3.13"
    assert fn["handler"] == contract.WORKER_HANDLER
    assert fn["reservedConcurrentExecutions"] == 4
    assert fn["timeout"] == 30
    assert fn["loggingConfig"] == {"logFormat": "JSON", "logGroup": "orders-worker-logs"}
    assert sorted(fn["code"].assets) == [
        "aws_lambda_powertools",
        "jmespath",
        "sluice_fanout",
        "typing_extensions.py",
    ]
    env = fn["environment"]["variables"]
    assert json.loads(env[contract.ENV_QUEUES]) == [
        {
            "priority": p.upper(),
            "url": url(f"orders-queues-{p}"),
            "arn": arn(f"orders-queues-{p}"),
            "dlq_url": url(f"orders-queues-{p}-dlq"),
        }
        for p in ("high", "normal", "batch")
    ]
    assert env[contract.ENV_TARGET] == contract.HTTP_TARGET
    assert env[contract.ENV_HTTP_URL] == HTTP["url"]
    assert (env[contract.ENV_FORCE_AFTER_RECEIVES], env[contract.ENV_MAX_ATTEMPTS]) == ("3", "3")
    assert env[contract.ENV_YIELD_DELAY_SECONDS] == "2"
    # Secrets never travel as plain environment values: only a pointer would.
    assert contract.ENV_HTTP_SECRET_ARN not in env
    assert env[contract.ENV_IDEMPOTENCY_TABLE] == "orders-worker-idempotency"
    assert env[contract.ENV_IDEMPOTENCY_TTL_SECONDS] == "345600"
    assert env[contract.ENV_RESULTS_BUCKET] == "orders-workflow-results"


def test_idempotency_table(default: Recorder) -> None:
    table = default.named("orders-worker-idempotency").inputs
    assert table["hashKey"] == contract.IDEMPOTENCY_KEY_ATTRIBUTE
    assert table["attributes"] == [{"name": contract.IDEMPOTENCY_KEY_ATTRIBUTE, "type": "S"}]
    assert table["ttl"] == {"attributeName": contract.IDEMPOTENCY_EXPIRY_ATTRIBUTE, "enabled": True}
    assert table["billingMode"] == "PAY_PER_REQUEST"
    assert table["serverSideEncryption"] == {"enabled": True}


def test_worker_policy_is_scoped_to_its_own_queues(default: Recorder) -> None:
    policy = json.loads(default.named("orders-worker-policy").inputs["policy"])
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["ConsumePriorityQueues"]["Resource"] == [
        arn(f"orders-queues-{p}") for p in ("high", "normal", "batch")
    ]
    assert by_sid["DeadLetterMalformed"] == {
        "Sid": "DeadLetterMalformed",
        "Effect": "Allow",
        "Action": ["sqs:SendMessage"],
        "Resource": [arn(f"orders-queues-{p}-dlq") for p in ("high", "normal", "batch")],
    }
    assert by_sid["KeepIdempotencyRecords"]["Resource"] == [
        f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/orders-worker-idempotency"
    ]
    assert by_sid["SpillLargeResults"]["Resource"] == ["arn:aws:s3:::orders-workflow-results/item-results/*"]
    assert set(by_sid) == {
        "ConsumePriorityQueues",
        "DeadLetterMalformed",
        "AnswerTaskTokens",
        "KeepIdempotencyRecords",
        "SpillLargeResults",
        "WriteOwnLogs",
    }
    assert all("*" not in action for s in policy["Statement"] for action in s["Action"])


def definition(recorder: Recorder) -> dict[str, Any]:
    sm = recorder.named("orders-workflow-state-machine")
    return json.loads(sm.inputs["definition"])  # type: ignore[no-any-return]


def test_state_machine_structure(default: Recorder) -> None:
    sm = default.named("orders-workflow-state-machine").inputs
    assert sm["type"] == "STANDARD"
    assert sm["loggingConfiguration"] == {
        "level": "ERROR",
        "includeExecutionData": False,
        "logDestination": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:orders-workflow-sfn-logs:*",
    }
    asl = definition(default)
    assert list(asl["States"]) == ["Source", "FanOutInline", "Order", "FanOutOrdered", "Aggregate"]
    inline, ordered = asl["States"]["FanOutInline"], asl["States"]["FanOutOrdered"]
    # The same child workflow in both Maps, each with its own state names (unique per machine).
    assert json.dumps(inline["ItemProcessor"]).replace("Inline-", "") == json.dumps(
        ordered["ItemProcessor"]
    ).replace("Ordered-", "")
    assert inline["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    # Both Maps write their results to S3: an inline batch's results would pass 256 KiB too.
    result_writer = {
        "Resource": "arn:aws:states:::s3:putObject",
        "Parameters": {"Bucket": "orders-workflow-results", "Prefix": "results"},
    }
    assert inline["ResultWriter"] == result_writer
    assert ordered["ResultWriter"] == result_writer
    assert inline["ItemsPath"] == "$.items"
    assert "ItemReader" not in inline
    # Any S3 source, and an inline batch with more items than the Map opens at once, is sorted by
    # priority first; the Map reads the sorted copy, each entry carrying its original index.
    assert asl["States"]["Source"]["Choices"] == [
        {"Variable": "$.source", "IsPresent": True, "Next": "Order"},
        {"Variable": "$.items[1000]", "IsPresent": True, "Next": "Order"},
    ]
    assert asl["States"]["Order"]["Parameters"]["FunctionName"] == (
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:orders-workflow-order"
    )
    assert ordered["ItemReader"] == {
        "Resource": "arn:aws:states:::s3:getObject",
        "ReaderConfig": {"InputType": "JSON"},
        "Parameters": {"Bucket.$": "$.bucket", "Key.$": "$.key"},
    }
    assert ordered["ItemSelector"] == {
        "item.$": "$$.Map.Item.Value.item",
        "index.$": "$$.Map.Item.Value.index",
        "execution.$": "$$.Execution.Id",
    }
    assert asl["States"]["Aggregate"]["Parameters"]["FunctionName"] == (
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:orders-workflow-aggregate"
    )
    states = inline["ItemProcessor"]["States"]
    for p in ("HIGH", "NORMAL", "BATCH"):
        enqueue = states[f"Inline-Enqueue{p}"]
        assert enqueue["Resource"] == "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
        assert enqueue["Parameters"]["QueueUrl"] == url(f"orders-queues-{p.lower()}")
        assert enqueue["Parameters"]["MessageBody"]["priority"] == p
        assert enqueue["TimeoutSeconds"] == 86_400
        assert "HeartbeatSeconds" not in enqueue
        assert enqueue["Catch"][0]["Next"] == f"Inline-Failed{p}"
    # Items selected but without a priority go to the lowest queue by default.
    assert route_next(states, "Inline-", None) == "Inline-EnqueueBATCH"
    assert route_next(states, "Inline-", "HIGH") == "Inline-EnqueueHIGH"


def route_next(states: dict[str, Any], prefix: str, priority: str | None) -> str:
    """Where the child's Route sends a throttled item of `priority` (None: without one)."""
    wanted = (
        {"Not": {"Variable": "$.item.priority", "IsPresent": True}}
        if priority is None
        else {"Variable": "$.item.priority", "StringEquals": priority}
    )
    routes = [c["Next"] for c in states[prefix + "Route"]["Choices"] if c.get("And", [None])[-1] == wanted]
    assert len(routes) == 1, routes
    return str(routes[0])


def test_order_function_reads_batches_and_writes_only_its_copies(default: Recorder) -> None:
    env = default.named("orders-workflow-order").inputs["environment"]["variables"]
    assert env[contract.ENV_ORDER_BUCKET] == "orders-workflow-results"
    assert json.loads(env[contract.ENV_ORDER_PRIORITIES]) == ["HIGH", "NORMAL", "BATCH"]
    assert env[contract.ENV_ORDER_DEFAULT_PRIORITY] == "BATCH"
    policy = json.loads(default.named("orders-workflow-order-policy").inputs["policy"])
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["ReadBatchItems"]["Resource"] == ["arn:aws:s3:::orders-workflow-results/*"]
    assert by_sid["WriteOrderedBatches"] == {
        "Sid": "WriteOrderedBatches",
        "Effect": "Allow",
        "Action": ["s3:PutObject"],
        "Resource": ["arn:aws:s3:::orders-workflow-results/ordered/*"],
    }


def test_state_machine_policy(default: Recorder) -> None:
    policy = json.loads(default.named("orders-workflow-sfn-policy").inputs["policy"])
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["EnqueueThrottledItems"]["Resource"] == [
        arn(f"orders-queues-{p}") for p in ("high", "normal", "batch")
    ]
    map_run = json.loads(default.named("orders-workflow-sfn-map-run-policy").inputs["policy"])
    sm_arn = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:orders-workflow-state-machine"
    assert map_run["Statement"][0]["Resource"] == [sm_arn]
    assert map_run["Statement"][1]["Resource"] == [
        f"arn:aws:states:{REGION}:{ACCOUNT}:execution:orders-workflow-state-machine/*"
    ]


def test_custom_priorities_and_user_code(tmp_path: Path) -> None:
    (tmp_path / "erp_client.py").write_text("def call(item, ctx):\n    return {}\n")
    rec = build(
        {
            "concurrency": 1,
            "priorities": ["URGENT", "LATER"],
            "target_dir": str(tmp_path),
            "target_handler": "erp_client.call",
            "default_priority": "URGENT",
            "dispatch": "yield",
        },
        name="erp",
    )
    assert sorted(r.name for r in rec.of_type("aws:sqs/queue:Queue")) == [
        "erp-queues-later",
        "erp-queues-later-dlq",
        "erp-queues-urgent",
        "erp-queues-urgent-dlq",
    ]
    # Concurrency 1 still needs the mapping minimum of 2; reserved concurrency holds the cap.
    assert rec.named("erp-worker-urgent-mapping").inputs["scalingConfig"] == {"maximumConcurrency": 2}
    fn = rec.named("erp-worker-function").inputs
    assert fn["reservedConcurrentExecutions"] == 1
    assert fn["environment"]["variables"][contract.ENV_TARGET] == "erp_client.call"
    assert "erp_client.py" in fn["code"].assets
    states = json.loads(rec.named("erp-workflow-state-machine").inputs["definition"])["States"]
    processor = states["FanOutInline"]["ItemProcessor"]["States"]
    assert {s for s in processor if "Enqueue" in s} == {"Inline-EnqueueURGENT", "Inline-EnqueueLATER"}
    assert route_next(processor, "Inline-", None) == "Inline-EnqueueURGENT"


def test_stack_program_from_config() -> None:
    import runpy

    root = Path(__file__).resolve().parents[2]
    config = {
        "sluice:concurrency": "2",
        "sluice:httpUrl": "https://erp.example.internal/api",
        "sluice:httpSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:erp-AbCdEf",
        "sluice:priorities": '["A", "B"]',
        "sluice:maxAttempts": "4",
        "sluice:workerTimeoutSeconds": "20",
    }
    rec = run_program(lambda: runpy.run_path(str(root / "__main__.py")), config=config)
    fn = rec.named("sluice-worker-function").inputs
    assert fn["reservedConcurrentExecutions"] == 2
    assert fn["timeout"] == 20
    env = fn["environment"]["variables"]
    assert env[contract.ENV_MAX_ATTEMPTS] == "4"
    assert env[contract.ENV_HTTP_SECRET_ARN] == config["sluice:httpSecretArn"]
    assert rec.named("sluice-queues-a").inputs["visibilityTimeoutSeconds"] == 120
    policy = json.loads(rec.named("sluice-worker-policy").inputs["policy"])
    assert {
        "Sid": "ReadApiSecret",
        "Effect": "Allow",
        "Action": ["secretsmanager:GetSecretValue"],
        "Resource": [config["sluice:httpSecretArn"]],
    } in policy["Statement"]


def test_ticket_dispatch_is_the_default() -> None:
    rec = build({"concurrency": 2, "http_target": HTTP, "share_period": 5})
    ticket = "orders-queues-dispatch-tickets"
    assert rec.named(ticket).inputs["visibilityTimeoutSeconds"] == 180
    assert json.loads(rec.named(ticket).inputs["redrivePolicy"]) == {
        "deadLetterTargetArn": arn(f"{ticket}-dlq"),
        "maxReceiveCount": 100,
    }
    # Only the ticket queue triggers the worker: its concurrency is the API's limit alone.
    (mapping,) = rec.of_type("aws:lambda/eventSourceMapping:EventSourceMapping")
    assert mapping.name == "orders-worker-tickets-mapping"
    assert mapping.inputs["eventSourceArn"] == arn(ticket)
    assert mapping.inputs["batchSize"] == 1
    assert mapping.inputs["scalingConfig"] == {"maximumConcurrency": 2}
    env = rec.named("orders-worker-function").inputs["environment"]["variables"]
    assert env[contract.ENV_DISPATCH] == "ticket"
    assert env[contract.ENV_TICKET_QUEUE_URL] == url(ticket)
    assert env[contract.ENV_SHARE_PERIOD] == "5"
    worker_policy = json.loads(rec.named("orders-worker-policy").inputs["policy"])
    consume = next(s for s in worker_policy["Statement"] if s["Sid"] == "ConsumePriorityQueues")
    assert consume["Resource"][-1] == arn(ticket)
    sm_policy = json.loads(rec.named("orders-workflow-sfn-policy").inputs["policy"])
    enqueue = next(s for s in sm_policy["Statement"] if s["Sid"] == "EnqueueThrottledItems")
    assert arn(ticket) in enqueue["Resource"]
    states = json.loads(rec.named("orders-workflow-state-machine").inputs["definition"])["States"]
    processor = states["FanOutInline"]["ItemProcessor"]["States"]
    assert route_next(processor, "Inline-", "HIGH") == "Inline-TicketHIGH"
    ticket_state = processor["Inline-TicketHIGH"]
    assert ticket_state["Resource"] == "arn:aws:states:::sqs:sendMessage"
    assert ticket_state["Parameters"]["QueueUrl"] == url(ticket)
    assert ticket_state["Next"] == "Inline-EnqueueHIGH"


def test_a_calls_per_second_limit_reaches_the_worker_and_needs_no_new_permission() -> None:
    plain = build({"concurrency": 4, "http_target": HTTP})
    limited = build({"concurrency": 4, "http_target": HTTP, "calls_per_second": 2.5})
    env = limited.named("orders-worker-function").inputs["environment"]["variables"]
    assert env[contract.ENV_CALLS_PER_SECOND] == "2.5"
    assert (
        contract.ENV_CALLS_PER_SECOND
        not in plain.named("orders-worker-function").inputs["environment"]["variables"]
    )
    # The limiter's item lives in the idempotency table, which the worker already writes.
    assert (
        limited.named("orders-worker-policy").inputs["policy"]
        == plain.named("orders-worker-policy").inputs["policy"]
    )


def test_calls_per_second_comes_from_stack_config() -> None:
    import runpy

    root = Path(__file__).resolve().parents[2]
    config = {"sluice:concurrency": "2", "sluice:httpUrl": HTTP["url"], "sluice:callsPerSecond": "0.5"}
    rec = run_program(lambda: runpy.run_path(str(root / "__main__.py")), config=config)
    env = rec.named("sluice-worker-function").inputs["environment"]["variables"]
    assert env[contract.ENV_CALLS_PER_SECOND] == "0.5"
