"""Order: a batch larger than the Distributed Map's concurrency, sorted by priority first."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

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
    # One object per execution (its name is unique per state machine): a retried invocation
    # writes the same bytes to the same key.
    key = f"{ORDERED_PREFIX}{event['execution']}.json"
    s3().put_object(
        Bucket=settings.bucket,
        Key=key,
        Body=json.dumps(ordered, separators=(",", ":")).encode(),
        ContentType="application/json",
    )
    return {"bucket": settings.bucket, "key": key, "count": len(ordered)}


@lru_cache(maxsize=1)
def _s3() -> S3Client:
    import boto3  # noqa: PLC0415 - deferred so importing this module makes no AWS client

    return boto3.client("s3")


@lru_cache(maxsize=1)
def _settings() -> OrderSettings:
    return OrderSettings.from_env(dict(os.environ))


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:  # noqa: ARG001 - Lambda signature
    return handle(event, _settings(), _s3)
