"""The adaptive controller under Pulumi mocks: its children, names, exact inputs and settings
document, the ignore_changes that keep `pulumi up --refresh` from undoing it, and its output.
What the mocks cannot prove: that EventBridge invokes the function every minute, that IAM
accepts the grants on event source mapping ARNs (parliament lints them), and the handler itself."""

from __future__ import annotations

import json
import runpy
from collections import Counter
from pathlib import Path
from typing import Any

import pulumi
import pytest

from sluice_fanout.components.adaptive_controller import (
    AdaptiveSettings,
    build_controller_settings,
    check_adaptive_args,
)
from sluice_fanout.components.policies import build_controller_policy, event_source_mapping_arn
from sluice_fanout.handlers import contract
from tests.support.mocks import ACCOUNT, REGION, Recorder, _ParentRecordingMonitor

HTTP = {"url": "https://erp.example.internal/api"}
ROOT = Path(__file__).resolve().parents[2]
FN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function"


class IgnoreChangesMonitor(_ParentRecordingMonitor):
    """Also records each resource's ignoreChanges, which the mocks' resource hook never sees."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder)
        self.ignore_changes: dict[str, list[str]] = {}

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        self.ignore_changes[request.name] = list(request.ignoreChanges)
        return super().RegisterResource(request)


def run(args: dict[str, Any] | None = None, config: dict[str, str] | None = None) -> tuple[Recorder, Any]:
    """ThrottledFanOut 'orders' with `args`, or the stack program with `config`."""
    recorder = Recorder()
    monitor = IgnoreChangesMonitor(recorder)
    pulumi.runtime.set_mocks(recorder, project="sluice", stack="test", preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(config or {})
    outputs: dict[str, Any] = {}

    @pulumi.runtime.test
    def program() -> Any:
        if config is not None:
            runpy.run_path(str(ROOT / "__main__.py"))
            return None
        from sluice_fanout.components import ThrottledFanOut

        fan_out = ThrottledFanOut("orders", args)  # type: ignore[arg-type]
        name = fan_out.controller_function_name
        return name.apply(lambda n: outputs.update(controller=n)) if name is not None else None

    program()
    return recorder, (monitor.ignore_changes, outputs)


@pytest.fixture(scope="module")
def adaptive() -> tuple[Recorder, Any]:
    """The default ticket dispatch, with the controller at its defaults."""
    return run({"concurrency": 8, "http_target": HTTP, "adaptive": {}})


def settings_of(rec: Recorder, name: str = "orders-controller-function") -> dict[str, Any]:
    env = rec.named(name).inputs["environment"]["variables"]
    return json.loads(env[contract.ENV_CONTROLLER_SETTINGS])  # type: ignore[no-any-return]


def test_the_controller_and_nothing_else_is_added(adaptive: tuple[Recorder, Any]) -> None:
    rec, _ = adaptive
    plain, _ = run({"concurrency": 8, "http_target": HTTP})
    added = Counter(r.typ for r in rec.resources) - Counter(r.typ for r in plain.resources)
    assert added == {
        "sluice:index:AdaptiveController": 1,
        "aws:iam/role:Role": 1,
        "aws:iam/rolePolicy:RolePolicy": 1,
        "aws:cloudwatch/logGroup:LogGroup": 1,
        "aws:lambda/function:Function": 1,
        "aws:lambda/functionEventInvokeConfig:FunctionEventInvokeConfig": 1,
        "aws:cloudwatch/eventRule:EventRule": 1,
        "aws:cloudwatch/eventTarget:EventTarget": 1,
        "aws:lambda/permission:Permission": 1,
    }
    assert Counter(r.typ for r in plain.resources) - Counter(r.typ for r in rec.resources) == Counter()
    by_urn = {r.urn: r for r in rec.resources}
    controller = rec.named("orders-controller")
    assert by_urn[controller.parent_urn].name == "orders"
    children = sorted(r.name for r in rec.resources if r.parent_urn == controller.urn)
    assert children == [
        "orders-controller-function",
        "orders-controller-invoke",
        "orders-controller-invoke-config",
        "orders-controller-logs",
        "orders-controller-policy",
        "orders-controller-role",
        "orders-controller-schedule",
        "orders-controller-target",
    ]


def test_the_controller_function(adaptive: tuple[Recorder, Any]) -> None:
    rec, _ = adaptive
    fn = rec.named("orders-controller-function").inputs
    worker = rec.named("orders-worker-function").inputs
    assert fn["runtime"] == worker["runtime"] == "python3.13"
    assert fn["handler"] == contract.CONTROLLER_HANDLER
    assert fn["timeout"] == contract.CONTROLLER_RUN_SECONDS + 30
    assert fn["reservedConcurrentExecutions"] == 1
    assert fn["memorySize"] == 128
    assert fn["role"] == f"arn:aws:iam::{ACCOUNT}:role/orders-controller-role"
    assert fn["loggingConfig"] == {"logFormat": "JSON", "logGroup": "orders-controller-logs"}
    # The worker's archive: the handlers package holds the controller's entry point too.
    assert sorted(fn["code"].assets) == sorted(worker["code"].assets)
    assert fn["environment"]["variables"] == {
        contract.ENV_CONTROLLER_WORKER: "orders-worker-function",
        contract.ENV_CONTROLLER_MAPPINGS: json.dumps(["uuid-orders-worker-tickets-mapping"]),
        contract.ENV_CONTROLLER_PRIORITIES: json.dumps(["HIGH", "NORMAL", "BATCH"]),
        contract.ENV_CONTROLLER_TABLE: "orders-worker-idempotency",
        contract.ENV_CONTROLLER_SETTINGS: fn["environment"]["variables"][contract.ENV_CONTROLLER_SETTINGS],
    }
    assert rec.named("orders-controller-logs").inputs == {"retentionInDays": 14}
    assert rec.named("orders-controller-invoke-config").inputs == {
        "functionName": "orders-controller-function",
        "maximumEventAgeInSeconds": 60,
        "maximumRetryAttempts": 0,
    }


def test_default_settings_leave_the_tuning_to_the_controller(adaptive: tuple[Recorder, Any]) -> None:
    rec, _ = adaptive
    assert settings_of(rec) == {
        "min_limit": 1,
        "max_limit": 8,
        "interval_seconds": 10,
        "signal_delay_seconds": 10,
        "breaker": {"error_threshold": 0.5, "min_calls": 20, "open_seconds": 120},
    }


def test_every_setting_reaches_the_controller() -> None:
    rec, _ = run(
        {
            "concurrency": 6,
            "http_target": HTTP,
            "dispatch": "yield",
            "adaptive": {
                "min_concurrency": 2,
                "interval_seconds": 5,
                "signal_delay_seconds": 0,
                "throttle_threshold": 0.02,
                "error_threshold": 0.1,
                "latency_tolerance": 1.5,
                "min_calls": 4,
                "probe_intervals": 3,
                "breaker": False,
                "breaker_error_threshold": 0.9,  # checked, but with the breaker off it goes nowhere
            },
        }
    )
    assert settings_of(rec) == {
        "min_limit": 2,
        "max_limit": 6,
        "interval_seconds": 5,
        "signal_delay_seconds": 0,
        "throttle_threshold": 0.02,
        "error_threshold": 0.1,
        "latency_tolerance": 1.5,
        "min_calls": 4,
        "probe_intervals": 3,
        "breaker": None,
    }
    env = rec.named("orders-controller-function").inputs["environment"]["variables"]
    # yield: one mapping per priority, highest first.
    assert json.loads(env[contract.ENV_CONTROLLER_MAPPINGS]) == [
        f"uuid-orders-worker-{p}-mapping" for p in ("high", "normal", "batch")
    ]


def test_the_old_names_of_the_thresholds_still_work_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *_a, **_k: warnings.append(message))
    old = {"throttle_share": 0.03, "error_share": 0.2, "breaker_error_share": 0.7}
    settings = check_adaptive_args("T", "n", old, concurrency=4, callback_timeout_seconds=None)
    new = {"throttle_threshold": 0.03, "error_threshold": 0.2, "breaker_error_threshold": 0.7}
    assert settings == check_adaptive_args("T", "n", new, concurrency=4, callback_timeout_seconds=None)
    assert warnings == [
        f"T 'n': sluice:adaptive.{o} is deprecated and will be removed; rename it "
        f"sluice:adaptive.{n} (same meaning, same value)"
        for o, n in [
            ("throttleShare", "throttleThreshold"),
            ("errorShare", "errorThreshold"),
            ("breakerErrorShare", "breakerErrorThreshold"),
        ]
    ]
    # A bad value is reported under the name the user wrote.
    with pytest.raises(
        ValueError,
        match=r"adaptive.error_share must be >= 0 and < 1, got 2 \(set sluice:adaptive.errorShare\)",
    ):
        check_adaptive_args("T", "n", {"error_share": 2}, concurrency=4, callback_timeout_seconds=None)
    with pytest.raises(
        ValueError,
        match=r"is the old name of adaptive\.error_threshold; set only sluice:adaptive\.errorThreshold",
    ):
        check_adaptive_args(
            "T",
            "n",
            {"error_share": 0.1, "error_threshold": 0.1},
            concurrency=4,
            callback_timeout_seconds=None,
        )


def test_the_schedule_invokes_the_controller(adaptive: tuple[Recorder, Any]) -> None:
    rec, _ = adaptive
    rule = rec.named("orders-controller-schedule")
    assert rule.inputs == {
        "description": "Starts a Sluice adaptive controller run",
        "scheduleExpression": contract.CONTROLLER_SCHEDULE,
    }
    rule_arn = f"arn:aws:events:{REGION}:{ACCOUNT}:rule/orders-controller-schedule"
    assert rec.named("orders-controller-target").inputs == {
        "rule": "orders-controller-schedule",
        "arn": f"{FN}:orders-controller-function",
    }
    assert rec.named("orders-controller-invoke").inputs == {
        "action": "lambda:InvokeFunction",
        "function": "orders-controller-function",
        "principal": "events.amazonaws.com",
        "sourceArn": rule_arn,
    }


def test_the_controller_policy(adaptive: tuple[Recorder, Any]) -> None:
    rec, _ = adaptive
    policy = json.loads(rec.named("orders-controller-policy").inputs["policy"])
    assert policy == build_controller_policy(
        worker_function_arn=f"{FN}:orders-worker-function",
        mapping_arns=[
            f"arn:aws:lambda:{REGION}:{ACCOUNT}:event-source-mapping:uuid-orders-worker-tickets-mapping"
        ],
        state_table_arn=f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/orders-worker-idempotency",
        state_key="controller#orders-worker-function",
        limits_key="limits#orders-worker-function",
        log_group_arn=f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:orders-controller-logs",
    )
    assert rec.named("orders-controller-policy").inputs["role"] == "orders-controller-role-id"


def test_build_controller_policy_grants_exactly_what_the_controller_does() -> None:
    logs = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:c"
    table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/t"
    mappings = [f"arn:aws:lambda:{REGION}:{ACCOUNT}:event-source-mapping:u{i}" for i in (1, 2)]
    policy = build_controller_policy(
        worker_function_arn=f"{FN}:w",
        mapping_arns=mappings,
        state_table_arn=table,
        state_key="controller#w",
        limits_key="limits#w",
        log_group_arn=logs,
    )
    assert policy["Statement"] == [
        {
            "Sid": "ReadWorkerMetrics",
            "Effect": "Allow",
            "Action": ["cloudwatch:GetMetricData"],
            "Resource": ["*"],
        },
        {
            "Sid": "SetWorkerConcurrency",
            "Effect": "Allow",
            "Action": ["lambda:GetFunctionConcurrency", "lambda:PutFunctionConcurrency"],
            "Resource": [f"{FN}:w"],
        },
        {
            "Sid": "SetWorkerMappings",
            "Effect": "Allow",
            "Action": ["lambda:GetEventSourceMapping", "lambda:UpdateEventSourceMapping"],
            "Resource": mappings,
        },
        {
            "Sid": "KeepControllerState",
            "Effect": "Allow",
            "Action": ["dynamodb:GetItem", "dynamodb:PutItem"],
            "Resource": [table],
            # Never the idempotency records that share the table.
            "Condition": {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["controller#w"]}},
        },
        {
            "Sid": "ReadOperatorLimits",
            "Effect": "Allow",
            "Action": ["dynamodb:GetItem"],
            "Resource": [table],
            # Reads the operator's limits (`sluice limits`), never writes them.
            "Condition": {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["limits#w"]}},
        },
        {
            "Sid": "WriteOwnLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [logs, f"{logs}:*"],
        },
    ]


def test_event_source_mapping_arn() -> None:
    assert event_source_mapping_arn(f"{FN}:w", "a-b") == (
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:event-source-mapping:a-b"
    )
    assert event_source_mapping_arn("arn:aws-cn:lambda:cn-north-1:123456789012:function:w", "u") == (
        "arn:aws-cn:lambda:cn-north-1:123456789012:event-source-mapping:u"
    )


@pytest.mark.parametrize("dispatch", ["ticket", "yield"])
def test_drift_the_controller_makes_is_ignored_only_when_adaptive(dispatch: str) -> None:
    _, (ignored, _) = run({"concurrency": 4, "http_target": HTTP, "dispatch": dispatch, "adaptive": {}})
    _, (plain, _) = run({"concurrency": 4, "http_target": HTTP, "dispatch": dispatch})
    mappings = [n for n in ignored if n.endswith("-mapping")]
    assert len(mappings) == (1 if dispatch == "ticket" else 3)
    assert {name: changes for name, changes in ignored.items() if changes} == {
        "orders-worker-function": ["reservedConcurrentExecutions"],
        **{m: ["scalingConfig", "enabled"] for m in mappings},
    }
    assert {name: changes for name, changes in plain.items() if changes} == {}


def test_the_worker_holds_a_refused_slot_for_the_controllers_reaction_time(
    adaptive: tuple[Recorder, Any],
) -> None:
    rec, _ = adaptive
    env = rec.named("orders-worker-function").inputs["environment"]["variables"]
    assert env[contract.ENV_THROTTLE_HOLD_SECONDS] == "20.0"  # interval 10 s + signal delay 10 s
    plain, _ = run({"concurrency": 8, "http_target": HTTP})
    assert (
        contract.ENV_THROTTLE_HOLD_SECONDS
        not in plain.named("orders-worker-function").inputs["environment"]["variables"]
    )
    tuned, _ = run(
        {
            "concurrency": 8,
            "http_target": HTTP,
            "adaptive": {"interval_seconds": 5, "signal_delay_seconds": 3},
        }
    )
    assert (
        tuned.named("orders-worker-function").inputs["environment"]["variables"][
            contract.ENV_THROTTLE_HOLD_SECONDS
        ]
        == "8.0"
    )


def test_the_worker_starts_at_the_max(adaptive: tuple[Recorder, Any]) -> None:
    rec, _ = adaptive
    assert rec.named("orders-worker-function").inputs["reservedConcurrentExecutions"] == 8
    assert rec.named("orders-worker-tickets-mapping").inputs["scalingConfig"] == {"maximumConcurrency": 8}


def test_controller_function_name_output(adaptive: tuple[Recorder, Any]) -> None:
    _, (_, outputs) = adaptive
    assert outputs == {"controller": "orders-controller-function"}
    _, (_, plain) = run({"concurrency": 4, "http_target": HTTP})
    assert plain == {}


def test_the_stack_program_reads_adaptive_and_exports_the_controller() -> None:
    config = {
        "sluice:concurrency": "5",
        "sluice:httpUrl": HTTP["url"],
        "sluice:adaptive": json.dumps({"minConcurrency": 2, "intervalSeconds": 30, "breakerOpenSeconds": 60}),
    }
    rec, _ = run(config=config)
    assert settings_of(rec, "sluice-controller-function") == {
        "min_limit": 2,
        "max_limit": 5,
        "interval_seconds": 30,
        "signal_delay_seconds": 10,
        "breaker": {"error_threshold": 0.5, "min_calls": 20, "open_seconds": 60},
    }
    main = (ROOT / "__main__.py").read_text()
    assert 'pulumi.export("controllerFunctionName", fan_out.controller_function_name)' in main


def test_build_controller_settings_is_the_contract_shape() -> None:
    settings = check_adaptive_args(
        "T", "n", {"breaker_open_seconds": 0}, concurrency=3, callback_timeout_seconds=None
    )
    assert settings == AdaptiveSettings(
        min_concurrency=1,
        max_concurrency=3,
        interval_seconds=10,
        signal_delay_seconds=10,
        tuning={},
        breaker=True,
        breaker_error_threshold=0.5,
        breaker_open_seconds=0,
        breaker_min_calls=20,
    )
    document = build_controller_settings(settings)
    # contract.ENV_CONTROLLER_SETTINGS: these four are required; `breaker` null or an object.
    assert {"min_limit", "max_limit", "interval_seconds", "signal_delay_seconds", "breaker"} == set(document)
    assert set(document["breaker"]) <= {"error_threshold", "min_calls", "open_seconds", "probe_limit"}


def test_keys_reach_the_worker_and_the_state_machine_waits_in_the_keyed_table() -> None:
    rec, _ = run({"concurrency": 8, "http_target": HTTP, "keys": {"field": "tenant", "weights": {"acme": 2}}})
    env = rec.named("orders-worker-function").inputs["environment"]["variables"]
    assert json.loads(env[contract.ENV_KEYS])["field"] == "tenant"
    assert json.loads(env[contract.ENV_KEYS])["weights"] == {"acme": 2.0}
    table = rec.named("orders-workflow-keyed")
    assert {i["name"] for i in table.inputs["globalSecondaryIndexes"]} == set(contract.KEYED_INDEXES)
    assert env[contract.ENV_KEYED_TABLE] == table.inputs.get("name", env[contract.ENV_KEYED_TABLE])
    definition = json.loads(rec.named("orders-workflow-state-machine").inputs["definition"])
    states = definition["States"]["FanOutInline"]["ItemProcessor"]["States"]
    assert states["Inline-KeyedWaitBATCH"]["Resource"].endswith(
        "dynamodb:transactWriteItems.waitForTaskToken"
    )


def test_no_keyed_table_without_keys(adaptive: tuple[Recorder, Any]) -> None:
    rec, _ = adaptive
    assert not [r for r in rec.resources if r.name.endswith("-keyed")]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"dispatch": "yield", "keys": {}}, "need the ticket dispatch"),
        ({"keys": {"weights": {"acme": -1}}}, "keys.weights['acme']"),
    ],
)
def test_bad_keys_are_refused_before_anything_exists(args: dict[str, Any], named: str) -> None:
    with pytest.raises(Exception, match="keys") as raised:
        run({"concurrency": 8, "http_target": HTTP} | args)
    assert named in str(raised.value)
