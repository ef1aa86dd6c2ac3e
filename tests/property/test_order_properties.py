"""The order function's sort, for any batch: a stable permutation, highest priority first."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sluice_fanout.handlers.order import order

PRIORITIES = ["HIGH", "NORMAL", "BATCH"]
DEFAULT = "BATCH"

items = st.lists(
    st.one_of(
        st.builds(lambda p, n: {"priority": p, "n": n}, st.sampled_from(PRIORITIES), st.integers()),
        st.builds(lambda n: {"n": n}, st.integers()),  # no priority: ordered as the default
        st.builds(lambda p: {"priority": p}, st.one_of(st.text(max_size=4), st.none(), st.integers())),
        st.one_of(st.none(), st.integers(), st.text(max_size=4)),  # not an object at all
    ),
    max_size=400,
)


def rank(item: Any) -> int:
    """The order the docstring promises: unknown priorities, then HIGH, NORMAL, BATCH."""
    priority = item.get("priority", DEFAULT) if isinstance(item, dict) else DEFAULT
    return PRIORITIES.index(priority) + 1 if priority in PRIORITIES else 0


@given(items)
def test_every_item_once_with_its_own_index(batch: list[Any]) -> None:
    ordered = order(batch, PRIORITIES, DEFAULT)
    assert sorted(entry["index"] for entry in ordered) == list(range(len(batch)))
    assert all(entry["item"] == batch[entry["index"]] for entry in ordered)


@given(items)
def test_higher_priority_first_and_batch_order_within_a_priority(batch: list[Any]) -> None:
    keys = [(rank(entry["item"]), entry["index"]) for entry in order(batch, PRIORITIES, DEFAULT)]
    assert keys == sorted(keys)
