"""Aggregation totals equal the inputs, for any mix of statuses, priorities and junk."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sluice_fanout.handlers.aggregate import MAX_FAILURES_LISTED, Tally, aggregate
from sluice_fanout.handlers.contract import DIRECT_PATH

PRIORITIES = ["HIGH", "NORMAL", "BATCH"]

structured = st.builds(
    lambda status, priority, index: {
        "status": status,
        "index": index,
        **({"priority": priority} if priority else {"path": DIRECT_PATH}),
        **({"result": {}} if status == "SUCCEEDED" else {"error": {"Error": "E", "Cause": "C"}}),
    },
    st.sampled_from(["SUCCEEDED", "FAILED"]),
    st.sampled_from([*PRIORITIES, None]),
    st.integers(min_value=0, max_value=10**6),
)
# What a failed Distributed Map child can leave behind instead of a structured result.
junk = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.just({"status": "WEIRD"}))
results_lists = st.lists(st.one_of(structured, junk), max_size=300)
# Enough failures that the bounded list must choose which to keep.
many_failures = st.lists(st.one_of(structured, junk), min_size=MAX_FAILURES_LISTED, max_size=400)


@given(results_lists)
def test_totals_equal_inputs(results: list[Any]) -> None:
    summary = aggregate(results)
    assert summary["total"] == len(results)
    assert summary["succeeded"] + summary["failed"] == len(results)
    assert sum(g["total"] for g in summary["by_priority"].values()) == len(results)
    for group in summary["by_priority"].values():
        assert group["succeeded"] + group["failed"] == group["total"]
    expected_ok = sum(1 for r in results if isinstance(r, dict) and r.get("status") == "SUCCEEDED")
    assert summary["succeeded"] == expected_ok


@given(results_lists)
def test_every_failure_is_listed_or_counted(results: list[Any]) -> None:
    summary = aggregate(results)
    assert len(summary["failures"]) <= MAX_FAILURES_LISTED
    assert len(summary["failures"]) + summary["failures_not_listed"] == summary["failed"]
    assert all(isinstance(f["error"], str) and f["error"] for f in summary["failures"])
    assert all(isinstance(f["cause"], str) for f in summary["failures"])


@given(many_failures, st.randoms(use_true_random=False))
def test_results_counted_in_any_order_give_the_summary_of_batch_order(results: list[Any], rng: Any) -> None:
    """ResultWriter files come in any order; the summary (first failures by position) must not."""
    in_order = aggregate(results)
    shuffled = list(enumerate(results))
    rng.shuffle(shuffled)
    tally = Tally()
    for position, entry in shuffled:
        tally.add(position, entry)
    assert tally.summary() == in_order
    failed_positions = [
        p for p, r in enumerate(results) if not (isinstance(r, dict) and r.get("status") == "SUCCEEDED")
    ]
    listed = [f["index"] for f in in_order["failures"]]
    expected = [
        results[p]["index"] if isinstance(results[p], dict) and "index" in results[p] else p
        for p in failed_positions[:MAX_FAILURES_LISTED]
    ]
    assert listed == expected
