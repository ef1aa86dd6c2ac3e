"""One settings contract: what the component writes into the worker's environment is what the
handler reads back, with the same defaults and ranges, and the docs state those defaults."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from sluice_fanout.components import PriorityWorkerArgs, ThrottledFanOut, ThrottledFanOutArgs
from sluice_fanout.components.adaptive_controller import build_controller_settings, check_adaptive_args
from sluice_fanout.components.priority_worker import HttpTargetArgs, check_worker_args
from sluice_fanout.components.validation import SluiceConfigError
from sluice_fanout.handlers import contract
from sluice_fanout.handlers.controller import BreakerSettings, ControllerSettings
from sluice_fanout.handlers.http_target import HttpTargetConfig
from sluice_fanout.handlers.settings import HttpTargetSettings, WorkerSettings, bounds, config_key
from sluice_fanout.handlers.worker_config import WorkerConfig, WorkerConfigError
from tests.support.mocks import Recorder, run_program

ROOT = Path(__file__).resolve().parents[2]
HTTP = {"url": "https://erp.example.internal/api"}
WIRING = {
    contract.ENV_QUEUES,
    contract.ENV_IDEMPOTENCY_TABLE,
    contract.ENV_TICKET_QUEUE_URL,
    contract.ENV_RESULTS_BUCKET,
    contract.ENV_CONCURRENCY,
}
"""What the deploy wires in beside the settings: resource names only it knows, and the deployed
concurrency (the base of the run-time limits, `sluice limits`)."""
STACKS: dict[str, dict[str, Any]] = {
    "defaults": {"concurrency": 4, "http_target": HTTP},
    "yield": {"concurrency": 4, "dispatch": "yield", "http_target": HTTP},
    "tuned": {
        "concurrency": 4,
        "http_target": {**HTTP, "timeout_seconds": 3.5, "auth_header": "X-Api-Key"},
        "share_period": 7,
        "force_after_receives": 2,
        "max_attempts": 5,
        "yield_delay_seconds": 9,
        "retry_base_seconds": 0.5,
        "retry_max_seconds": 60.0,
        "calls_per_second": 12.5,
        "idempotency_ttl_seconds": 400_000,
        "adaptive": {},
    },
}


def worker_env(kind: str) -> dict[str, str]:
    def program() -> None:
        ThrottledFanOut("orders", STACKS[kind])  # type: ignore[arg-type]

    rec: Recorder = run_program(program)
    variables = rec.named("orders-worker-function").inputs["environment"]["variables"]
    return {name: str(value) for name, value in variables.items()}


@pytest.mark.parametrize("kind", sorted(STACKS))
def test_the_handler_reads_back_exactly_what_the_component_set(kind: str) -> None:
    env = worker_env(kind)
    config = WorkerConfig.from_env(env)
    http = HttpTargetConfig.from_env(env)
    given = STACKS[kind]
    for field in WorkerSettings.specs():
        arg = WorkerSettings.specs()[field].arg
        if arg in given:
            assert getattr(config, field) == given[arg], field
        elif field == "controlled":
            assert config.controlled == ("adaptive" in given)
        elif field not in ("throttle_hold_seconds", "target", "idempotency_ttl_seconds"):
            assert getattr(config, field) == WorkerSettings.defaults()[field], field
    assert http.timeout_seconds == given["http_target"].get("timeout_seconds", 10.0)
    assert http.auth_header == given["http_target"].get("auth_header", "Authorization")
    # Nothing set that no one reads; nothing read that the deploy never sets.
    read = {spec.env for spec in (WorkerSettings.specs() | HttpTargetSettings.specs()).values()} | WIRING
    assert set(env) <= read


def test_every_setting_the_handler_reads_is_set_by_some_stack() -> None:
    set_somewhere = set().union(*(worker_env(kind) for kind in STACKS))
    read = {spec.env for spec in (WorkerSettings.specs() | HttpTargetSettings.specs()).values()} | WIRING
    unset = read - set_somewhere
    # Credentials by reference: the component sets each only when that reference is given.
    by_reference = {
        contract.ENV_HTTP_SECRET_ARN,
        contract.ENV_HTTP_SSM_PARAMETER,
        contract.ENV_RESULTS_BUCKET,
    }
    assert unset <= by_reference


def test_the_component_and_the_handler_default_alike() -> None:
    plan = check_worker_args("w", {"priorities": ["HIGH"], "concurrency": 2, "http_target": HTTP})
    assert plan.runtime == WorkerSettings()
    handler = WorkerConfig.from_env(
        {
            contract.ENV_QUEUES: '[{"priority": "HIGH", "url": "u", "arn": "a", "dlq_url": "d"}]',
            contract.ENV_IDEMPOTENCY_TABLE: "t",
            contract.ENV_TICKET_QUEUE_URL: "q",
        }
    )
    assert {f: getattr(handler, f) for f in WorkerSettings.specs()} == WorkerSettings().values()


@pytest.mark.parametrize(
    ("field", "spec"),
    [(f, s) for f, s in sorted(WorkerSettings.specs().items()) if s.kind is not str or s.choices],
)
def test_the_component_and_the_handler_refuse_the_same_values(field: str, spec: Any) -> None:
    outside = ["unknown"] if spec.choices else ["yes"] if spec.kind is bool else _just_outside(spec)
    for value in outside:
        env = {
            contract.ENV_QUEUES: '[{"priority": "HIGH", "url": "u", "arn": "a", "dlq_url": "d"}]',
            contract.ENV_IDEMPOTENCY_TABLE: "t",
            contract.ENV_TICKET_QUEUE_URL: "q",
            spec.env: str(value),
        }
        with pytest.raises(WorkerConfigError, match=spec.env):
            WorkerConfig.from_env(env)
        if spec.arg is not None:
            args = {"priorities": ["HIGH"], "concurrency": 2, "http_target": HTTP, spec.arg: value}
            with pytest.raises(SluiceConfigError, match=re.escape(spec.arg)):
                check_worker_args("w", args)


def _just_outside(spec: Any) -> list[float]:
    step = 1 if spec.kind is int else 0.01
    values = []
    if spec.low is not None:
        values.append(spec.low if spec.above else spec.low - step)
    if spec.high is not None:
        values.append(spec.high + step)
    return [spec.kind(v) for v in values]


DEFAULT = re.compile(r"Default (?:none|([-\w.]+))")


def _documented_defaults(args: type) -> dict[str, str]:
    """`Default X.` from each arg's docstring, read as Pulumi's schema reads them."""
    source = Path(__import__(args.__module__, fromlist=["_"]).__file__).read_text()
    tree = ast.parse(source)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == args.__name__)
    found: dict[str, str] = {}
    body = node.body
    for annotation, doc in itertools.pairwise(body):
        if not (isinstance(annotation, ast.AnnAssign) and isinstance(annotation.target, ast.Name)):
            continue
        text = doc.value.value if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) else None
        match = DEFAULT.search(text) if isinstance(text, str) else None
        if match:
            found[annotation.target.id] = match.group(1) or "none"
    return found


@pytest.mark.parametrize("args", [ThrottledFanOutArgs, PriorityWorkerArgs])
def test_each_documented_default_is_the_settings_default(args: type) -> None:
    documented = _documented_defaults(args)
    checked = 0
    for field, spec in WorkerSettings.specs().items():
        if spec.arg in documented:
            default = WorkerSettings.defaults()[field]
            if field == "idempotency_ttl_seconds":
                continue  # "4 days": checked below
            shown = "none" if default is None else _plain(default)
            assert documented[spec.arg].rstrip(".") == shown, spec.arg
            checked += 1
    assert checked >= 6
    assert WorkerSettings.defaults()["idempotency_ttl_seconds"] == 4 * 86_400


def test_the_http_targets_documented_defaults_are_its_settings() -> None:
    documented = _documented_defaults(HttpTargetArgs)
    defaults = HttpTargetSettings.defaults()
    assert documented["timeout_seconds"].rstrip(".") == _plain(defaults["timeout_seconds"])
    assert documented["auth_header"].rstrip(".") == defaults["auth_header"]


def _plain(value: Any) -> str:
    return f"{int(value)}" if isinstance(value, float) and value.is_integer() else f"{value}"


def test_the_range_is_said_the_way_the_errors_say_it() -> None:
    specs = WorkerSettings.specs()
    assert bounds(specs["max_attempts"]) == "between 1 and 100"
    assert bounds(specs["calls_per_second"]) == "> 0 and at most 1000"
    assert bounds(specs["throttle_hold_seconds"]) == ">= 0"


def _table_defaults(page: str) -> dict[str, str]:
    """Key -> default cell of a docs page's table (`a` / `b` rows split in step)."""
    text = (ROOT / "docs" / page).read_text()
    found: dict[str, str] = {}
    for row in text.splitlines():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        keys = re.findall(r"`([A-Za-z]+)`", cells[0])
        defaults = cells[1].split(" / ")
        for key, default in zip(
            keys, defaults if len(defaults) == len(keys) else [cells[1]] * len(keys), strict=True
        ):
            found[key] = default.strip("`")
    return found


def test_the_configuration_table_states_the_settings_defaults() -> None:
    table = _table_defaults("configuration.md")
    checked = 0
    for spec, default in [
        *((s, WorkerSettings.defaults()[f]) for f, s in WorkerSettings.specs().items()),
        *((s, HttpTargetSettings.defaults()[f]) for f, s in HttpTargetSettings.specs().items()),
    ]:
        if spec.arg is None:
            continue
        cell = table[config_key(spec.arg).removeprefix("sluice:")]
        if default is None:
            assert cell.startswith("\u2013"), spec.arg  # an en dash: no default
        elif spec.arg == "idempotency_ttl_seconds":
            assert cell.startswith("4 days")
            assert default == 4 * 86_400
        else:
            assert cell == _plain(default), spec.arg
        checked += 1
    assert checked >= 10


ADAPTIVE_FIELDS = {
    "throttleThreshold": ("limit", "throttle_threshold"),
    "errorThreshold": ("limit", "error_threshold"),
    "latencyTolerance": ("limit", "latency_tolerance"),
    "minCalls": ("limit", "min_calls"),
    "probeIntervals": ("limit", "probe_intervals"),
    "breakerErrorThreshold": ("breaker", "error_threshold"),
    "breakerOpenSeconds": ("breaker", "open_seconds"),
    "breakerMinCalls": ("breaker", "min_calls"),
}
"""docs/adaptive.md's keys whose defaults are the controller's rule's own."""


def test_the_adaptive_defaults_are_the_controllers_own() -> None:
    table = _table_defaults("adaptive.md")
    rule = {"limit": ControllerSettings(), "breaker": BreakerSettings()}
    for key, (which, field) in ADAPTIVE_FIELDS.items():
        assert table[key] == _plain(getattr(rule[which], field)), key
    # The component fills the breaker's defaults in itself; they must be the rule's.
    document = build_controller_settings(
        check_adaptive_args("T", "n", {}, concurrency=4, callback_timeout_seconds=None)
    )
    breaker = BreakerSettings(**document["breaker"])
    assert (breaker.error_threshold, breaker.min_calls, breaker.open_seconds) == (
        BreakerSettings().error_threshold,
        BreakerSettings().min_calls,
        BreakerSettings().open_seconds,
    )
    assert document["max_limit"] == 4
