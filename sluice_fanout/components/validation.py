"""Argument checks that run at construction, so a bad stack fails at preview, before any resource."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from sluice_fanout.handlers.settings import EnvSettings, bounds, config_key, invalid_priorities, within

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


class SluiceConfigError(ValueError):
    """A component argument is invalid. The message names the value and where to fix it."""


def fail(component: str, name: str, arg: str, rule: str, value: Any) -> SluiceConfigError:
    return SluiceConfigError(f"{component} {name!r}: {arg} {rule}, got {value!r} (set {config_key(arg)})")


def check_int(component: str, name: str, arg: str, value: Any, *, low: int, high: int | None = None) -> int:
    """`value` as an int within [low, high]; bools and floats are refused, not truncated."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(component, name, arg, "must be a whole number", value)
    if value < low or (high is not None and value > high):
        rule = f"must be >= {low}" if high is None else f"must be between {low} and {high}"
        raise fail(component, name, arg, rule, value)
    return value


def check_number(
    component: str, name: str, arg: str, value: Any, *, low: float, high: float | None = None
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise fail(component, name, arg, "must be a number", value)
    if value < low or (high is not None and value > high):
        rule = f"must be >= {low}" if high is None else f"must be between {low} and {high}"
        raise fail(component, name, arg, rule, value)
    return float(value)


# The only retention periods CloudWatch Logs accepts (PutRetentionPolicy); any other number
# passes preview and fails at deploy.
LOG_RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)


def check_setting(
    component: str, name: str, settings: type[EnvSettings], field: str, args: Mapping[str, Any]
) -> Any:
    """The arg that sets one of a function's settings, checked against the setting's own type
    and range (sluice_fanout/handlers/settings.py); its default when the arg is not given."""
    spec = settings.specs()[field]
    arg = spec.arg or field
    default = settings.defaults()[field]
    value = args.get(arg, default)
    if value is None and default is None:
        return None  # an optional setting left unset (e.g. no calls-per-second limit)
    if spec.choices:
        return check_choice(component, name, arg, value, spec.choices)
    if spec.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise fail(component, name, arg, "must be a whole number", value)
    if spec.kind is float:
        value = check_number(component, name, arg, value, low=-math.inf)
    if spec.kind is bool:
        return check_bool(component, name, arg, value)
    if spec.kind is str and not isinstance(value, str):
        raise fail(component, name, arg, "must be text", value)
    if not within(spec, value):
        raise fail(component, name, arg, f"must be {bounds(spec)}", value)
    return value


def check_log_retention_days(component: str, name: str, value: Any) -> int:
    days = check_int(component, name, "log_retention_days", value, low=1)
    if days not in LOG_RETENTION_DAYS:
        raise fail(component, name, "log_retention_days", f"must be one of {list(LOG_RETENTION_DAYS)}", days)
    return days


def check_priorities(component: str, name: str, priorities: Any) -> list[str]:
    problem = invalid_priorities(priorities)
    if problem is not None:
        raise fail(component, name, "priorities", problem, priorities)
    return list(priorities)


def check_choice(component: str, name: str, arg: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise fail(component, name, arg, f"must be one of {list(choices)!r}", value)
    return str(value)


HANDLER_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def check_handler(component: str, name: str, arg: str, value: Any) -> str:
    if not isinstance(value, str) or not HANDLER_PATTERN.fullmatch(value):
        raise fail(component, name, arg, "must be 'module.function'", value)
    return value


# Key ids are UUIDs, or `mrk-` and 32 hex digits for multi-Region keys; alias names are
# `alias/` then letters, digits, `/`, `_` and `-` (KMS's CreateAlias rules). The partition
# (`aws`, `aws-cn`, `aws-us-gov`) is kept open so GovCloud and China stacks validate.
KMS_KEY_ARN_PATTERN = re.compile(
    r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:"
    r"(key/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})"
    r"|alias/[A-Za-z0-9/_-]+)$"
)


def check_kms_key_arn(component: str, name: str, arg: str, value: Any) -> str | None:
    """None, or a KMS key ARN or alias ARN: a bare key id or alias name would leave the IAM grant
    with nothing to scope to."""
    if value is None:
        return None
    # fullmatch: `$` alone also matches before a trailing newline.
    if not isinstance(value, str) or not KMS_KEY_ARN_PATTERN.fullmatch(value):
        raise fail(
            component,
            name,
            arg,
            "must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<key id>) "
            "or alias ARN (arn:aws:kms:<region>:<account>:alias/<name>)",
            value,
        )
    return value


def check_bool(component: str, name: str, arg: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(component, name, arg, "must be true or false", value)
    return value


# Topic names: 1 to 256 letters, digits, `-` and `_`, `.fifo` for FIFO topics (CreateTopic).
SNS_TOPIC_ARN_PATTERN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")


def check_sns_topic_arn(component: str, name: str, arg: str, value: Any) -> str | None:
    """None, or an SNS topic ARN: CloudWatch alarm actions take the ARN, not the topic name."""
    if value is None:
        return None
    # fullmatch: `$` alone also matches before a trailing newline.
    if not isinstance(value, str) or not SNS_TOPIC_ARN_PATTERN.fullmatch(value):
        raise fail(
            component,
            name,
            arg,
            "must be an SNS topic ARN (arn:aws:sns:<region>:<account>:<topic name>)",
            value,
        )
    return value
