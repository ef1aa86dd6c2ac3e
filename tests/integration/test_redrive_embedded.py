"""`sluice batch redrive` against the embedded AWS: an ended batch's failed items run again as a
new execution, from the stack outputs over HTTP, and the legacy API's own call log shows that only
they were called again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from localcloud.demo_operator import sluice_command
from localcloud.legacy_api import ApiProfile, Call, LegacyApi
from localcloud.runner import ExecutionRecord, RunResult, run_scenario
from localcloud.scenario import Batch, Scenario
from sluice_fanout.cli import batch
from sluice_fanout.cli.common import EXIT_BAD_INPUT

pytestmark = pytest.mark.slow

ITEMS = 60
REJECTED = {n for n in range(ITEMS) if n % 10 == 3}
"""Answered 400 by the API: Sluice.PermanentFailure."""
UNKNOWN = {n for n in range(ITEMS) if n % 20 == 7}
"""A priority the stack does not have: Sluice.UnknownPriority, failed without a call."""
SCENARIO = Scenario(
    name="redrive",
    batches=(
        Batch(
            start_s=0,
            counts={},
            items=tuple(
                {
                    "id": f"o-{n}",
                    "priority": "URGENT" if n in UNKNOWN else "NORMAL",
                    "reject": n in REJECTED,
                }
                for n in range(ITEMS)
            ),
        ),
    ),
    api=ApiProfile(concurrency_limit=4, service_time_s=0.05),
    deadline_s=240,
)
REDRIVE_WAIT_S = 120.0


class Operator:
    def __init__(self, tmp: Path) -> None:
        self.outputs = tmp / "stack.json"
        self.endpoint = ""
        self.said: dict[str, tuple[int, str, str]] = {}
        self.redrive: dict[str, Any] | None = None
        self.calls: list[Call] = []
        self.executions_before_dry_run = -1
        self.executions_after_dry_run = -1

    def deployed(self, endpoint: str, outputs: dict[str, Any]) -> None:
        self.endpoint = endpoint
        self.outputs.write_text(json.dumps(outputs))
        self.stack = outputs

    def command(self, *argv: str) -> tuple[int, str, str]:
        return sluice_command(batch.main, list(argv), self.outputs, self.endpoint)

    def executions(self) -> list[dict[str, Any]]:
        sfn = boto3.client("stepfunctions", endpoint_url=self.endpoint, region_name="us-east-1")
        found: list[dict[str, Any]] = sfn.list_executions(stateMachineArn=self.stack["stateMachineArn"])[
            "executions"
        ]
        return found

    def tick(self, api: LegacyApi, executions: list[ExecutionRecord]) -> None:
        if not executions:
            return
        record = executions[0]
        if record.status == "RUNNING":
            # Once, at the first tick: a later one could find the batch just ended (the runner's
            # status lags by a poll) and start a real redrive.
            if "running" not in self.said:
                self.said["running"] = self.command("redrive", record.arn)
            return
        if self.redrive is not None:
            return
        self.executions_before_dry_run = len(self.executions())
        self.said["dry run, all"] = self.command("redrive", record.arn, "--dry-run")
        self.said["dry run"] = self.command(
            "redrive", record.arn, "--error", "Sluice.PermanentFailure", "--dry-run"
        )
        self.executions_after_dry_run = len(self.executions())
        self.said["redrive"] = self.command("redrive", record.arn, "--error", "Sluice.PermanentFailure")
        started = self.said["redrive"][1].split("started ", 1)[1].split()[0]
        sfn = boto3.client("stepfunctions", endpoint_url=self.endpoint, region_name="us-east-1")
        deadline = time.monotonic() + REDRIVE_WAIT_S
        described = sfn.describe_execution(executionArn=started)
        while described["status"] == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.5)
            described = sfn.describe_execution(executionArn=started)
        self.redrive = described
        self.said["next dry run"] = self.command("redrive", record.arn, "--dry-run")
        self.said["nothing"] = self.command("redrive", started, "--error", "Sluice.NoSuchError")
        self.calls = api.snapshot()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Operator]:
    operator = Operator(tmp_path_factory.mktemp("redrive"))
    result = run_scenario(SCENARIO, on_tick=operator.tick, on_deployed=operator.deployed)
    return result, operator


def test_the_dry_run_says_what_it_would_do_and_starts_nothing(run: tuple[RunResult, Operator]) -> None:
    result, operator = run
    (record,) = result.executions
    name = record.arn.rsplit(":", 1)[-1]
    code, out, _ = operator.said["dry run"]
    assert code == 0
    assert out.splitlines()[0] == (
        f"batch {name}: {len(REJECTED)} failed items to run again (Sluice.PermanentFailure {len(REJECTED)}): "
        f"indexes {', '.join(str(n) for n in sorted(REJECTED))}"
    )
    assert f"left out by --error: Sluice.UnknownPriority {len(UNKNOWN)}" in out
    assert f"as a new execution {name}-redrive-1 of the same state machine" in out
    assert out.splitlines()[-1] == "--dry-run: nothing started"
    assert operator.executions_after_dry_run == operator.executions_before_dry_run
    code, out, _ = operator.said["dry run, all"]
    failed = len(REJECTED) + len(UNKNOWN)
    assert f"{failed} failed items to run again (Sluice.PermanentFailure {len(REJECTED)}, " in out


def test_only_the_failed_items_are_called_again(run: tuple[RunResult, Operator]) -> None:
    result, operator = run
    (record,) = result.executions
    assert operator.said["redrive"][0] == 0
    assert operator.redrive is not None
    assert operator.redrive["status"] == "SUCCEEDED"
    output = json.loads(operator.redrive["output"])
    assert (output["total"], output["failed"]) == (len(REJECTED), len(REJECTED))  # the API rejects them again
    redrive_input = json.loads(operator.redrive["input"])
    assert redrive_input["redrive_of"]["execution"] == record.arn
    first = [c for c in operator.calls if c.key.startswith(record.arn + "#")]
    again = [c for c in operator.calls if c.key.startswith(operator.redrive["executionArn"] + "#")]
    assert len(first) + len(again) == len(operator.calls)
    assert sorted(c.item_id for c in again) == sorted(f"o-{n}" for n in REJECTED)
    # Every item that succeeded was called once, in the first execution only.
    succeeded = {f"o-{n}" for n in range(ITEMS)} - {f"o-{n}" for n in REJECTED | UNKNOWN}
    assert sorted(c.item_id for c in first if c.status == 200) == sorted(succeeded)
    assert not any(c.item_id in {f"o-{n}" for n in UNKNOWN} for c in operator.calls)


def test_the_next_redrive_gets_the_next_name(run: tuple[RunResult, Operator]) -> None:
    result, operator = run
    (record,) = result.executions
    code, out, _ = operator.said["next dry run"]
    assert code == 0
    assert f"{record.arn.rsplit(':', 1)[-1]}-redrive-2" in out
    code, out, _ = operator.said["nothing"]
    assert code == 0
    assert "no failed items to redrive" in out
    assert f"Sluice.PermanentFailure {len(REJECTED)} left out by --error" in out


def test_a_running_batch_is_refused_with_status_2(run: tuple[RunResult, Operator]) -> None:
    _, operator = run
    code, _, err = operator.said["running"]
    assert code == EXIT_BAD_INPUT
    assert "is still running; redrive its failed items once it has ended" in err
