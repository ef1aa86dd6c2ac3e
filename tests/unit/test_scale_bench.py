"""The scale benchmark's pure parts: /proc parsing, one size's figures from a recorded run and
samples, the growth fit, the size policy after a timeout, and the Markdown table."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from localcloud import scale_bench
from localcloud.deploy import DeployedStack
from localcloud.legacy_api import Call
from localcloud.report import build_report
from localcloud.runner import ExecutionRecord, RunResult, batch_items
from localcloud.scale_bench import (
    CLOCK_TICKS,
    PAGE_BYTES,
    ProcStat,
    Samples,
    TreeSampler,
    descendants,
    figures,
    growth,
    markdown,
    notes,
    parse_pss,
    parse_stat,
    read_pss,
    scenario,
)

WORKER, AGGREGATE = "sluice-worker-fn", "sluice-aggregate-fn"


def test_a_size_is_one_s3_batch_half_direct_half_throttled_10_30_60() -> None:
    s = scenario(60)
    (batch,) = s.batches
    assert (batch.direct, batch.counts) == (30, {"HIGH": 3, "NORMAL": 9, "BATCH": 18})
    assert (s.source, s.dispatch, s.api.concurrency_limit, s.api.service_time_s) == (
        "s3",
        "ticket",
        16,
        0.005,
    )
    assert s.items_total == 60
    assert scenario(1_001, "yield", 30.0).batches[0].counts == {"HIGH": 50, "NORMAL": 150, "BATCH": 300}
    assert (scenario(1_000).deadline_s, scenario(1_000, deadline_s=30.0).deadline_s) == (140.0, 30.0)
    # The throttled half alone at the API's limit: 5,000 x 5 ms / 16.
    assert scale_bench.physical_limit_s(5_000) == pytest.approx(1.5625)


def test_parse_stat_reads_a_command_name_with_spaces_and_parentheses() -> None:
    fields = ["S", "41", *["0"] * 9, "250", "50", *["0"] * 4, "7", "0", "123456", "0", "2560"]
    stat = parse_stat("4242 (python (x) y) " + " ".join(fields) + " 0 0\n")
    assert stat == ProcStat(
        pid=4242,
        ppid=41,
        cpu_s=300 / CLOCK_TICKS,
        threads=7,
        start_ticks=123456,
        rss_bytes=2560 * PAGE_BYTES,
    )


def test_parse_pss_reads_the_pss_line_of_smaps_rollup_in_kilobytes() -> None:
    text = (
        "55d0-7ffd ---p 00000000 00:00 0    [rollup]\nRss:   60252 kB\nPss:   48790 kB\n"
        "Pss_Dirty:   48172 kB\nPss_Anon:   48172 kB\n"
    )
    assert parse_pss(text) == 48790 * 1024
    assert parse_pss("Rss:   60252 kB\n") is None


def test_read_pss_of_this_process_and_of_one_that_ended() -> None:
    own, stat = read_pss(os.getpid()), scale_bench.read_stat(os.getpid())
    assert own is not None
    assert stat is not None
    assert 0 < own <= stat.rss_bytes + 2**20  # read a moment apart: the heap may grow between
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    assert read_pss(child.pid) is None


def _proc(pid: int, ppid: int) -> ProcStat:
    return ProcStat(pid, ppid, 0.0, 1, pid, 0)


def test_descendants_are_the_whole_subtree_and_nothing_else() -> None:
    table = [_proc(1, 0), _proc(10, 1), _proc(11, 10), _proc(12, 11), _proc(20, 1), _proc(13, 10)]
    assert sorted(p.pid for p in descendants(10, table)) == [11, 12, 13]
    assert descendants(12, table) == []


def _result(size: int, *, stopped: float | None, calls: list[Call]) -> RunResult:
    s = scenario(size)
    items = batch_items(s, 0)
    record = ExecutionRecord("arn:exec", 0, items, started=100.0, stopped=stopped, source="s3")
    if stopped is not None:
        record.status = "SUCCEEDED"
        record.output = {"total": size, "succeeded": size - 2, "failed": 2}
    return RunResult(
        scenario=s,
        executions=[record],
        calls=calls,
        enqueued_at={},
        worker_stats={"invocations": 0},
        mapping_stats=[],
        worker_logs=[],
        stack=DeployedStack(outputs={"workerFunctionName": WORKER}, mappings=[]),
        wall_s=0.0,
        requests={},
        parent_transitions=0,
    )


def _call(key: str, status: int, start: float = 101.0) -> Call:
    return Call(start, start + 0.005, key, None, "BATCH", 1 if status != 429 else 0, status)


def _samples() -> Samples:
    return Samples(
        samples=9,
        peak_rss_tree_bytes=3 * 2**30,
        peak_rss_main_bytes=512 * 2**20,
        peak_pss_tree_bytes=2 * 2**30,
        peak_threads=88,
        sandbox_cpu_s={(7, 1): (WORKER, 3.0), (8, 2): (WORKER, 1.5), (9, 3): (AGGREGATE, 0.5)},
        sandbox_cpu_base_s={(7, 1): 1.0},  # already used before the execution started
        main_cpu_s=20.0,
        cold_starts={WORKER: 2, AGGREGATE: 1, "other-fn": 0},
    )


def test_figures_of_a_finished_size() -> None:
    calls = [_call("arn:exec#30", 200), _call("arn:exec#30", 200, 102.0), _call("arn:exec#31", 200)]
    result = _result(1_000, stopped=120.0, calls=calls)
    f = figures(result, _samples(), build_report(result))
    assert f == {
        "size": 1_000,
        "dispatch": "ticket",
        "deadline_s": 140.0,
        "finished": True,
        "status": "SUCCEEDED",
        "wall_s": 20.0,
        "items_per_s": 50.0,
        "throttled_answered": 2,
        "succeeded": 998,
        "failed": 2,
        "lost": 0,
        "duplicate_calls": 1,
        "over_limit": 0,
        "utilization": round(0.015 / (16 * 1.005), 3),
        # No enqueue times in this run: nothing was seen waiting.
        "saturated_utilization": None,
        "peak_rss_tree_mib": 3072.0,
        "peak_rss_main_mib": 512.0,
        "peak_pss_tree_mib": 2048.0,
        "peak_threads": 88,
        # worker: (3.0 - 1.0) + 1.5 = 3.5 s over 1,000 items; the emulator: 20 s.
        "cpu_ms_per_item": {"aggregate": 0.5, "worker": 3.5, "emulator": 20.0},
        "cold_starts": {"aggregate": 1, "other-fn": 0, "worker": 2},
        "physical_limit_s": 0.156,
    }


def test_a_size_that_missed_its_deadline_says_so_and_counts_what_was_done() -> None:
    # Retried answers (429, 503) are not done; a final 400 is.
    calls = [
        _call("arn:exec#1", 429),
        _call("arn:exec#1", 200),
        _call("arn:exec#2", 503),
        _call("arn:exec#3", 400),
    ]
    result = _result(100, stopped=None, calls=calls)
    f = figures(result, _samples(), build_report(result))
    assert (f["finished"], f["status"], f["wall_s"], f["items_per_s"]) == (False, "DEADLINE", None, None)
    assert (f["throttled_answered"], f["lost"]) == (2, 100)
    assert f["over_limit"] == 1  # the refused (429) call was admitted with 0 in flight


@pytest.mark.parametrize(
    ("points", "slope", "kind"),
    [
        ([(1_000, 10.0), (10_000, 100.0), (100_000, 1_000.0)], 1.0, "linear"),
        ([(1_000, 1.0), (10_000, 100.0)], 2.0, "superlinear"),
        ([(1_000, 30.0), (10_000, 60.0), (100_000, 120.0)], 0.3, "sublinear"),
        # Two runs of one size weigh as their geometric mean (20 s).
        ([(1_000, 10.0), (1_000, 40.0), (10_000, 200.0)], 1.0, "linear"),
    ],
)
def test_growth_is_the_slope_of_log_time_against_log_size(
    points: list[tuple[int, float]], slope: float, kind: str
) -> None:
    fit = growth(points)
    assert fit["slope"] == slope
    assert f": {kind}" in fit["statement"]
    assert fit["statement"].startswith(f"time grows as N^{slope:.2f} from 1,000 to ")


def test_growth_needs_two_sizes() -> None:
    assert growth([(1_000, 10.0), (1_000, 11.0)]) == {
        "slope": None,
        "statement": "fewer than two finished sizes: no growth to fit",
    }


def _row(size: int, wall: float, *, finished: bool = True) -> dict[str, Any]:
    return {
        "size": size,
        "deadline_s": 50.0,
        "finished": finished,
        "status": "SUCCEEDED" if finished else "DEADLINE",
        "wall_s": wall if finished else None,
        "items_per_s": round(size / wall, 1) if finished else None,
        "throttled_answered": size // 2 if finished else 7,
        "lost": 0 if finished else size,
        "over_limit": 0,
        "duplicate_calls": 0,
        "physical_limit_s": 1.0,
    }


def test_after_a_size_misses_its_deadline_the_larger_ones_are_skipped_unless_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[tuple[int, float]] = []

    def fake_run_size(s: Any) -> dict[str, Any]:
        ran.append((s.items_total, s.deadline_s))
        return _row(s.items_total, 10.0, finished=s.items_total < 200)

    monkeypatch.setattr(scale_bench, "run_size", fake_run_size)
    results = scale_bench.run([100, 200, 400], deadlines=[50.0, 60.0])
    assert ran == [(100, 50.0), (200, 60.0)]  # the last deadline given applies to the rest
    assert [r["status"] for r in results["sizes"]] == ["SUCCEEDED", "DEADLINE", "SKIPPED"]
    assert notes(results) == [
        "200 items: did not finish within 50 s (7 of 100 throttled items answered)",
        "400 items: skipped, 200 did not finish",
    ]
    assert results["growth"]["slope"] is None  # an unfinished size is no point of the fit
    assert not scale_bench.ok(results)
    ran.clear()
    results = scale_bench.run([100, 200, 400], keep_going=True)
    assert [n for n, _ in ran] == [100, 200, 400]
    assert [r["status"] for r in results["sizes"]] == ["SUCCEEDED", "DEADLINE", "DEADLINE"]


def test_markdown_table_has_a_row_per_size_and_states_the_growth() -> None:
    row = _row(1_000, 20.0) | {
        "succeeded": 1_000,
        "failed": 0,
        "utilization": 0.5,
        "saturated_utilization": 0.75,
        "peak_rss_tree_mib": 900.5,
        "peak_rss_main_mib": 300.0,
        "peak_pss_tree_mib": 700.25,
        "peak_threads": 60,
        "cpu_ms_per_item": {"worker": 4.0, "order": 0.25, "emulator": 9.5, "api": 1.5},
        "cold_starts": {"aggregate": 1, "worker": 3},
    }
    results = {"dispatch": "ticket", "sizes": [row, _row(2_000, 1.0, finished=False)]}
    results["growth"] = growth([(1_000, 20.0)])
    lines = markdown(results).splitlines()
    assert lines[0].startswith("| items | status | wall s | items/s | API limit s | succeeded |")
    assert lines[1] == "|" + "---|" * len(scale_bench.COLUMNS)
    assert lines[2] == (
        "| 1000 | SUCCEEDED | 20.0 | 50.0 | 1.0 | 1000 | 0 | 0 | 500 | 0 | 0 | 0.5 | 0.75 | 900.5 / 300.0 "
        "| 700.25 | 60 | 4.0 | 0.0 | 0.25 | 9.5 | 1.5 | aggregate 1, worker 3 |"
    )
    assert lines[3] == (
        "| 2000 | DEADLINE | - | - | 1.0 | - | - | 2000 | 7 | 0 | 0 "
        "| - | - | - | - | - | - | - | - | - | - | - |"
    )
    assert lines[5:] == [
        "Growth: fewer than two finished sizes: no growth to fit.",
        "2,000 items: did not finish within 50 s (7 of 1,000 throttled items answered).",
    ]


class _FakeRunner:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def function_names(self) -> list[str]:
        return [WORKER]

    def sandbox_pids(self, name: str) -> list[int]:
        return [self.pid]

    def stats(self, name: str) -> dict[str, int]:
        return {"cold_starts": 1}


def test_the_sampler_counts_a_sandboxes_cpu_since_the_start_and_the_trees_rss() -> None:
    """Against this machine's /proc: a child that burns CPU stands in for a sandbox."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(20)"
    child = subprocess.Popen([sys.executable, "-c", burn])  # noqa: S603 - our interpreter, our code
    try:
        runner = _FakeRunner(child.pid)
        # A fake with the runner's reading side only.
        sampler = TreeSampler(period_s=0.05, runners=lambda: [runner])  # type: ignore[list-item]
        sampler.begin_cpu()  # the child's CPU so far is its baseline
        sampler.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stat = scale_bench.read_stat(child.pid)
            if stat is not None and stat.cpu_s >= 0.3:
                break
            time.sleep(0.05)
        sampler.end_cpu()
        samples = sampler.stop()
    finally:
        child.kill()
        child.wait(timeout=5)
    worker_cpu = samples.cpu_by_function()[WORKER]
    assert 0.0 < worker_cpu <= 0.3 + 2 / CLOCK_TICKS
    assert samples.cold_starts == {WORKER: 1}
    assert samples.samples >= 1
    assert samples.peak_rss_tree_bytes > samples.peak_rss_main_bytes > 0
    # Read at the first sample: shared pages count once, so the tree is below its RSS sum.
    assert 0 < samples.peak_pss_tree_bytes < samples.peak_rss_tree_bytes
    assert samples.peak_threads >= 2  # this thread and the sampler's
    assert samples.main_cpu_s >= 0.0
