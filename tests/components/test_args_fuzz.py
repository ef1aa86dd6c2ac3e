"""ThrottledFanOut's args, fuzzed: construction either succeeds, or fails whole with a
SluiceConfigError naming the arg, the value in effect and its config key, before any resource.

Each example sets a few args to values inside their documented ranges and some (the `bad` ones)
to values outside them: wrong types, negatives, out of range, bad priority names, an unknown
dispatch, a malformed KMS key ARN, an unknown arg. A bad value must always be refused."""

from __future__ import annotations

import math
import re
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sluice_fanout.components.validation import LOG_RETENTION_DAYS, SluiceConfigError
from sluice_fanout.handlers.settings import DEFAULT_PRIORITIES, config_key
from tests.support.mocks import ACCOUNT, REGION, run_program

HTTP_URL = "https://erp.example.internal/api"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
CROSS_FIELD = {
    "visibility_timeout_seconds",
    "max_receive_count",
    "esm_maximum_concurrency",  # refused with adaptive
    "adaptive.min_concurrency",  # at most concurrency
    "adaptive.breaker_open_seconds",  # below callback_timeout_seconds - 2 x interval_seconds
}
"""Args whose rule involves others: valid values alone can still break it, and the error
names this arg with its value in effect (its default when not given)."""

junk = st.one_of(
    st.none(), st.booleans(), st.text(max_size=8), st.lists(st.integers(), max_size=2), st.just({"a": 1})
)


def whole(low: int, high: int) -> tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]:
    """In range, and out of it (below, above, or not a whole number at all)."""
    return st.integers(low, high), st.one_of(
        st.integers(max_value=low - 1),
        st.integers(min_value=high + 1),
        st.floats(allow_nan=True, allow_infinity=True),
        junk,
    )


def number(low: float, high: float) -> tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]:
    return st.floats(low, high), st.one_of(
        st.floats(max_value=low, exclude_max=True),
        st.floats(min_value=high, exclude_min=True),
        st.just(math.nan),
        junk,
    )


def choice(options: tuple[str, ...]) -> tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]:
    return st.sampled_from(options), st.one_of(st.text(max_size=8).filter(lambda s: s not in options), junk)


PRIORITY = st.from_regex(r"[A-Z][A-Z0-9_]{0,19}", fullmatch=True)
PRIORITIES = (
    st.lists(PRIORITY, min_size=1, max_size=4, unique=True),
    st.one_of(
        st.just([]),
        st.lists(PRIORITY, min_size=1, max_size=3, unique=True).map(lambda names: [*names, names[0]]),
        st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True).map(lambda name: [name]),
        PRIORITY.map(lambda name: [name + "\n"]),
        PRIORITY.map(lambda name: [name + "X" * 20]),
        st.text(min_size=1, max_size=5),
        st.integers(),
        st.none(),
    ),
)
KMS = (
    st.just(KEY_ARN),
    st.one_of(
        st.text(max_size=20),
        st.just("alias/sluice"),
        st.just(KEY_ARN + "\n"),
        st.just(KEY_ARN.replace(":kms:", ":sqs:")),
        st.integers(),
    ),
)
THROTTLE_RULE = (
    st.just({"Variable": "$.item.kind", "StringEquals": "erp"}),
    st.one_of(st.just({}), st.just({"Variable": "$.x", "IsPresent": True, "Next": "X"}), st.text(max_size=5)),
)
SHARE = (
    st.floats(0, 1, exclude_max=True),
    st.one_of(
        st.just(1.0),
        st.floats(max_value=0, exclude_max=True),
        st.floats(min_value=1),
        st.just(math.nan),
        junk,
    ),
)
ADAPTIVE_FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "min_concurrency": whole(1, 1_000),
    "interval_seconds": (
        st.sampled_from((1, 5, 10, 30, 60)),
        st.one_of(st.integers().filter(lambda i: i not in (1, 5, 10, 30, 60)), junk),
    ),
    "signal_delay_seconds": whole(0, 59),
    "throttle_threshold": SHARE,
    "error_threshold": SHARE,
    "latency_tolerance": (
        st.floats(1, 100, exclude_min=True),
        st.one_of(
            st.floats(max_value=1), st.floats(min_value=100, exclude_min=True), st.just(math.nan), junk
        ),
    ),
    "min_calls": whole(1, 1_000_000),
    "probe_intervals": whole(1, 1_000_000),
    "breaker": (st.booleans(), st.one_of(st.integers(), st.text(max_size=5), st.none())),
    "breaker_error_threshold": SHARE,
    "breaker_open_seconds": whole(0, 31_536_000),
    "breaker_min_calls": whole(1, 1_000_000),
}
ADAPTIVE_DEFAULTS = {
    "min_concurrency": 1,
    "interval_seconds": 10,
    "signal_delay_seconds": 10,
    "breaker": True,
    "breaker_error_threshold": 0.5,
    "breaker_open_seconds": 120,
    "breaker_min_calls": 20,
}


@st.composite
def adaptive_args(draw: st.DrawFn, *, bad: bool) -> Any:
    """AdaptiveArgs within their ranges, or with one field outside (or not an object at all)."""
    if bad and draw(st.booleans()):
        return draw(
            st.one_of(st.none(), st.booleans(), st.text(max_size=8), st.integers(), st.lists(st.integers()))
        )
    fields = draw(st.sets(st.sampled_from(sorted(ADAPTIVE_FIELDS)), max_size=4))
    adaptive = {field: draw(ADAPTIVE_FIELDS[field][0]) for field in sorted(fields)}
    if bad:
        field = draw(st.sampled_from(sorted(ADAPTIVE_FIELDS)))
        adaptive[field] = draw(ADAPTIVE_FIELDS[field][1])
    return adaptive


FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "concurrency": whole(1, 1_000),
    "dispatch": choice(("ticket", "yield")),
    "share_period": whole(2, 1_000),
    "worker_timeout_seconds": whole(1, 900),
    "memory_mb": whole(128, 10_240),
    "batch_size": whole(1, 10),
    "esm_maximum_concurrency": whole(2, 1_000),
    "force_after_receives": whole(1, 100),
    "max_attempts": whole(1, 100),
    "yield_delay_seconds": whole(0, 43_200),
    "retry_base_seconds": number(0, 43_200),
    "retry_max_seconds": number(0, 43_200),
    "max_receive_count": whole(1, 1_000),
    "visibility_timeout_seconds": whole(0, 43_200),
    "message_retention_seconds": whole(60, 1_209_600),
    "dlq_retention_seconds": whole(60, 1_209_600),
    "callback_timeout_seconds": whole(1, 31_536_000),
    "map_max_concurrency": whole(1, 10_000),
    "tolerated_failure_percentage": number(0, 100),
    "log_level": choice(("ALL", "ERROR", "FATAL", "OFF")),
    "log_retention_days": (
        st.sampled_from(LOG_RETENTION_DAYS),
        st.one_of(st.integers().filter(lambda d: d not in LOG_RETENTION_DAYS), junk),
    ),
    "queue_kms_key_arn": KMS,
    "high_age_alarm_seconds": whole(60, 1_209_600),
    "alarm_topic_arn": (
        st.just(f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts"),
        st.one_of(st.text(max_size=20), st.just(f"arn:aws:sqs:{REGION}:{ACCOUNT}:alerts"), st.integers()),
    ),
    "dashboard": (st.booleans(), st.one_of(st.integers(), st.text(max_size=5), st.none())),
    "alarms": (st.booleans(), st.one_of(st.integers(), st.text(max_size=5), st.none())),
    "throttle_rule": THROTTLE_RULE,
    "http_timeout_seconds": number(0.1, 900),
    "adaptive": (adaptive_args(bad=False), adaptive_args(bad=True)),
    "priorities": PRIORITIES,
    "default_priority": (st.nothing(), st.text(max_size=8)),  # the valid one depends on priorities
    # The valid range depends on concurrency and the worker timeout: only bad values are fuzzed
    # (test_validation covers the valid ones and the cross-field rule).
    "calls_per_second": (
        st.nothing(),
        st.one_of(
            st.floats(max_value=0.0),
            st.floats(min_value=1_000.001),
            st.just(math.nan),
            st.text(max_size=3),
            st.booleans(),
        ),
    ),
}
UNKNOWN_ARGS = ("surprise", "queue_kms_key", "http_url")


@st.composite
def fan_out_args(draw: st.DrawFn) -> tuple[dict[str, Any], set[str]]:
    """Args for ThrottledFanOut, and the names of those drawn outside their valid range."""
    chosen = draw(st.sets(st.sampled_from(sorted(FIELDS)), max_size=6)) | {"concurrency"}
    bad = draw(st.sets(st.sampled_from(sorted(chosen)), max_size=2))
    args: dict[str, Any] = {"http_target": {"url": HTTP_URL}}
    if "calls_per_second" not in bad:
        chosen.discard("calls_per_second")
    for field in sorted(chosen - {"default_priority"}):
        value = draw(FIELDS[field][field in bad])
        if field == "http_timeout_seconds":
            args["http_target"]["timeout_seconds"] = value
        else:
            args[field] = value
    if "default_priority" in chosen:
        priorities = args.get("priorities", DEFAULT_PRIORITIES)
        names = priorities if "priorities" not in bad else ["HIGH"]
        valid = st.sampled_from(list(names))
        invalid = st.text(max_size=8).filter(lambda s: s not in names)
        args["default_priority"] = draw(invalid if "default_priority" in bad else valid)
    if draw(st.integers(0, 9)) == 0:
        unknown = draw(st.sampled_from(UNKNOWN_ARGS))
        args[unknown] = 1
        bad.add(unknown)
    return args, bad


def is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def broken_adaptive_rules(args: dict[str, Any]) -> set[str]:
    """The cross-field rules of `adaptive` that args drawn in range still break: each must be
    refused, like a value out of range. Only judged where the values it compares are valid."""
    adaptive = args.get("adaptive")
    if not isinstance(adaptive, dict):
        return set()
    broken = set()
    if "esm_maximum_concurrency" in args:
        broken.add("esm_maximum_concurrency")
    minimum = adaptive.get("min_concurrency", 1)
    concurrency = args.get("concurrency")
    if is_whole(minimum) and is_whole(concurrency) and 1 <= concurrency <= 1_000 and minimum > concurrency:
        broken.add("adaptive.min_concurrency")
    timeout = args.get("callback_timeout_seconds", 86_400)
    interval = adaptive.get("interval_seconds", 10)
    open_seconds = adaptive.get("breaker_open_seconds", 120)
    if (
        adaptive.get("breaker", True) is True
        and is_whole(timeout)
        and 1 <= timeout <= 31_536_000
        and interval in (1, 5, 10, 30, 60)
        and is_whole(interval)
        and is_whole(open_seconds)
        and open_seconds >= timeout - 2 * interval
    ):
        broken.add("adaptive.breaker_open_seconds")
    return broken


def value_in_effect(args: dict[str, Any], arg: str) -> Any:
    if arg.startswith("adaptive."):
        field = arg.removeprefix("adaptive.")
        return args["adaptive"].get(field, ADAPTIVE_DEFAULTS.get(field))
    if arg == "http_timeout_seconds":
        return args["http_target"].get("timeout_seconds", 10.0)
    if arg in args:
        return args[arg]
    defaults = {
        "max_receive_count": 10,
        "visibility_timeout_seconds": 6 * args.get("worker_timeout_seconds", 30),
    }
    return defaults[arg]


MESSAGE = re.compile(r"ThrottledFanOut 'orders': ([\w.]+) (.+?), got (.*) \(set (sluice:[\w.]+)\)", re.DOTALL)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fan_out_args())
# Only the last check (the workflow's) fails: nothing, not even the queues, may exist.
@example(({"concurrency": 1, "http_target": {"url": HTTP_URL}, "log_level": "LOUD"}, {"log_level"}))
# Found by this test at 600 examples, kept so every run checks them.
@example(({"concurrency": 1, "http_target": {"url": HTTP_URL}, "priorities": 5}, {"priorities"}))
@example(({"concurrency": 1, "http_target": {"url": HTTP_URL}, "priorities": ["A", "A"]}, {"priorities"}))
@example(({"concurrency": 1, "http_target": {"url": HTTP_URL}, "priorities": ["A\n"]}, {"priorities"}))
@example(
    (
        {"concurrency": 1, "http_target": {"url": HTTP_URL}, "retry_base_seconds": math.inf},
        {"retry_base_seconds"},
    )
)
@example(
    ({"concurrency": 1, "http_target": {"url": HTTP_URL}, "log_retention_days": 2}, {"log_retention_days"})
)
@example(
    (
        {"concurrency": 1, "http_target": {"url": HTTP_URL}, "queue_kms_key_arn": KEY_ARN + "\n"},
        {"queue_kms_key_arn"},
    )
)
@example(
    (
        {
            "concurrency": 1,
            "http_target": {"url": HTTP_URL},
            "callback_timeout_seconds": 7_200,
            "idempotency_ttl_seconds": 3_600,
        },
        {"idempotency_ttl_seconds"},
    )
)
@example(
    (
        {"concurrency": 1, "http_target": {"url": HTTP_URL}, "callback_timeout_seconds": 31_536_001},
        {"callback_timeout_seconds"},
    )
)
@example(
    (
        {"concurrency": 2, "http_target": {"url": HTTP_URL}, "adaptive": {"min_concurrency": 3}},
        set(),
    )
)
@example(
    (
        {"concurrency": 2, "http_target": {"url": HTTP_URL}, "adaptive": {"interval_seconds": 7}},
        {"adaptive"},
    )
)
# The boundaries of adaptive's rules: 120 s open + 2 x 10 s is not below 140; a share of 1.
@example(
    (
        {"concurrency": 2, "http_target": {"url": HTTP_URL}, "adaptive": {}, "callback_timeout_seconds": 140},
        set(),
    )
)
@example(
    (
        {"concurrency": 2, "http_target": {"url": HTTP_URL}, "adaptive": {"breaker_error_threshold": 1.0}},
        {"adaptive"},
    )
)
@example(
    (
        {"concurrency": 2, "http_target": {"url": HTTP_URL}, "adaptive": {}, "esm_maximum_concurrency": 2},
        set(),
    )
)
def test_args_build_the_stack_or_fail_whole_naming_the_value(drawn: tuple[dict[str, Any], set[str]]) -> None:
    args, bad = drawn
    bad = bad | broken_adaptive_rules(args)
    failure: list[SluiceConfigError] = []

    def program() -> None:
        from sluice_fanout.components import ThrottledFanOut

        try:
            ThrottledFanOut("orders", args)  # type: ignore[arg-type]
        except SluiceConfigError as exc:
            failure.append(exc)

    rec = run_program(program)
    if not failure:
        assert not bad, f"accepted {bad}"
        assert any(r.typ == "sluice:index:ThrottledFanOut" for r in rec.resources)
        return
    assert rec.resources == [], "a failed construction registered resources"
    message = str(failure[0])
    if "unknown args" in message:
        unknown = sorted(set(args) & set(UNKNOWN_ARGS))
        assert message.startswith(f"ThrottledFanOut 'orders': unknown args {unknown!r}")
        return
    match = MESSAGE.fullmatch(message)
    assert match, message
    arg, _, got, key = match.groups()
    assert arg in bad | CROSS_FIELD or arg.split(".")[0] in bad, message
    assert key == config_key(arg)
    assert got == repr(value_in_effect(args, arg))
