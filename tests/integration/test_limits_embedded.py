"""`sluice limits` end to end on the embedded AWS: the command run mid-batch over HTTP against
the stack's outputs, and the deployed worker obeying the new limits within 10 s, as the API's
own call log shows.

What this cannot prove: how long AWS takes to apply PutFunctionConcurrency and
UpdateEventSourceMapping (here the embedded control plane follows within a second), and IAM.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from localcloud.demo_operator import sluice_command
from localcloud.legacy_api import ApiProfile, Call, LegacyApi
from localcloud.runner import ExecutionRecord, RunResult, run_scenario
from localcloud.scenario import Batch, Scenario
from sluice_fanout.cli import explain, limits
from tests.support.api_calls import most_at_once

if TYPE_CHECKING:
    from collections.abc import Sequence

pytestmark = pytest.mark.slow

OBEY_WITHIN_S = 10.0
SET_AFTER_CALLS = 40
RATE = 6
RATE_AFTER_S = 12.0
EXPLAINED = 8


def _items(tenant: str, count: int) -> tuple[dict[str, Any], ...]:
    return tuple({"id": f"{tenant}-{n}", "priority": "BATCH", "tenant": tenant} for n in range(count))


SCENARIO = Scenario(
    name="limits",
    batches=(Batch(start_s=0, counts={}, items=_items("a", 240) + _items("b", 240)),),
    api=ApiProfile(concurrency_limit=6, service_time_s=0.1),
    stack_config={"sluice:keys": {"field": "tenant", "concurrency": 4}},
    deadline_s=240,
)


class Operator:
    """Runs the `sluice limits` command once the batch is under way, as an operator would."""

    def __init__(self, tmp: Path) -> None:
        self.outputs = tmp / "stack.json"
        self.endpoint = ""
        self.set_at: float | None = None
        self.rate_at: float | None = None
        self.printed: list[str] = []
        self.codes: list[int] = []
        self.explained: list[str] = []

    def deployed(self, endpoint: str, outputs: dict[str, Any]) -> None:
        self.endpoint = endpoint
        self.outputs.write_text(json.dumps(outputs))

    def run(self, *argv: str) -> None:
        code, out, _ = sluice_command(limits.main, list(argv), self.outputs, self.endpoint)
        self.codes.append(code)
        self.printed.append(out)

    def explain(self, execution: str, index: int) -> None:
        code, out, _ = sluice_command(explain.main, [execution, str(index)], self.outputs, self.endpoint)
        assert code == 0
        self.explained.append(out)

    def tick(self, api: LegacyApi, executions: list[ExecutionRecord]) -> None:
        if (
            self.set_at is not None
            and time.time() >= self.set_at + OBEY_WITHIN_S
            and len(self.explained) < EXPLAINED
            and executions
            and executions[0].status == "RUNNING"
        ):
            # The last item of each tenant: tenant a's cap is now 1.
            self.explain(executions[0].arn, 239)
            self.explain(executions[0].arn, 479)
        if self.set_at is None:
            if len(api.snapshot()) >= SET_AFTER_CALLS:
                self.run("set", "concurrency=2", "keys.concurrencyPerKey.a=1")
                self.set_at = time.time()
        elif self.rate_at is None and time.time() >= self.set_at + RATE_AFTER_S:
            # Apart from the first change: a rate limit that low would hide the concurrency.
            self.run("set", f"callsPerSecond={RATE}")
            self.rate_at = time.time()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Operator]:
    operator = Operator(tmp_path_factory.mktemp("limits"))
    result = run_scenario(SCENARIO, on_tick=operator.tick, on_deployed=operator.deployed)
    return result, operator


def _most_in_a_second(calls: Sequence[Call]) -> int:
    starts = sorted(c.start for c in calls)
    most, first = 0, 0
    for last, start in enumerate(starts):
        while start - starts[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def _by_tenant(calls: Sequence[Call]) -> dict[str, list[Call]]:
    grouped: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        grouped[str(call.item_id).split("-")[0]].append(call)
    return grouped


def test_every_item_is_worked_once(run: tuple[RunResult, Operator]) -> None:
    result, operator = run
    assert operator.codes == [0, 0]
    assert [r.status for r in result.executions] == ["SUCCEEDED"]
    assert {c.item_id for c in result.calls if c.status == 200} == {
        i["id"] for i in SCENARIO.batches[0].items
    }


def test_the_workers_obey_new_concurrency_and_key_caps_within_10_s(run: tuple[RunResult, Operator]) -> None:
    result, operator = run
    assert operator.set_at is not None
    before = [c for c in result.calls if c.start < operator.set_at]
    after = [c for c in result.calls if c.start >= operator.set_at + OBEY_WITHIN_S]
    # The deployed limits were in force before, so each check below could fail.
    assert most_at_once(before) > 2
    assert most_at_once(_by_tenant(before)["a"]) > 1
    assert len(after) > 50  # enough calls after the change to judge it
    assert most_at_once(after) <= 2
    assert most_at_once(_by_tenant(after)["a"]) <= 1


def test_the_workers_obey_a_new_rate_within_10_s(run: tuple[RunResult, Operator]) -> None:
    result, operator = run
    assert operator.set_at is not None
    assert operator.rate_at is not None
    before = [c for c in result.calls if operator.set_at + OBEY_WITHIN_S <= c.start < operator.rate_at]
    after = [c for c in result.calls if c.start >= operator.rate_at + OBEY_WITHIN_S]
    assert _most_in_a_second(before) > RATE
    assert len(after) > 3 * RATE
    assert _most_in_a_second(after) <= RATE


def test_set_prints_each_limit_deployed_overridden_and_in_effect(run: tuple[RunResult, Operator]) -> None:
    _, operator = run
    first, second = operator.printed
    rows = {line.split()[0]: line.split()[1:] for line in first.splitlines()[2:] if line.startswith("  ")}
    assert rows["concurrency"] == ["6", "2", "2"]
    assert rows["keys.concurrencyPerKey.a"] == ["4", "1", "1"]
    assert rows["callsPerSecond"] == ["none", "-", "none"]
    assert "applied: reserved 6 -> 2" in first
    assert "version 1, changed" in first
    rows = {line.split()[0]: line.split()[1:] for line in second.splitlines()[2:] if line.startswith("  ")}
    assert rows["callsPerSecond"] == ["none", "6", "6"]
    assert rows["concurrency"] == ["6", "2", "2"]  # the second change kept the first
    assert "version 2, changed" in second


def test_explain_says_what_holds_a_keyed_item(run: tuple[RunResult, Operator]) -> None:
    _, operator = run
    assert len(operator.explained) >= 2
    waiting = [t for t in operator.explained if "its key" in t]
    assert any("its key 'a' (BATCH): the key's cap of 1 call at once is in use" in t for t in waiting)
    assert any("waiting for its key 'b''s turn (BATCH)" in t for t in waiting)
