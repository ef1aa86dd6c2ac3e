"""The schema other languages get for ThrottledFanOut through `pulumi package add <repo>/provider`.

The schema comes from the provider the plugin serves (sluice_fanout.plugin): the SDK's Analyzer
and generate_schema, as component_provider_host runs them. Expected names and descriptions are
read from ThrottledFanOutArgs, HttpTargetArgs and ThrottledFanOut themselves, so an arg or output
added without a docstring fails here. No gRPC server is started. What this cannot prove (no
Pulumi CLI here): that the CLI installs the plugin's venv and launches it, the SDK it generates
per language, and a consumer program's deployment.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import runpy
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any

import pulumi
import pulumi.provider
import pytest
import yaml

from sluice_fanout import plugin
from sluice_fanout.components.adaptive_controller import AdaptiveArgs
from sluice_fanout.components.priority_worker import HttpTargetArgs
from sluice_fanout.components.throttled_fan_out import ThrottledFanOut, ThrottledFanOutArgs
from tests.support.mocks import run_program

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "sluice:index:ThrottledFanOut"
HTTP_TYPE = "sluice:index:HttpTargetArgs"
ADAPTIVE_TYPE = "sluice:index:AdaptiveArgs"
OUTPUTS = (
    "state_machine_arn",
    "queue_urls",
    "dlq_urls",
    "worker_function_name",
    "results_bucket",
    "idempotency_table_name",
    "dashboard_name",
    "alarm_arns",
    "controller_function_name",
)
OPTIONAL_OUTPUTS = {"dashboard_name", "controller_function_name"}
"""Declared `pulumi.Output[...] | None`: absent when its feature is turned off."""
SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean"}
# How each non-scalar arg is offered; `plain` is what the component needs as a plain value.
NON_SCALAR_INPUTS: dict[str, dict[str, Any]] = {
    "priorities": {"type": "array", "items": {"type": "string", "plain": True}, "plain": True},
    "httpTarget": {"$ref": f"#/types/{HTTP_TYPE}", "plain": True},
    "adaptive": {"$ref": f"#/types/{ADAPTIVE_TYPE}", "plain": True},
    "throttleRule": {
        "type": "object",
        "additionalProperties": {"$ref": "pulumi.json#/Any", "plain": True},
        "plain": True,
    },
    "waitObjectives": {
        "type": "object",
        "additionalProperties": {"type": "integer", "plain": True},
        "plain": True,
    },
    "keys": {
        "type": "object",
        "additionalProperties": {"$ref": "pulumi.json#/Any", "plain": True},
        "plain": True,
    },
    # Inputs: may be another resource's output in the consumer's program.
    "directFunctionArn": {"type": "string"},
    "inputBucketArns": {"type": "array", "items": {"type": "string"}, "plain": True},
}


def camel(name: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)


def field_docstrings(cls: type) -> dict[str, str]:
    """Each annotated attribute's docstring, read from the class source (absent when missing)."""
    body = ast.parse(inspect.getsource(cls)).body[0]
    assert isinstance(body, ast.ClassDef)
    docs = {}
    for stmt, after in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = after.value.value
    return docs


def without_descriptions(prop: dict[str, Any]) -> dict[str, Any]:
    return {
        k: without_descriptions(v) if isinstance(v, dict) else v
        for k, v in prop.items()
        if k != "description"
    }


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(plugin.provider().schema)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def resource(schema: dict[str, Any]) -> dict[str, Any]:
    return schema["resources"][TOKEN]  # type: ignore[no-any-return]


def test_package_offers_throttled_fan_out_as_a_component(schema: dict[str, Any]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert (schema["name"], schema["version"]) == ("sluice", project["version"])
    assert list(schema["resources"]) == [TOKEN]
    assert schema["resources"][TOKEN]["isComponent"] is True
    assert schema["resources"][TOKEN]["description"] == ThrottledFanOut.__doc__
    assert sorted(schema["types"]) == [ADAPTIVE_TYPE, HTTP_TYPE]


def test_every_arg_is_an_input_described_by_its_docstring(resource: dict[str, Any]) -> None:
    docs = field_docstrings(ThrottledFanOutArgs)
    expected = {camel(arg): docs.get(arg) for arg in ThrottledFanOutArgs.__annotations__}
    described = {name: prop.get("description") for name, prop in resource["inputProperties"].items()}
    assert described == expected
    assert [name for name, doc in described.items() if not doc] == []


def test_only_concurrency_is_required(resource: dict[str, Any]) -> None:
    assert resource["requiredInputs"] == ["concurrency"]
    assert ThrottledFanOutArgs.__required_keys__ == {"concurrency"}


def test_input_types(resource: dict[str, Any]) -> None:
    # get_type_hints cannot resolve pulumi.Input's forward reference; unwrap NotRequired by hand.
    hints = {
        arg: typing.get_args(hint)[0] if typing.get_origin(hint) is typing.NotRequired else hint
        for arg, hint in ThrottledFanOutArgs.__annotations__.items()
    }
    expected = {
        camel(arg): NON_SCALAR_INPUTS.get(camel(arg)) or {"type": SCALARS[hint], "plain": True}
        for arg, hint in hints.items()
    }
    actual = {name: without_descriptions(prop) for name, prop in resource["inputProperties"].items()}
    assert actual == expected


def test_http_target_is_a_type_with_described_properties(schema: dict[str, Any]) -> None:
    http = schema["types"][HTTP_TYPE]
    docs = field_docstrings(HttpTargetArgs)
    assert http["type"] == "object"
    assert {name: prop.get("description") for name, prop in http["properties"].items()} == {
        camel(arg): docs.get(arg) for arg in HttpTargetArgs.__annotations__
    }
    assert all(docs.get(arg) for arg in HttpTargetArgs.__annotations__)
    assert http["required"] == ["url"]
    assert {name: without_descriptions(prop) for name, prop in http["properties"].items()} == {
        "url": {"type": "string"},
        "timeoutSeconds": {"type": "number", "plain": True},
        "secretArn": {"type": "string"},
        "ssmParameterArn": {"type": "string"},
        "ssmParameterName": {"type": "string"},
        "authHeader": {"type": "string", "plain": True},
    }


def test_adaptive_is_a_type_with_described_plain_properties(schema: dict[str, Any]) -> None:
    adaptive = schema["types"][ADAPTIVE_TYPE]
    docs = field_docstrings(AdaptiveArgs)
    assert adaptive["type"] == "object"
    assert {name: prop.get("description") for name, prop in adaptive["properties"].items()} == {
        camel(arg): docs.get(arg) for arg in AdaptiveArgs.__annotations__
    }
    assert all(docs.get(arg) for arg in AdaptiveArgs.__annotations__)
    assert "required" not in adaptive  # every field has a default
    kinds = {"integer": int, "number": float, "boolean": bool}
    assert {name: without_descriptions(prop) for name, prop in adaptive["properties"].items()} == {
        camel(arg): {
            "type": next(k for k, t in kinds.items() if t is typing.get_args(hint)[0]),
            "plain": True,
        }
        for arg, hint in AdaptiveArgs.__annotations__.items()
    }


def test_every_output_has_its_type_and_docstring(resource: dict[str, Any]) -> None:
    declared = [name for name in ThrottledFanOut.__annotations__ if not name.startswith("_")]
    assert set(OUTPUTS) <= set(declared)
    docs = field_docstrings(ThrottledFanOut)
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    shapes = {"queue_urls": string_map, "dlq_urls": string_map, "alarm_arns": string_map}
    outputs = resource["properties"]
    assert {name: prop.get("description") for name, prop in outputs.items()} == {
        camel(name): docs.get(name) for name in declared
    }
    assert {name: without_descriptions(prop) for name, prop in outputs.items()} == {
        camel(name): shapes.get(name, {"type": "string"}) for name in declared
    }
    assert [name for name in declared if not docs.get(name)] == []
    assert sorted(resource["required"]) == sorted(camel(n) for n in declared if n not in OPTIONAL_OUTPUTS)


def test_whole_numbers_from_other_languages_arrive_as_int() -> None:
    provider = plugin.provider()
    definition = provider._component_defs["ThrottledFanOut"]
    mapped = provider.map_inputs(
        {
            "concurrency": 4.0,
            "maxAttempts": 2.5,
            "httpTarget": {"url": "u", "timeoutSeconds": 3.0},
            "adaptive": {"minConcurrency": 2.0, "throttleThreshold": 0.1},
        },
        definition,
    )
    assert mapped == {
        "concurrency": 4,
        "max_attempts": 2.5,
        "http_target": {"url": "u", "timeout_seconds": 3.0},
        "adaptive": {"min_concurrency": 2, "throttle_threshold": 0.1},
    }
    assert type(mapped["concurrency"]) is int
    assert type(mapped["adaptive"]["min_concurrency"]) is int
    # A fraction stays a float, for the component to refuse rather than truncate.
    assert type(mapped["max_attempts"]) is float


def test_sdk_still_delivers_whole_numbers_as_float() -> None:
    """Why SluiceProvider exists: when this fails, the SDK converts by itself and
    SluiceProvider.map_input_properties can go."""
    provider = plugin.provider()
    definition = provider._component_defs["ThrottledFanOut"]
    base = super(plugin.SluiceProvider, provider)
    mapped = base.map_input_properties(
        {"concurrency": 4.0}, definition.inputs, definition.inputs_mapping, "ThrottledFanOut", ""
    )
    assert type(mapped["concurrency"]) is float


@pytest.mark.parametrize("adaptive", [False, True])
def test_construct_from_another_language_builds_the_component(adaptive: bool) -> None:
    """What a YAML program's `concurrency: 4` and `httpTarget: {url: ...}` become: the component
    with its children, and state under the schema's output names (an optional output that is
    None is left out of the state)."""
    state: dict[str, Any] = {}
    inputs: dict[str, Any] = {"concurrency": 4.0, "httpTarget": {"url": "https://erp.example/api"}}
    if adaptive:
        inputs["adaptive"] = {"minConcurrency": 2.0, "intervalSeconds": 5.0}

    def program() -> None:
        result = plugin.provider().construct("orders", TOKEN, inputs)
        state.update(result.state)

    recorder = run_program(program)
    expected = [n for n in OUTPUTS if adaptive or n != "controller_function_name"]
    assert sorted(state) == sorted(camel(name) for name in expected)
    assert [r.name for r in recorder.resources if r.typ == TOKEN] == ["orders"]
    types = {r.typ for r in recorder.resources}
    assert types >= {
        "sluice:index:PriorityQueues",
        "sluice:index:FanOutWorkflow",
        "sluice:index:PriorityWorker",
    }
    assert ("sluice:index:AdaptiveController" in types) is adaptive


def test_plugin_manifest_sits_with_its_own_entry_point() -> None:
    manifest = yaml.safe_load((ROOT / "provider" / "PulumiPlugin.yaml").read_text())
    assert manifest["runtime"]["name"] == "python"
    assert (ROOT / "provider" / "__main__.py").is_file()
    # The root's __main__.py is the stack program: a manifest there would run it as the plugin.
    assert not (ROOT / "PulumiPlugin.yaml").exists()
    assert (ROOT / "provider" / "requirements.txt").read_text().splitlines()[-1] == "-r ../requirements.txt"


def test_entry_point_names_the_package_without_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[Any] = []
    monkeypatch.setattr(pulumi.provider, "main", lambda *a: served.append(a))
    monkeypatch.setattr(sys, "path", list(sys.path))
    entry = runpy.run_path(str(ROOT / "provider" / "__main__.py"), run_name="sluice_plugin_entry")
    assert entry["PACKAGE_NAME"] == "sluice"
    assert entry["COMPONENTS"] == [ThrottledFanOut]
    assert served == []


def test_entry_point_run_as_the_language_host_does_serves_sluice(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python provider/ <engine address>`, with the gRPC server replaced by a recorder."""
    served: list[tuple[Any, list[str]]] = []
    monkeypatch.setattr(pulumi.provider, "main", lambda provider, args: served.append((provider, args)))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "argv", ["provider", "127.0.0.1:12345"])
    runpy.run_path(str(ROOT / "provider"), run_name="__main__")
    [(provider, args)] = served
    assert isinstance(provider, plugin.SluiceProvider)
    assert args == ["127.0.0.1:12345"]
    assert json.loads(provider.schema)["name"] == "sluice"
    assert list(provider._components.values()) == [ThrottledFanOut]
