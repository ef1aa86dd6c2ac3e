"""The stack's `keys` setting (fair.KeysSettings): what it accepts, what it refuses and how it
says so, and the rule each key gets."""

from __future__ import annotations

import json

import pytest

from sluice_fanout.handlers.fair import KeyRule, KeyRuleError, KeysSettings

PRIORITIES = ["HIGH", "NORMAL", "BATCH"]


def test_a_full_setting_gives_each_key_its_rule() -> None:
    keys = KeysSettings.parse(
        {
            "field": "tenant",
            "weights": {"acme": 3},
            "concurrency": 4,
            "concurrency_per_key": {"acme": 2},
            "ordered_priorities": ["NORMAL"],
        },
        PRIORITIES,
    )
    assert keys.rule("acme", "BATCH") == KeyRule(weight=3, cap=2, ordered=False)
    assert keys.rule("other", "BATCH") == KeyRule(weight=1, cap=4)
    assert keys.rule("other", "NORMAL").limit == 1
    assert KeysSettings.parse(json.loads(keys.to_json()), PRIORITIES) == keys


def test_the_defaults() -> None:
    keys = KeysSettings.parse({}, PRIORITIES)
    assert keys.field == "key"
    assert keys.rule("any", "HIGH") == KeyRule()


def test_numbers_written_as_text_are_read_as_numbers() -> None:
    """`pulumi config set --path` stores them so."""
    keys = KeysSettings.parse(
        {"weights": {"a": "2.5"}, "concurrency_per_key": {"a": "3"}, "concurrency": "2"}, PRIORITIES
    )
    assert keys.rule("a", "BATCH") == KeyRule(weight=2.5, cap=3)
    assert keys.rule("b", "BATCH").cap == 2


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ("tenant", "must be an object"),
        ({"feild": "tenant"}, "unknown fields ['feild']"),
        ({"field": "tenant.id"}, "'tenant.id'"),
        ({"field": ""}, "plain field name"),
        ({"weights": {"acme": 0}}, "keys.weights['acme']: key weight must be > 0"),
        ({"weights": {"acme": "lots"}}, "'lots'"),
        ({"weights": ["acme"]}, "must map key names to values"),
        ({"concurrency_per_key": {"acme": 0}}, "keys.concurrency_per_key['acme']"),
        ({"concurrency_per_key": {"acme": 1.5}}, "whole number"),
        ({"concurrency": -1}, "keys.concurrency: key concurrency cap"),
        (
            {"ordered_priorities": ["URGENT"]},
            "some of the priorities ['HIGH', 'NORMAL', 'BATCH'], got ['URGENT']",
        ),
    ],
)
def test_a_bad_setting_is_refused_naming_the_value(raw: object, named: str) -> None:
    with pytest.raises(KeyRuleError) as raised:
        KeysSettings.parse(raw, PRIORITIES)
    assert named in str(raised.value)
