"""The benchmark runs in the suite at a small size: every mode, real runs, figures that add up.

What this cannot prove: the figures' values on AWS (see BENCHMARKS.md for what the embedded AWS
distorts); it checks that every mode runs, loses nothing and stays within the limit.
"""

from __future__ import annotations

import pytest

from localcloud.bench import MODES, run_bench

pytestmark = pytest.mark.slow


def test_every_mode_runs_a_small_scenario() -> None:
    results = run_bench(["d-limit-2"], scale=0.25)
    figures = results["d-limit-2"]
    assert set(figures) == set(MODES)
    for mode, f in figures.items():
        assert (f["lost"], f["over_limit"]) == (0, 0), mode
        assert 0 < f["utilization"] <= 1
        assert f["invocations_per_item"] > 0
        assert f["usd_per_million_items"] > 0
        # AWS bills one more transition per child a Distributed Map starts: one per item.
        assert f["billed_transitions_per_item"] == pytest.approx(f["transitions_per_item"] + 1, abs=0.011)
        assert f["billed_usd_per_million_items"] > f["usd_per_million_items"]
    # Only the ticket dispatch sends a ticket: one more state per throttled item.
    assert figures["ticket"]["transitions_per_item"] > figures["yield"]["transitions_per_item"]
    # A ticket invocation keeps its slot for the next waiting item: fewer invocations than items.
    assert figures["ticket"]["invocations_per_item"] < 1 < figures["yield"]["invocations_per_item"]
    # Only the yield dispatch yields.
    assert figures["ticket"]["wasted"]["yields"] == figures["fifo"]["wasted"]["yields"] == 0
    for mode, f in figures.items():
        # The worker's own account of its calls agrees with the API's (two clocks, two processes).
        assert f["slot_time"]["api call"] == pytest.approx(f["utilization"], abs=0.05), mode
        assert f["saturated_utilization"] is None or 0 < f["saturated_utilization"] <= 1
