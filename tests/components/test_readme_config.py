"""The configuration table (docs/configuration.md, linked from the README) is the stack's real
configuration: every key in it is read by __main__.py, every key __main__.py reads is in it, and
every ThrottledFanOut arg has one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from sluice_fanout.components import ThrottledFanOutArgs
from sluice_fanout.handlers.settings import config_key

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = ROOT / "docs" / "configuration.md"


def table_keys() -> set[str]:
    page = CONFIGURATION.read_text()
    section = page.split("\n| key | default | meaning |\n", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {key for row in rows for key in re.findall(r"`([A-Za-z]+)`", row.split("|")[1])}


def program_keys() -> set[str]:
    """Every `sluice:` key __main__.py reads, from its arg lists and literal config calls."""
    tree = ast.parse((ROOT / "__main__.py").read_text())
    keys: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.endswith("_ARGS") and isinstance(node.value, ast.Tuple):
                keys |= {config_key(e.value).removeprefix("sluice:") for e in node.value.elts}  # type: ignore[attr-defined]
            elif name == "HTTP_KEYS" and isinstance(node.value, ast.Dict):
                keys |= {v.value for v in node.value.values}  # type: ignore[union-attr]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith(("get", "require"))
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            keys.add(node.args[0].value)
    return keys


def test_the_table_lists_exactly_the_keys_the_program_reads() -> None:
    listed, read = table_keys(), program_keys()
    assert listed - read == set(), "in docs/configuration.md but never read"
    assert read - listed == set(), "read but missing from docs/configuration.md"


def test_every_component_arg_can_be_set_from_config() -> None:
    args = set(ThrottledFanOutArgs.__annotations__) - {"http_target"}  # nested: the http* keys
    assert {config_key(a).removeprefix("sluice:") for a in args} - program_keys() == set()


def test_the_table_parser_sees_the_rows() -> None:
    assert {"concurrency", "httpSecretArn", "httpSsmParameterName", "idempotencyTtlSeconds"} <= table_keys()
