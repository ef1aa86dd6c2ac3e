"""`sluice batch status` and `sluice explain` against the embedded AWS: run mid-batch and at its
end over HTTP from the stack outputs, as an operator would, with items that fail and items that
retry.

What this cannot prove: AWS's Map run counts as they move (moto's come from the same children,
at once), and a batch of 100,000 (the counts are one record and one Map run read, whatever the
size; BENCHMARKS.md's scale section runs such batches).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from localcloud.demo_operator import sluice_command
from localcloud.legacy_api import ApiProfile, LegacyApi
from localcloud.runner import ExecutionRecord, RunResult, run_scenario
from localcloud.scenario import Batch, Scenario
from sluice_fanout.cli import batch, explain
from sluice_fanout.cli.common import EXIT_BAD_INPUT

pytestmark = pytest.mark.slow

ITEMS = 160
RETRIED = (5, 9)
"""Their first two calls answer 500: each retries twice, and `explain` is asked about them every tick."""
SCENARIO = Scenario(
    name="status",
    batches=(
        Batch(
            start_s=0,
            counts={},
            items=tuple(
                {"id": f"o-{n}", "priority": "BATCH" if n % 4 else "NORMAL", "reject": n % 40 == 0}
                | ({"fail_first": 2} if n in RETRIED else {})
                for n in range(ITEMS)
            ),
        ),
    ),
    # Some calls answer 503: their items retry, and the retries show in the status.
    api=ApiProfile(concurrency_limit=4, service_time_s=0.1, error_rate=0.1),
    deadline_s=240,
)


class Operator:
    def __init__(self, tmp: Path) -> None:
        self.outputs = tmp / "stack.json"
        self.endpoint = ""
        self.mid: list[dict[str, Any]] = []
        self.end: dict[str, Any] | None = None
        self.errors: dict[str, tuple[int, str]] = {}
        self.explained_mid: dict[int, list[str]] = {}
        self.explained_end: dict[int, str] = {}

    def deployed(self, endpoint: str, outputs: dict[str, Any]) -> None:
        self.endpoint = endpoint
        self.outputs.write_text(json.dumps(outputs))

    def status(self, execution: str, *extra: str) -> tuple[int, str, str]:
        return sluice_command(batch.main, ["status", execution, *extra], self.outputs, self.endpoint)

    def explain(self, execution: str, item: str, *extra: str) -> tuple[int, str, str]:
        return sluice_command(explain.main, [execution, item, *extra], self.outputs, self.endpoint)

    def tick(self, api: LegacyApi, executions: list[ExecutionRecord]) -> None:
        del api
        if not executions:
            return
        record = executions[0]
        if record.status == "RUNNING" and len(self.mid) < 20:
            code, out, _ = self.status(record.arn, "--json")
            assert code == 0
            self.mid.append(json.loads(out))
            # A different handful of items each tick, so that some are caught mid-way.
            for index in (*range(len(self.mid) % 4, ITEMS, 23), *RETRIED):
                code, out, _ = self.explain(record.arn, str(index), "--json")
                assert code == 0
                self.explained_mid.setdefault(index, []).append(json.loads(out)["explanation"])
        elif record.status != "RUNNING" and self.end is None:
            code, out, _ = self.status(record.arn, "--json")
            assert code == 0
            self.end = json.loads(out)
            self.text = self.status(record.arn)[1]
            unknown = record.arn.rsplit(":", 1)[0] + ":no-such-batch"
            self.errors["unknown"] = self.status(unknown)[0::2]  # type: ignore[assignment]
            self.errors["not an arn"] = self.status("o-1")[0::2]  # type: ignore[assignment]
            for index in [*range(0, ITEMS, 40), *range(1, ITEMS, 9)]:
                code, out, _ = self.explain(record.arn, str(index))
                assert code == 0
                self.explained_end[index] = out
            self.errors["item not in it"] = self.explain(record.arn, str(ITEMS))[0::2]  # type: ignore[assignment]
            self.errors["no such id"] = self.explain(record.arn, "o-x", "--id-field", "id")[0::2]  # type: ignore[assignment]
            self.by_id = self.explain(record.arn, "o-40", "--id-field", "id")[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Operator]:
    operator = Operator(tmp_path_factory.mktemp("status"))
    result = run_scenario(SCENARIO, on_tick=operator.tick, on_deployed=operator.deployed)
    return result, operator


def test_mid_batch_the_counts_add_up_and_only_grow(run: tuple[RunResult, Operator]) -> None:
    _, operator = run
    assert len(operator.mid) >= 3
    for sample in operator.mid:
        parts = ("succeeded", "failed", "retrying", "not_started", "waiting_or_in_flight")
        assert sum(sample[k] for k in parts) == sample["total"] == ITEMS
        assert sample["state"] == "RUNNING"
    done = [s["succeeded"] + s["failed"] for s in operator.mid]
    assert done == sorted(done)
    assert any(s["retrying"] for s in operator.mid)  # a 503 was seen retrying
    assert any(s["rate_per_s"] and s["eta_s"] for s in operator.mid)


def test_at_the_end_it_says_what_the_aggregate_says(run: tuple[RunResult, Operator]) -> None:
    result, operator = run
    (record,) = result.executions
    assert operator.end is not None
    assert (operator.end["state"], operator.end["total"]) == ("SUCCEEDED", ITEMS)
    assert (operator.end["succeeded"], operator.end["failed"]) == (
        record.output["succeeded"],
        record.output["failed"],
    )
    assert operator.end["failed"] >= ITEMS // 40  # the rejected ones at least
    assert (
        f"items {ITEMS}: succeeded {record.output['succeeded']}, failed {record.output['failed']}"
        in operator.text
    )
    assert "[########################################] 100%" in operator.text


def test_a_batch_that_is_not_there_is_refused_with_status_2(run: tuple[RunResult, Operator]) -> None:
    _, operator = run
    code, err = operator.errors["unknown"]
    assert code == EXIT_BAD_INPUT
    assert "no execution arn:aws:states:" in err
    code, err = operator.errors["not an arn"]
    assert code == EXIT_BAD_INPUT
    assert "'o-1' is not an execution ARN" in err


def test_explain_at_the_end_agrees_with_the_aggregate(run: tuple[RunResult, Operator]) -> None:
    result, operator = run
    (record,) = result.executions
    failed = {f["index"] for f in record.output["failures"]}
    assert len(operator.explained_end) > 20
    for index, text in operator.explained_end.items():
        assert text.startswith(f"item {index} of batch {record.arn.rsplit(':', 1)[-1]}: ")
        if index % 40 == 0:  # rejected by the API: its verdict, not retried
            assert "failed at" in text
            assert "after 1 attempt: Sluice.PermanentFailure: HTTP 400" in text
        elif index in failed:
            assert "failed at" in text
            assert "Sluice.RetriesExhausted" in text
        else:
            assert re.search(r": succeeded at \d\d:\d\d:\d\d UTC after [1-3] attempts?\.$", text.strip()), (
                text
            )
    assert operator.by_id == operator.explained_end[40]


def test_explain_mid_batch_says_waiting_retrying_and_done_and_never_goes_back(
    run: tuple[RunResult, Operator],
) -> None:
    result, operator = run
    (record,) = result.executions
    failed = {f["index"] for f in record.output["failures"]}
    seen = [text for texts in operator.explained_mid.values() for text in texts]
    assert any(
        t.startswith("waiting in BATCH since its batch started") and "API slots are busy" in t for t in seen
    )
    assert any(t.startswith("retrying after ApiUnavailable") and " of 3 failed; " in t for t in seen)
    assert any(t.startswith("succeeded at") for t in seen)
    for index, texts in operator.explained_mid.items():
        finals = [t for t in texts if t.startswith(("succeeded", "failed"))]
        # Once an item is explained as done it stays so, with the outcome it ends with.
        assert all(t == finals[0] for t in finals)
        if finals:
            assert texts[texts.index(finals[0]) :] == finals
            assert finals[0].startswith("failed") == (index in failed)


def test_explain_refuses_an_item_that_is_not_in_the_batch(run: tuple[RunResult, Operator]) -> None:
    _, operator = run
    code, err = operator.errors["item not in it"]
    assert code == EXIT_BAD_INPUT
    assert f"item {ITEMS} is not in this batch of {ITEMS} items (indexes 0 to {ITEMS - 1})" in err
    code, err = operator.errors["no such id"]
    assert code == EXIT_BAD_INPUT
    assert "no item of this batch has id = 'o-x'" in err
