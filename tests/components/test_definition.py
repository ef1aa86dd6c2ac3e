"""The child workflow's paths and what each costs in billed state transitions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sluice_fanout.components.definition import build_item_processor

PRIORITIES = ["HIGH", "NORMAL", "BATCH"]


def processor(dispatch: str, direct_function: bool) -> dict[str, Any]:
    return build_item_processor(
        priorities=PRIORITIES,
        queue_urls={p: f"https://sqs/{p}" for p in PRIORITIES},
        throttle_rule={"Variable": "$.item.priority", "IsPresent": True},
        default_priority="BATCH",
        callback_timeout_seconds=60,
        direct_function_arn="arn:aws:lambda:us-east-1:1:function:direct" if direct_function else None,
        ticket_queue_url="https://sqs/tickets" if dispatch == "ticket" else None,
    )


def paths(states: dict[str, Any], name: str, seen: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every sequence of states an execution can enter from `name` to an end, Catch included."""
    assert name not in seen, f"loop through {name}"
    state = states[name]
    here = (*seen, name)
    targets = [c["Next"] for c in state.get("Choices", [])]
    targets += [state["Default"]] if "Default" in state else []
    targets += [c["Next"] for c in state.get("Catch", [])]
    targets += [state["Next"]] if "Next" in state else []
    if state.get("End"):
        yield here
    for target in dict.fromkeys(targets):
        yield from paths(states, target, here)


@pytest.mark.parametrize("direct_function", [False, True])
@pytest.mark.parametrize(("dispatch", "queued"), [("yield", 2), ("ticket", 3)])
def test_every_path_ends_within_its_transition_budget(
    dispatch: str, queued: int, direct_function: bool
) -> None:
    definition = processor(dispatch, direct_function)
    found: dict[str, int] = {}
    for path in paths(definition["States"], definition["StartAt"]):
        failed = path[-1].endswith("Failed") or path[-1].startswith("Failed")
        kind = (
            "unknown"
            if path[-1] == "UnknownPriority"
            else "direct"
            if path[1].startswith("Direct")
            else "queued"
        ) + (" failed" if failed else "")
        found[kind] = max(found.get(kind, 0), len(path))
    # A Distributed Map bills one transition per child started, and one per state entered.
    expected = {"direct": 2, "queued": queued, "queued failed": queued + 1, "unknown": 2}
    if direct_function:
        expected["direct failed"] = 3
    assert found == expected


def test_a_queued_item_ends_with_the_workers_result() -> None:
    states = processor("ticket", direct_function=True)["States"]
    for p in PRIORITIES:
        assert states[f"Ticket{p}"]["Next"] == f"Enqueue{p}"
        enqueue = states[f"Enqueue{p}"]
        # No ResultPath: the worker's result is the child's whole output.
        assert enqueue["End"] is True
        assert "ResultPath" not in enqueue
        assert "Next" not in enqueue
    assert states["Direct"]["ResultSelector"] == {
        "status": "SUCCEEDED",
        "path": "DIRECT",
        "result.$": "$.Payload",
    }
