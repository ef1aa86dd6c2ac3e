"""Parsing the message the state machine puts on a priority queue. Pure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sluice_fanout.handlers.contract import (
    ERROR_MALFORMED,
    ERROR_UNKNOWN_PRIORITY,
    FIELD_EXECUTION,
    FIELD_INDEX,
    FIELD_ITEM,
    FIELD_PRIORITY,
    FIELD_TOKEN,
)

if TYPE_CHECKING:
    from collections.abc import Sequence


@dataclass(frozen=True)
class WorkMessage:
    """One item waiting for the legacy API, with the token that resumes its execution."""

    token: str
    item: Any
    index: int
    priority: str
    execution: str


class MalformedMessage(Exception):  # noqa: N818 - reads as the thing it reports, like AWS's own names
    """The message cannot be worked. `token` is set when the execution can still be told."""

    def __init__(self, reason: str, *, token: str | None, error: str = ERROR_MALFORMED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.token = token
        self.error = error


def parse_message(body: str, priorities: Sequence[str]) -> WorkMessage:
    """Parse and check a queue message body; raise MalformedMessage saying what is wrong."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, TypeError) as exc:
        raise MalformedMessage(f"body is not JSON: {exc}", token=None) from exc
    if not isinstance(data, dict):
        raise MalformedMessage(f"body must be a JSON object, got {type(data).__name__}", token=None)
    token = data.get(FIELD_TOKEN)
    if not isinstance(token, str) or not token:
        raise MalformedMessage(f"body has no task token in {FIELD_TOKEN!r}", token=None)
    if FIELD_ITEM not in data:
        raise MalformedMessage(f"body has no {FIELD_ITEM!r}", token=token)
    index = data.get(FIELD_INDEX)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise MalformedMessage(f"{FIELD_INDEX!r} must be a non-negative integer, got {index!r}", token=token)
    priority = data.get(FIELD_PRIORITY)
    if not isinstance(priority, str) or priority not in priorities:
        raise MalformedMessage(
            f"priority {priority!r} is not one of {list(priorities)!r}",
            token=token,
            error=ERROR_UNKNOWN_PRIORITY,
        )
    execution = data.get(FIELD_EXECUTION, "")
    if not isinstance(execution, str):
        raise MalformedMessage(f"{FIELD_EXECUTION!r} must be a string, got {execution!r}", token=token)
    return WorkMessage(
        token=token, item=data[FIELD_ITEM], index=index, priority=priority, execution=execution
    )


def execution_and_index(body: str) -> tuple[str, int] | None:
    """Which batch item a message is about, if its body says so (even one that is malformed
    otherwise): what its failure or dead-lettering is recorded under."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(data, dict):
        return None
    execution, index = data.get(FIELD_EXECUTION), data.get(FIELD_INDEX)
    if not isinstance(execution, str) or not execution:
        return None
    return (
        (execution, index) if isinstance(index, int) and not isinstance(index, bool) and index >= 0 else None
    )
