"""Order: a batch larger than the Distributed Map's concurrency, sorted by priority first."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from sluice_fanout.handlers.contract import (
    ENV_ORDER_BUCKET,
    ENV_ORDER_DEFAULT_PRIORITY,
    ENV_ORDER_PRIORITIES,
    FIELD_INDEX,
    FIELD_ITEM,
    FIELD_PRIORITY,
    ORDERED_PREFIX,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from mypy_boto3_s3 import S3Client


class BatchSourceError(ValueError):
    """The batch is not where, or not what, the execution's input says."""


def order(items: Sequence[Any], priorities: Sequence[str], default_priority: str) -> list[dict[str, Any]]:
    """`{"index", "item"}` per item, highest priority first, batch order within a priority.

    Stable, O(n): one bucket per priority.

    An item without a priority is ordered with `default_priority` (where the state machine sends
    a throttled item that names none); one whose priority is not in `priorities` goes first,
    since its child fails at once (Sluice.UnknownPriority) and frees its slot.
    """
    rank = {p: n + 1 for n, p in enumerate(priorities)}
    buckets: list[list[dict[str, Any]]] = [[] for _ in range(len(priorities) + 1)]
    for index, item in enumerate(items):
        priority = item.get(FIELD_PRIORITY, default_priority) if isinstance(item, dict) else default_priority
        bucket = rank.get(priority, 0) if isinstance(priority, str) else 0
        buckets[bucket].append({FIELD_INDEX: index, FIELD_ITEM: item})
    return [entry for bucket in buckets for entry in bucket]


@dataclass(frozen=True)
class OrderSettings:
    bucket: str
    """Where the ordered copy goes (the results bucket, under ORDERED_PREFIX)."""
    priorities: list[str]
    default_priority: str

    @classmethod
    def from_env(cls, env: dict[str, str]) -> OrderSettings:
        return cls(
            bucket=env[ENV_ORDER_BUCKET],
            priorities=list(json.loads(env[ENV_ORDER_PRIORITIES])),
            default_priority=env[ENV_ORDER_DEFAULT_PRIORITY],
        )


def read_items(batch: Any, s3: Callable[[], S3Client]) -> list[Any]:
    """The items of a parent execution's input: inline `items`, or the JSON array `source` names."""
    if isinstance(batch, dict) and isinstance(batch.get("items"), list):
        return list(batch["items"])
    source = batch.get("source") if isinstance(batch, dict) else None
    if not (
        isinstance(source, dict)
        and isinstance(source.get("bucket"), str)
        and isinstance(source.get("key"), str)
    ):
        raise BatchSourceError(
            'the execution input must be {"items": [...]} or {"source": {"bucket": ..., "key": ...}}, '
            f"got {json.dumps(batch)[:200]}"
        )
    where = f"s3://{source['bucket']}/{source['key']}"
    body = s3().get_object(Bucket=source["bucket"], Key=source["key"])["Body"].read()
    try:
        items = json.loads(body)
    except ValueError as exc:
        raise BatchSourceError(f"{where} is not JSON ({exc}); upload the batch as one JSON array") from exc
    if not isinstance(items, list):
        raise BatchSourceError(
            f"{where} holds a JSON {type(items).__name__}, not an array; upload the batch as one JSON array"
        )
    return items


def handle(event: dict[str, Any], settings: OrderSettings, s3: Callable[[], S3Client]) -> dict[str, Any]:
    """Write the ordered copy of `event["batch"]` and return where it is.

    A Distributed Map opens its children in item order, `MaxConcurrency` at a time, so in a batch
    of 3,000 BATCH items followed by 20 HIGH ones the HIGH items are not even enqueued until about
    2,000 BATCH items are done: the queues can only prioritise what has reached them. So the Map
    reads this copy, sorted by priority, each entry carrying its original index; results, failures
    and the aggregate keep using the original indexes. The whole batch is held in memory once, as
    the Map's own ItemReader would hold it.
    """
    items = read_items(event.get("batch"), s3)
    ordered = order(items, settings.priorities, settings.default_priority)
    body, lookup = ordered_copy(ordered, len(items))
    # One object per execution (its name is unique per state machine): a retried invocation
    # writes the same bytes to the same key.
    key, lookup_key = ordered_keys(event["execution"])
    s3().put_object(Bucket=settings.bucket, Key=key, Body=body, ContentType="application/json")
    s3().put_object(
        Bucket=settings.bucket, Key=lookup_key, Body=lookup, ContentType="application/octet-stream"
    )
    return {"bucket": settings.bucket, "key": key, "count": len(ordered)}


def ordered_keys(execution_name: str) -> tuple[str, str]:
    """Where an execution's ordered copy and its lookup go in the results bucket."""
    return f"{ORDERED_PREFIX}{execution_name}.json", f"{ORDERED_PREFIX}{execution_name}.lookup"


LOOKUP_ENTRY = struct.Struct(">IQI")
"""One entry per original index, at index x its size: the entry's position in the ordered copy,
and its byte offset and length there."""


def ordered_copy(ordered: Sequence[dict[str, Any]], size: int) -> tuple[bytes, bytes]:
    """The ordered copy as one JSON array, and its lookup: with it `sluice explain` reads one item
    of a 100,000-item batch with two ranged GETs instead of the whole batch."""
    lookup = bytearray(LOOKUP_ENTRY.size * size)
    parts: list[bytes] = []
    offset = 1  # past the "["
    for position, entry in enumerate(ordered):
        part = json.dumps(entry, separators=(",", ":")).encode()
        LOOKUP_ENTRY.pack_into(lookup, LOOKUP_ENTRY.size * entry[FIELD_INDEX], position, offset, len(part))
        parts.append(part)
        offset += len(part) + 1  # and its ","
    return b"[" + b",".join(parts) + b"]", bytes(lookup)


@dataclass(frozen=True)
class Placed:
    """One item of an ordered batch, found by its index."""

    position: int
    """Its place in the order the Map opens the batch."""
    item: Any


def placed_item(s3: S3Client, bucket: str, execution_name: str, index: int) -> Placed | None:
    """Item `index` of an ordered batch from two ranged GETs (its lookup entry, then its bytes);
    None when the batch has no lookup (ordered before it was written) or no such index."""
    key, lookup_key = ordered_keys(execution_name)
    start = LOOKUP_ENTRY.size * index
    try:
        entry = s3.get_object(
            Bucket=bucket, Key=lookup_key, Range=f"bytes={start}-{start + LOOKUP_ENTRY.size - 1}"
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("InvalidRange", "NoSuchKey", "404"):
            return None
        raise
    raw = entry["Body"].read()
    if len(raw) != LOOKUP_ENTRY.size:
        return None
    position, offset, length = LOOKUP_ENTRY.unpack(raw)
    body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}")["Body"].read()
    return Placed(position, json.loads(body)[FIELD_ITEM])


@lru_cache(maxsize=1)
def _s3() -> S3Client:
    import boto3  # noqa: PLC0415 - deferred so importing this module makes no AWS client

    return boto3.client("s3")


@lru_cache(maxsize=1)
def _settings() -> OrderSettings:
    return OrderSettings.from_env(dict(os.environ))


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:  # noqa: ARG001 - Lambda signature
    return handle(event, _settings(), _s3)
