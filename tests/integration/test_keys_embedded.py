"""Keys end to end on the embedded AWS: the stack's `keys` setting deployed, keyed items waiting
in the keyed table through the state machine's real wait step, and the real worker picking them.

What this cannot prove: DynamoDB's index lag and per-partition limits (moto's indexes are
consistent at once), and the fair share at AWS's latencies (BENCHMARKS.md's fairness section).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from localcloud.legacy_api import ApiProfile, Call
from localcloud.runner import RunResult, run_scenario
from localcloud.scenario import Batch, Scenario
from sluice_fanout.handlers.contract import KEYED_INDEX_OFFSET
from tests.support.api_calls import most_at_once

pytestmark = pytest.mark.slow


def _items(tenant: Any, count: int, priority: str = "BATCH") -> tuple[dict[str, Any], ...]:
    return tuple({"id": f"{tenant}-{n}", "priority": priority, "tenant": tenant} for n in range(count))


KEYED = Scenario(
    name="keyed",
    batches=(
        Batch(
            start_s=0,
            counts={"BATCH": 3},  # unkeyed: today's path, beside the keyed ones
            items=_items("noisy", 40)
            + _items("capped", 6)
            # ord-2 is refused by the API (400): ord-3 and ord-4 must not overtake it.
            + tuple(item | {"reject": item["id"] == "ord-2"} for item in _items("ord", 5, "NORMAL"))
            + ({"id": "bad-key", "priority": "BATCH", "tenant": 7},),
        ),
        Batch(start_s=1, counts={}, items=_items("quiet", 4)),
    ),
    api=ApiProfile(concurrency_limit=4, service_time_s=0.1),
    stack_config={
        "sluice:keys": {
            "field": "tenant",
            "concurrencyPerKey": {"capped": 1},
            "orderedPriorities": ["NORMAL"],
        }
    },
    deadline_s=150,
)


@pytest.fixture(scope="module")
def keyed() -> RunResult:
    return run_scenario(KEYED)


def _calls_by_tenant(result: RunResult) -> dict[str, list[Call]]:
    tenant_of = {
        f"{record.arn}#{index}": item.get("tenant")
        for record in result.executions
        for index, item in enumerate(record.items)
    }
    calls: dict[str, list[Call]] = defaultdict(list)
    for call in sorted(result.calls, key=lambda c: c.start):
        calls[str(tenant_of.get(call.key))].append(call)
    return calls


def test_every_item_ends_and_a_bad_key_is_refused_by_name(keyed: RunResult) -> None:
    assert [r.status for r in keyed.executions] == ["SUCCEEDED", "SUCCEEDED"]
    first, second = (r.output for r in keyed.executions)
    assert first["total"] == 3 + 40 + 6 + 5 + 1
    assert first["failed"] == 1 + 3
    failures = {f["index"]: f for f in first["failures"]}
    bad = failures[next(i for i, item in enumerate(keyed.executions[0].items) if item["id"] == "bad-key")]
    assert bad["error"] == "Sluice.InvalidKey"
    assert "'tenant' field is not a string" in bad["cause"]
    assert second["succeeded"] == 4
    ok = {c.key for c in keyed.calls if c.status == 200}
    assert len(ok) == 3 + 40 + 6 + 2 + 4


def test_no_key_ever_has_more_calls_than_its_cap(keyed: RunResult) -> None:
    calls = _calls_by_tenant(keyed)
    assert most_at_once(calls["capped"]) == 1
    assert most_at_once(calls["ord"]) == 1
    assert most_at_once(calls["noisy"]) > 1  # an uncapped key uses several slots
    assert most_at_once(keyed.calls) <= 4


def test_an_ordered_key_reaches_the_api_in_submission_order(keyed: RunResult) -> None:
    order = [c.item_id for c in _calls_by_tenant(keyed)["ord"]]
    assert order == [f"ord-{n}" for n in range(3)]


def test_items_behind_a_failed_ordered_item_fail_without_a_call(keyed: RunResult) -> None:
    first = keyed.executions[0]
    by_id = {item["id"]: index for index, item in enumerate(first.items)}
    failures = {f["index"]: f for f in first.output["failures"]}
    assert failures[by_id["ord-2"]]["error"] != "Sluice.OrderBroken"  # the API's own refusal
    for behind in ("ord-3", "ord-4"):
        assert failures[by_id[behind]]["error"] == "Sluice.OrderBroken"
    # The cause as sent with SendTaskFailure (moto drops a task failure's cause on its way to the
    # output, docs/embedded-aws.md), from the worker's log line for each.
    causes = {
        int(r["item"].rsplit("#", 1)[1]) % KEYED_INDEX_OFFSET: r["cause"]
        for r in keyed.worker_logs
        if r.get("message") == "ordered item failed behind a failed one"
    }
    assert sorted(causes) == [by_id["ord-3"], by_id["ord-4"]]
    ahead = f"item {by_id['ord-2']} of {first.arn}, ahead of this one in ordered key 'ord'"
    assert all(cause.startswith(ahead) for cause in causes.values())


def test_a_quiet_key_is_not_held_behind_the_noisy_backlog(keyed: RunResult) -> None:
    calls = _calls_by_tenant(keyed)
    last_noisy = max(c.start for c in calls["noisy"])
    quiet = [c.start for c in calls["quiet"]]
    # In arrival order the quiet items would come after all 40 noisy ones.
    assert max(quiet) < last_noisy
