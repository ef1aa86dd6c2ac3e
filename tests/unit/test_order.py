"""The order function: what it reads, what it refuses, what it writes."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import boto3
import pytest
from moto import mock_aws

from sluice_fanout.handlers import contract
from sluice_fanout.handlers.order import BatchSourceError, OrderSettings, Placed, handle, order, placed_item

PRIORITY_CYCLE = ("BATCH", "HIGH", None, "URGENT")

SETTINGS = OrderSettings(bucket="results", priorities=["HIGH", "NORMAL", "BATCH"], default_priority="NORMAL")


class FakeS3:
    """The two calls the order function makes, on a dict of objects."""

    def __init__(self, objects: dict[tuple[str, str], bytes] | None = None) -> None:
        self.objects = dict(objects or {})

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803 - boto3's names
        return {"Body": io.BytesIO(self.objects[Bucket, Key])}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, ContentType: str) -> None:  # noqa: N803
        assert ContentType == ("application/octet-stream" if Key.endswith(".lookup") else "application/json")
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


def test_one_item_of_an_ordered_batch_is_found_with_two_ranged_reads() -> None:
    """What `sluice explain` reads: the item's lookup entry, then the item's bytes, in real S3
    (moto) with Range; never the whole batch."""
    items = [{"id": f"o-{n}", "priority": PRIORITY_CYCLE[n % 4], "note": "é" * (n % 3)} for n in range(203)]
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="results")
        s3.create_bucket(Bucket="inputs")
        s3.put_object(Bucket="inputs", Key="batch.json", Body=json.dumps(items).encode())
        event = {"batch": {"source": {"bucket": "inputs", "key": "batch.json"}}, "execution": "run-2"}
        handle(event, SETTINGS, lambda: s3)
        ordered = order(items, SETTINGS.priorities, SETTINGS.default_priority)
        where = {entry["index"]: position for position, entry in enumerate(ordered)}
        reads: list[str | None] = []
        s3.meta.events.register(
            "provide-client-params.s3.GetObject", lambda params, **_: reads.append(params.get("Range"))
        )
        for index in (0, 1, 2, 3, 101, 202):
            assert placed_item(s3, "results", "run-2", index) == Placed(where[index], items[index])
        assert len(reads) == 12
        assert all(r is not None for r in reads)
        assert placed_item(s3, "results", "run-2", 203) is None  # past the end
        assert placed_item(s3, "results", "no-such-run", 0) is None  # ordered before lookups existed
