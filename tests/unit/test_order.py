"""The order function: what it reads, what it refuses, what it writes."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest

from sluice_fanout.handlers import contract
from sluice_fanout.handlers.order import BatchSourceError, OrderSettings, handle, order

SETTINGS = OrderSettings(bucket="results", priorities=["HIGH", "NORMAL", "BATCH"], default_priority="NORMAL")


class FakeS3:
    """The two calls the order function makes, on a dict of objects."""

    def __init__(self, objects: dict[tuple[str, str], bytes] | None = None) -> None:
        self.objects = dict(objects or {})

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803 - boto3's names
        return {"Body": io.BytesIO(self.objects[Bucket, Key])}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, ContentType: str) -> None:  # noqa: N803
        assert ContentType == "application/json"
        self.objects[Bucket, Key] = Body


def test_an_item_without_a_priority_is_ordered_as_the_default_priority() -> None:
    batch = [
        {"id": "b", "priority": "BATCH"},
        {"id": "d"},
        {"id": "n", "priority": "NORMAL"},
        {"id": "h", "priority": "HIGH"},
    ]
    assert [(e["index"], e["item"]["id"]) for e in order(batch, SETTINGS.priorities, "NORMAL")] == [
        (3, "h"),
        (1, "d"),
        (2, "n"),
        (0, "b"),
    ]


def test_an_unknown_priority_goes_first_where_its_child_fails_at_once() -> None:
    batch = [{"priority": "BATCH"}, {"priority": "URGENT"}, {"priority": "HIGH"}]
    assert [e["index"] for e in order(batch, SETTINGS.priorities, "BATCH")] == [1, 2, 0]


def test_an_s3_batch_is_copied_sorted_under_the_executions_name() -> None:
    items = [{"priority": "BATCH"}, {"priority": "HIGH"}]
    s3 = FakeS3({("inputs", "batch.json"): json.dumps(items).encode()})
    event = {"batch": {"source": {"bucket": "inputs", "key": "batch.json"}}, "execution": "run-1"}
    assert handle(event, SETTINGS, lambda: s3) == {  # type: ignore[arg-type, return-value]
        "bucket": "results",
        "key": f"{contract.ORDERED_PREFIX}run-1.json",
        "count": 2,
    }
    assert json.loads(s3.objects["results", "ordered/run-1.json"]) == [
        {"index": 1, "item": {"priority": "HIGH"}},
        {"index": 0, "item": {"priority": "BATCH"}},
    ]


def test_an_inline_batch_needs_no_read() -> None:
    s3 = FakeS3()
    event = {"batch": {"items": [{"priority": "NORMAL"}, {"priority": "HIGH"}]}, "execution": "run-2"}
    assert handle(event, SETTINGS, lambda: s3)["count"] == 2  # type: ignore[arg-type, return-value]
    assert [e["index"] for e in json.loads(s3.objects["results", "ordered/run-2.json"])] == [1, 0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"items": []}',
            "s3://inputs/batch.json holds a JSON dict, not an array; upload the batch as one JSON array",
        ),
        (b"[1, 2", "s3://inputs/batch.json is not JSON"),
    ],
)
def test_a_source_that_is_not_a_json_array_is_refused_by_name(body: bytes, message: str) -> None:
    s3 = FakeS3({("inputs", "batch.json"): body})
    event = {"batch": {"source": {"bucket": "inputs", "key": "batch.json"}}, "execution": "run-3"}
    with pytest.raises(BatchSourceError, match=re.escape(message)):
        handle(event, SETTINGS, lambda: s3)  # type: ignore[arg-type, return-value]
    assert ("results", "ordered/run-3.json") not in s3.objects  # nothing half-written


def test_an_input_that_names_no_batch_is_refused_showing_it() -> None:
    with pytest.raises(BatchSourceError, match=re.escape('got {"source": "s3://inputs/batch.json"}')):
        handle({"batch": {"source": "s3://inputs/batch.json"}, "execution": "x"}, SETTINGS, FakeS3)  # type: ignore[arg-type]


def test_settings_come_from_the_environment_the_component_sets() -> None:
    env = {
        contract.ENV_ORDER_BUCKET: "results",
        contract.ENV_ORDER_PRIORITIES: '["HIGH", "NORMAL", "BATCH"]',
        contract.ENV_ORDER_DEFAULT_PRIORITY: "NORMAL",
    }
    assert OrderSettings.from_env(env) == SETTINGS
