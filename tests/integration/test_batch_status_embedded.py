"""`sluice batch status` against the embedded AWS: run mid-batch and at its end over HTTP from
the stack outputs, as an operator would, with items that fail and items that retry.

What this cannot prove: AWS's Map run counts as they move (moto's come from the same children,
at once), and a batch of 100,000 (the counts are one record and one Map run read, whatever the
size; BENCHMARKS.md's scale section runs such batches).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from localcloud.legacy_api import ApiProfile, LegacyApi
from localcloud.runner import ExecutionRecord, RunResult, run_scenario
from localcloud.scenario import Batch, Scenario
from sluice_fanout.cli import batch
from sluice_fanout.cli.common import EXIT_BAD_INPUT

pytestmark = pytest.mark.slow

ITEMS = 160
SCENARIO = Scenario(
    name="status",
    batches=(
        Batch(
            start_s=0,
            counts={},
            items=tuple(
                {"id": f"o-{n}", "priority": "BATCH" if n % 4 else "NORMAL", "reject": n % 40 == 0}
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

    def deployed(self, endpoint: str, outputs: dict[str, Any]) -> None:
        self.endpoint = endpoint
        self.outputs.write_text(json.dumps(outputs))

    def status(self, execution: str, *extra: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        argv = ["status", execution, "--stack-outputs", str(self.outputs), "--endpoint-url", self.endpoint]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = batch.main([*argv, *extra])
        return code, out.getvalue(), err.getvalue()

    def tick(self, api: LegacyApi, executions: list[ExecutionRecord]) -> None:
        del api
        if not executions:
            return
        record = executions[0]
        if record.status == "RUNNING" and len(self.mid) < 20:
            code, out, _ = self.status(record.arn, "--json")
            assert code == 0
            self.mid.append(json.loads(out))
        elif record.status != "RUNNING" and self.end is None:
            code, out, _ = self.status(record.arn, "--json")
            assert code == 0
            self.end = json.loads(out)
            self.text = self.status(record.arn)[1]
            unknown = record.arn.rsplit(":", 1)[0] + ":no-such-batch"
            self.errors["unknown"] = self.status(unknown)[0::2]  # type: ignore[assignment]
            self.errors["not an arn"] = self.status("o-1")[0::2]  # type: ignore[assignment]


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
