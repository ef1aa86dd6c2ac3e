"""Parsing queue messages: every malformed shape is refused with a reason, token kept if known."""

from __future__ import annotations

import json

import pytest

from sluice_fanout.handlers.contract import ERROR_MALFORMED, ERROR_UNKNOWN_PRIORITY
from sluice_fanout.handlers.messages import MalformedMessage, WorkMessage, parse_message

PRIORITIES = ["HIGH", "NORMAL", "BATCH"]
GOOD = {"token": "t-1", "item": {"id": 7}, "index": 3, "priority": "HIGH", "execution": "arn:x"}


def test_parses_a_good_message() -> None:
    assert parse_message(json.dumps(GOOD), PRIORITIES) == WorkMessage(
        token="t-1", item={"id": 7}, index=3, priority="HIGH", execution="arn:x"
    )


@pytest.mark.parametrize(
    ("body", "token", "error", "reason_part"),
    [
        ("not json", None, ERROR_MALFORMED, "not JSON"),
        ("[1, 2]", None, ERROR_MALFORMED, "JSON object"),
        (json.dumps({**GOOD, "token": ""}), None, ERROR_MALFORMED, "no task token"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "token"}), None, ERROR_MALFORMED, "no task token"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "item"}), "t-1", ERROR_MALFORMED, "'item'"),
        (json.dumps({**GOOD, "index": "3"}), "t-1", ERROR_MALFORMED, "'3'"),
        (json.dumps({**GOOD, "index": True}), "t-1", ERROR_MALFORMED, "True"),
        (json.dumps({**GOOD, "index": -1}), "t-1", ERROR_MALFORMED, "-1"),
        (json.dumps({**GOOD, "priority": "URGENT"}), "t-1", ERROR_UNKNOWN_PRIORITY, "'URGENT'"),
        (json.dumps({**GOOD, "priority": 1}), "t-1", ERROR_UNKNOWN_PRIORITY, "1"),
        (json.dumps({**GOOD, "execution": 5}), "t-1", ERROR_MALFORMED, "5"),
    ],
)
def test_refuses_malformed(body: str, token: str | None, error: str, reason_part: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        parse_message(body, PRIORITIES)
    assert caught.value.token == token
    assert caught.value.error == error
    assert reason_part in caught.value.reason
