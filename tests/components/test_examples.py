"""examples/two-apis: another team's program with two ThrottledFanOut instances, under mocks."""

from __future__ import annotations

import runpy
from collections import Counter
from pathlib import Path

import yaml

from tests.support.mocks import run_program

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-apis"


def test_two_instances_live_side_by_side_with_their_own_limits() -> None:
    stack_config = yaml.safe_load((EXAMPLE / "Pulumi.dev.yaml").read_text())["config"]
    project = yaml.safe_load((EXAMPLE / "Pulumi.yaml").read_text())["name"]
    rec = run_program(
        lambda: runpy.run_path(str(EXAMPLE / "__main__.py")),
        config={k: str(v) for k, v in stack_config.items()},
        project=project,
    )
    tops = [r for r in rec.resources if r.typ == "sluice:index:ThrottledFanOut"]
    assert sorted(r.name for r in tops) == ["erp", "partner"]
    names = Counter((r.typ, r.name) for r in rec.resources)
    assert [key for key, n in names.items() if n > 1] == []  # no two resources share a name
    assert rec.named("erp-worker-function").inputs["reservedConcurrentExecutions"] == 8
    partner = rec.named("partner-worker-function").inputs
    assert partner["reservedConcurrentExecutions"] == 2
    assert partner["timeout"] == 60
    # One priority for the partner: one queue and its DLQ, plus the ticket pair.
    partner_queues = [
        r.name for r in rec.resources if r.typ == "aws:sqs/queue:Queue" and r.name.startswith("partner")
    ]
    assert sorted(partner_queues) == [
        "partner-queues-dispatch-tickets",
        "partner-queues-dispatch-tickets-dlq",
        "partner-queues-standard",
        "partner-queues-standard-dlq",
    ]
