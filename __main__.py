"""The Sluice stack program: maps `sluice:*` config onto ThrottledFanOut's args and exports its outputs.
The composition root: the only place that reads pulumi.Config; no logic beyond mapping keys."""

from __future__ import annotations

import re
from typing import Any

import pulumi

from sluice_fanout.components import ThrottledFanOut, ThrottledFanOutArgs
from sluice_fanout.handlers.settings import config_key

INT_ARGS = (
    "worker_timeout_seconds",
    "memory_mb",
    "batch_size",
    "esm_maximum_concurrency",
    "force_after_receives",
    "max_attempts",
    "yield_delay_seconds",
    "max_receive_count",
    "visibility_timeout_seconds",
    "message_retention_seconds",
    "dlq_retention_seconds",
    "callback_timeout_seconds",
    "idempotency_ttl_seconds",
    "map_max_concurrency",
    "log_retention_days",
    "share_period",
    "high_age_alarm_seconds",
)
FLOAT_ARGS = ("retry_base_seconds", "retry_max_seconds", "tolerated_failure_percentage", "calls_per_second")
STR_ARGS = (
    "dispatch",
    "target_dir",
    "target_handler",
    "default_priority",
    "direct_function_arn",
    "log_level",
    "queue_kms_key_arn",
    "alarm_topic_arn",
)
BOOL_ARGS = ("dashboard", "alarms")
OBJECT_ARGS = ("priorities", "throttle_rule", "input_bucket_arns", "wait_objectives")
CAMEL_OBJECT_ARGS = ("adaptive", "keys")
"""Objects whose keys are camelCase in config (`minConcurrency`) and snake_case as args."""
HTTP_KEYS = {
    "url": "httpUrl",
    "secret_arn": "httpSecretArn",
    "ssm_parameter_arn": "httpSsmParameterArn",
    "ssm_parameter_name": "httpSsmParameterName",
    "auth_header": "httpAuthHeader",
}


def _key(arg: str) -> str:
    return config_key(arg).removeprefix("sluice:")


def _snake(key: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), key)


config = pulumi.Config("sluice")
args: dict[str, Any] = {"concurrency": config.require_int("concurrency")}
for arg in INT_ARGS:
    if (value := config.get_int(_key(arg))) is not None:
        args[arg] = value
for arg in FLOAT_ARGS:
    if (number := config.get_float(_key(arg))) is not None:
        args[arg] = number
for arg in BOOL_ARGS:
    if (flag := config.get_bool(_key(arg))) is not None:
        args[arg] = flag
for arg in STR_ARGS:
    if (text := config.get(_key(arg))) is not None:
        args[arg] = text
for arg in OBJECT_ARGS:
    if (obj := config.get_object(_key(arg))) is not None:
        args[arg] = obj
for arg in CAMEL_OBJECT_ARGS:
    if (obj := config.get_object(_key(arg))) is not None:
        # Anything but an object is passed on as given, for the component to refuse by name.
        args[arg] = {_snake(k): v for k, v in obj.items()} if isinstance(obj, dict) else obj
http: dict[str, Any] = {k: v for k, key in HTTP_KEYS.items() if (v := config.get(key)) is not None}
if (timeout := config.get_float("httpTimeoutSeconds")) is not None:
    http["timeout_seconds"] = timeout
if http:
    args["http_target"] = http

fan_out = ThrottledFanOut("sluice", ThrottledFanOutArgs(**args))  # type: ignore[typeddict-item]  # keys mapped above

pulumi.export("stateMachineArn", fan_out.state_machine_arn)
pulumi.export("queueUrls", fan_out.queue_urls)
pulumi.export("dlqUrls", fan_out.dlq_urls)
pulumi.export("workerFunctionName", fan_out.worker_function_name)
pulumi.export("resultsBucket", fan_out.results_bucket)
pulumi.export("idempotencyTable", fan_out.idempotency_table_name)
if fan_out.dashboard_name is not None:
    pulumi.export("dashboardName", fan_out.dashboard_name)
pulumi.export("alarmArns", fan_out.alarm_arns)
if fan_out.controller_function_name is not None:
    pulumi.export("controllerFunctionName", fan_out.controller_function_name)
