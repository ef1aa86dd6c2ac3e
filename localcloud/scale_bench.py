"""The scale benchmark: one execution each of 1,000, 10,000 and 100,000 items from S3.
`python -m localcloud scale` runs it (`make bench-scale`; BENCHMARKS.md)."""

from __future__ import annotations

import math
import os
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localcloud.lambda_runner import LambdaRunner, open_runners
from localcloud.legacy_api import ApiProfile
from localcloud.report import build_report, write_figures
from localcloud.runner import RETRIED_STATUSES, run_scenario
from localcloud.scenario import SOURCE_S3, Batch, Scenario

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from localcloud.legacy_api import LegacyApi
    from localcloud.runner import ExecutionRecord, RunResult

SIZES = (1_000, 10_000, 100_000)
PRIORITY_SHARES = (("HIGH", 0.1), ("NORMAL", 0.3), ("BATCH", 0.6))
"""Shares of the throttled half; BATCH takes what rounding leaves."""
API = ApiProfile(concurrency_limit=16, service_time_s=0.005)
"""The API every size runs against: limit 16, 5 ms a call."""
SAMPLE_PERIOD_S = 0.5
PSS_EVERY = 4
"""Proportional set sizes are read every 4th sample (2 s): smaps_rollup walks the page tables,
about 20 ms for a 1 GiB process, too dear every half second."""
SAMPLER_MAX_S = 6 * 3600.0  # a sampler left running by a crashed caller stops by itself
DEADLINE_BASE_S, DEADLINE_PER_ITEM_S = 120.0, 0.02
"""Default deadline of a size: 120 s + 20 ms an item (1,000: 140 s; 100,000: 2,120 s)."""
LINEAR_BAND = (0.85, 1.15)
"""A fitted exponent inside this band is called linear."""
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def default_deadline_s(size: int) -> float:
    return DEADLINE_BASE_S + DEADLINE_PER_ITEM_S * size


def scenario(size: int, dispatch: str = "ticket", deadline_s: float | None = None) -> Scenario:
    """One batch of `size` items started with `{"source": {bucket, key}}`: half direct, half
    throttled across the priorities (10% HIGH, 30% NORMAL, 60% BATCH)."""
    throttled = size // 2
    counts = {p: round(throttled * share) for p, share in PRIORITY_SHARES[:-1]}
    counts[PRIORITY_SHARES[-1][0]] = throttled - sum(counts.values())
    return Scenario(
        name=f"scale-{size}",
        batches=(Batch(start_s=0.0, counts=counts, direct=size - throttled),),
        api=API,
        dispatch=dispatch,
        deadline_s=default_deadline_s(size) if deadline_s is None else deadline_s,
        source=SOURCE_S3,
    )


def physical_limit_s(throttled: int, api: ApiProfile = API) -> float:
    """The API alone: every throttled item's call at the limit, back to back."""
    return throttled * api.service_time_s / api.concurrency_limit


# ---- /proc ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat this benchmark reads (proc(5))."""

    pid: int
    ppid: int
    cpu_s: float
    """utime + stime."""
    threads: int
    start_ticks: int
    """Start time after boot: with the pid, it names one process even if the pid is reused."""
    rss_bytes: int
    """Resident set size (the same figure as VmRSS in /proc/<pid>/status)."""


def parse_stat(text: str) -> ProcStat:
    # The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    head, _, tail = text.rpartition(")")
    fields = tail.split()
    # fields[0] is field 3 (state): field n is fields[n - 3].
    return ProcStat(
        pid=int(head.split("(", 1)[0]),
        ppid=int(fields[1]),
        cpu_s=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
        threads=int(fields[17]),
        start_ticks=int(fields[19]),
        rss_bytes=int(fields[21]) * PAGE_BYTES,
    )


def read_stat(pid: int) -> ProcStat | None:
    """None when the process has ended (or its entry vanished while being read)."""
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def read_pss(pid: int) -> int | None:
    """Proportional set size in bytes: resident pages, each shared page divided among the
    processes that map it, so the sum over a tree counts shared libraries once (proc(5),
    /proc/<pid>/smaps_rollup). None when the process has ended."""
    try:
        text = (PROC / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return None
    return parse_pss(text)


def parse_pss(text: str) -> int | None:
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024  # the kernel writes kB
    return None


def process_table() -> list[ProcStat]:
    """Every process this user can read (about a hundred here: cheap every half second)."""
    stats = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                stats.append(stat)
    return stats


def descendants(root: int, table: Iterable[ProcStat]) -> list[ProcStat]:
    """The processes below `root` in `table` (children, their children, ...), root excluded."""
    by_parent: dict[int, list[ProcStat]] = {}
    for stat in table:
        by_parent.setdefault(stat.ppid, []).append(stat)
    found: list[ProcStat] = []
    frontier = [root]
    seen = {root}
    while frontier:  # bounded: each pid is visited once
        for child in by_parent.get(frontier.pop(), []):
            if child.pid not in seen:
                seen.add(child.pid)
                found.append(child)
                frontier.append(child.pid)
    return found


# ---- sampling ------------------------------------------------------------------------------


@dataclass
class Samples:
    """What the sampler saw of one run."""

    samples: int = 0
    peak_rss_tree_bytes: int = 0
    """Peak of (main process + every live descendant) at one sample."""
    peak_rss_main_bytes: int = 0
    peak_pss_tree_bytes: int = 0
    """Peak of the tree's summed proportional set sizes, read every `PSS_EVERY` samples."""
    peak_threads: int = 0
    """Of the main process."""
    sandbox_cpu_s: dict[tuple[int, int], tuple[str, float]] = field(default_factory=dict)
    """(pid, start ticks) -> (function, CPU seconds at the last sample), one per sandbox."""
    sandbox_cpu_base_s: dict[tuple[int, int], float] = field(default_factory=dict)
    """CPU each sandbox had already used when the execution started (not counted)."""
    main_cpu_s: float = 0.0
    """The main process's CPU over the execution."""
    cold_starts: dict[str, int] = field(default_factory=dict)

    def cpu_by_function(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for key, (name, cpu) in self.sandbox_cpu_s.items():
            totals[name] = totals.get(name, 0.0) + cpu - self.sandbox_cpu_base_s.get(key, 0.0)
        return totals


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class TreeSampler:
    """Samples RSS and threads of this process tree every `period_s` in a thread, and the CPU
    of every Lambda sandbox between `begin_cpu` and `end_cpu` (keeping the last value per
    sandbox, so one that ends early keeps what it used until its last sample: it loses at most
    `period_s` of its CPU figure)."""

    def __init__(
        self,
        period_s: float = SAMPLE_PERIOD_S,
        runners: Callable[[], list[LambdaRunner]] = open_runners,
        max_s: float = SAMPLER_MAX_S,
    ) -> None:
        self.samples = Samples()
        self._period_s, self._runners, self._max_s = period_s, runners, max_s
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scale-sampler", daemon=True)
        self._seen: list[LambdaRunner] = []
        """Runners met while sampling: their counters outlive close()."""
        self._watched: dict[int, str] = {}
        """Other processes whose CPU counts, by pid, under a name of their own."""
        self._counting = False
        self._cpu_start = 0.0

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> Samples:
        self._stop.set()
        self._thread.join(timeout=10)
        for runner in self._seen:
            for name in runner.function_names():
                count = runner.stats(name)["cold_starts"]
                self.samples.cold_starts[name] = self.samples.cold_starts.get(name, 0) + count
        self._seen.clear()
        return self.samples

    def _loop(self) -> None:
        ends = time.monotonic() + self._max_s
        while not self._stop.wait(self._period_s) and time.monotonic() < ends:
            self.sample()

    def watch(self, pid: int, name: str) -> None:
        """Count this process's CPU too (from begin_cpu, or from now if later), as `name`."""
        with self._lock:
            self._watched[pid] = name

    def _sandboxes(self) -> dict[int, str]:
        with self._lock:
            pids: dict[int, str] = dict(self._watched)
        for runner in self._runners():
            if runner not in self._seen:
                self._seen.append(runner)
            for name in runner.function_names():
                for pid in runner.sandbox_pids(name):
                    pids[pid] = name
        return pids

    def sample(self) -> None:
        table = process_table()
        main = next((s for s in table if s.pid == self._pid), None)
        if main is None:
            return
        tree = descendants(self._pid, table)
        sandboxes = self._sandboxes()
        with self._lock:
            s = self.samples
            s.samples += 1
            s.peak_rss_main_bytes = max(s.peak_rss_main_bytes, main.rss_bytes)
            s.peak_rss_tree_bytes = max(
                s.peak_rss_tree_bytes, main.rss_bytes + sum(p.rss_bytes for p in tree)
            )
            s.peak_threads = max(s.peak_threads, main.threads)
            if s.samples % PSS_EVERY == 1:
                pss = [read_pss(p.pid) for p in (main, *tree)]
                s.peak_pss_tree_bytes = max(s.peak_pss_tree_bytes, sum(b for b in pss if b is not None))
            if self._counting:
                self._record_cpu([p for p in tree if p.pid in sandboxes], sandboxes, base=False)

    def _record_cpu(self, stats: list[ProcStat], names: dict[int, str], *, base: bool) -> None:
        for stat in stats:
            key = (stat.pid, stat.start_ticks)
            self.samples.sandbox_cpu_s[key] = (names[stat.pid], stat.cpu_s)
            if base:
                self.samples.sandbox_cpu_base_s[key] = stat.cpu_s

    def begin_cpu(self) -> None:
        """From now on, CPU counts (sandboxes already running count from their CPU so far)."""
        sandboxes = self._sandboxes()
        stats = [s for s in (read_stat(pid) for pid in sandboxes) if s is not None]
        with self._lock:
            self._record_cpu(stats, sandboxes, base=True)
            self._cpu_start = own_cpu_s()
            self._counting = True

    def end_cpu(self) -> None:
        if not self._counting:
            return
        self.sample()
        with self._lock:
            self._counting = False
            self.samples.main_cpu_s = own_cpu_s() - self._cpu_start


# ---- one size ------------------------------------------------------------------------------


def items_answered(result: RunResult) -> int:
    """Throttled items whose API call got a final answer (direct items make no call)."""
    return len({c.key for c in result.calls if c.status not in RETRIED_STATUSES})


API_ROLE = "api"
"""The simulated legacy API's process, in the CPU split."""


def function_role(name: str, worker: str) -> str:
    """`worker`, `aggregate`, `order`, or the function's own name."""
    if name == worker:
        return "worker"
    lowered = name.lower()
    if "aggregate" in lowered:
        return "aggregate"
    # Pulumi names it `<workflow>-order-<suffix>`; a stack called "orders" must not match.
    return "order" if "-order-" in lowered or lowered.endswith("-order") else name


def figures(result: RunResult, samples: Samples, report: dict[str, Any]) -> dict[str, Any]:
    """One size's figures from its run, what the sampler saw, and the run's report.

    Wall time from StartExecution to the parent's end, items/s, the report's outcome counts, peak
    RSS of the process tree and of the main process, the main process's peak thread count, the
    API's utilization, cold starts per function, and CPU per item split into Sluice's functions
    (their sandbox processes), the emulator (the main process: moto, the front, the runner) and
    the simulated API (its own process). `run` adds how time grows with size, against the
    physical limit of the API alone.
    """
    record = result.executions[0] if result.executions else None
    size = result.scenario.items_total
    finished = record is not None and record.status != "RUNNING" and record.stopped is not None
    wall = (record.stopped - record.started) if record is not None and record.stopped else None
    throttled = report["items"]["throttled"]
    shown_wall = round(wall, 2) if wall is not None else None
    worker = str(result.stack.outputs.get("workerFunctionName", ""))
    cpu_ms: dict[str, float] = {}
    for name, seconds in samples.cpu_by_function().items():
        role = function_role(name, worker)
        cpu_ms[role] = cpu_ms.get(role, 0.0) + seconds * 1000 / size
    cold: dict[str, int] = {}
    for name, count in samples.cold_starts.items():
        role = function_role(name, worker)
        cold[role] = cold.get(role, 0) + count
    return {
        "size": size,
        "dispatch": result.scenario.dispatch,
        "deadline_s": result.scenario.deadline_s,
        "finished": finished,
        # The runner stops an execution still running at the deadline (Sluice.RunDeadline).
        "status": (record.status if finished else "DEADLINE") if record is not None else "NOT STARTED",
        "wall_s": shown_wall,
        # From the printed wall time, so the two figures agree (60 / 6.0349 s is 9.9 items/s,
        # 60 / 6.03 s is 10.0).
        "items_per_s": round(size / shown_wall, 1) if finished and shown_wall else None,
        "throttled_answered": items_answered(result),
        "succeeded": report["items"]["succeeded"],
        "failed": report["items"]["failed"],
        "lost": report["items"]["lost"],
        "duplicate_calls": report["downstream"]["duplicate_calls"],
        "over_limit": report["downstream"]["over_limit"],
        "utilization": report["downstream"]["utilization"],
        "saturated_utilization": report["downstream"]["saturated_utilization"],
        "peak_rss_tree_mib": round(samples.peak_rss_tree_bytes / 2**20, 1),
        "peak_rss_main_mib": round(samples.peak_rss_main_bytes / 2**20, 1),
        "peak_pss_tree_mib": round(samples.peak_pss_tree_bytes / 2**20, 1),
        "peak_threads": samples.peak_threads,
        "cpu_ms_per_item": {
            **{role: round(ms, 3) for role, ms in sorted(cpu_ms.items())},
            "emulator": round(samples.main_cpu_s * 1000 / size, 3),
        },
        "cold_starts": dict(sorted(cold.items())),
        "physical_limit_s": round(physical_limit_s(throttled, result.scenario.api), 3),
    }


def run_size(scenario_: Scenario, period_s: float = SAMPLE_PERIOD_S) -> dict[str, Any]:
    """Run one size with the sampler on; nothing per item outlives this call but the figures."""
    sampler = TreeSampler(period_s).start()
    begun = threading.Event()

    def tick(api: LegacyApi, executions: list[ExecutionRecord]) -> None:
        # The runner ticks right after StartExecution and after each poll: CPU counts from the
        # first tick with the execution to the first with it ended (deploy and teardown left out).
        if executions and not begun.is_set():
            if api.pid is not None:
                sampler.watch(api.pid, API_ROLE)
            sampler.begin_cpu()
            begun.set()
        if executions and all(r.status != "RUNNING" for r in executions):
            sampler.end_cpu()

    try:
        result = run_scenario(scenario_, tick)
    finally:
        sampler.end_cpu()  # a run that hit its deadline ends counting here
        samples = sampler.stop()
    return figures(result, samples, build_report(result))


# ---- all sizes -----------------------------------------------------------------------------


def growth(points: Sequence[tuple[int, float]]) -> dict[str, Any]:
    """The least-squares slope of log(time) against log(size), and what it says.

    A slope of 1 is linear (twice the items, twice the time); below, fixed costs still weigh;
    above, each item costs more the larger the batch.
    """
    distinct = sorted({size for size, _ in points})
    if len(distinct) < 2:
        return {"slope": None, "statement": "fewer than two finished sizes: no growth to fit"}
    xs = [math.log(size) for size, _ in points]
    ys = [math.log(seconds) for _, seconds in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    low, high = LINEAR_BAND
    if slope < low:
        kind = "sublinear: fixed costs still weigh at these sizes"
    elif slope <= high:
        kind = "linear"
    else:
        kind = "superlinear: each item costs more the larger the batch"
    span = f"{distinct[0]:,} to {distinct[-1]:,} items"
    return {"slope": round(slope, 2), "statement": f"time grows as N^{slope:.2f} from {span}: {kind}"}


def run(
    sizes: Sequence[int],
    dispatch: str = "ticket",
    deadlines: Sequence[float] | None = None,
    *,
    keep_going: bool = False,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every size in turn. A size that misses its deadline is reported unfinished; the sizes
    after it are skipped (a larger batch would not finish either) unless `keep_going`."""
    results: dict[str, Any] = {
        "dispatch": dispatch,
        "api": {"limit": API.concurrency_limit, "service_s": API.service_time_s},
    }
    rows: list[dict[str, Any]] = []
    stopped_at: int | None = None
    for n, size in enumerate(sizes):
        if stopped_at is not None:
            rows.append({"size": size, "status": "SKIPPED", "finished": False, "skipped_after": stopped_at})
            continue
        deadline = deadlines[min(n, len(deadlines) - 1)] if deadlines else None
        row = run_size(scenario(size, dispatch, deadline))
        rows.append(row)
        if on_done is not None:
            on_done(row)
        if not row["finished"] and not keep_going:
            stopped_at = size
    results["sizes"] = rows
    results["growth"] = growth([(r["size"], r["wall_s"]) for r in rows if r["finished"] and r["wall_s"]])
    return results


COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...] = (
    ("items", lambda r: r["size"]),
    ("status", lambda r: r["status"]),
    ("wall s", lambda r: r.get("wall_s")),
    ("items/s", lambda r: r.get("items_per_s")),
    ("API limit s", lambda r: r.get("physical_limit_s")),
    ("succeeded", lambda r: r.get("succeeded")),
    ("failed", lambda r: r.get("failed")),
    ("lost", lambda r: r.get("lost")),
    ("throttled answered", lambda r: r.get("throttled_answered")),
    ("dup calls", lambda r: r.get("duplicate_calls")),
    ("over limit", lambda r: r.get("over_limit")),
    ("util", lambda r: r.get("utilization")),
    ("util saturated", lambda r: r.get("saturated_utilization")),
    ("peak RSS MiB (tree / main)", lambda r: _pair(r, "peak_rss_tree_mib", "peak_rss_main_mib")),
    ("peak PSS MiB (tree)", lambda r: r.get("peak_pss_tree_mib")),
    ("peak threads", lambda r: r.get("peak_threads")),
    ("CPU ms/item worker", lambda r: _cpu(r, "worker")),
    ("CPU ms/item aggregate", lambda r: _cpu(r, "aggregate")),
    ("CPU ms/item order", lambda r: _cpu(r, "order")),
    ("CPU ms/item emulator", lambda r: _cpu(r, "emulator")),
    ("CPU ms/item API", lambda r: _cpu(r, API_ROLE)),
    ("cold starts", lambda r: _cold(r.get("cold_starts"))),
)


def _pair(row: dict[str, Any], a: str, b: str) -> str | None:
    return f"{row[a]} / {row[b]}" if a in row else None


def _cpu(row: dict[str, Any], role: str) -> float | None:
    """A function that never ran used no CPU; a size that never ran has no figure."""
    return row["cpu_ms_per_item"].get(role, 0.0) if "cpu_ms_per_item" in row else None


def _cold(counts: dict[str, int] | None) -> str | None:
    if counts is None:
        return None
    return ", ".join(f"{role} {n}" for role, n in counts.items()) or "0"


def cells(row: dict[str, Any]) -> list[str]:
    return ["-" if (v := get(row)) is None else str(v) for _, get in COLUMNS]


def markdown(results: dict[str, Any]) -> str:
    header = [name for name, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in results["sizes"]]
    lines.append("")
    lines.append(f"Growth: {results['growth']['statement']}.")
    lines += [f"{line}." for line in notes(results)]
    return "\n".join(lines) + "\n"


def notes(results: dict[str, Any]) -> list[str]:
    """A sentence for each size that did not finish or was skipped: never hidden."""
    out = []
    for row in results["sizes"]:
        if row["status"] == "SKIPPED":
            out.append(f"{row['size']:,} items: skipped, {row['skipped_after']:,} did not finish")
        elif not row["finished"]:
            out.append(
                f"{row['size']:,} items: did not finish within {row['deadline_s']:.0f} s "
                f"({row['throttled_answered']:,} of {row['size'] // 2:,} throttled items answered)"
            )
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only --plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - same

    rows = [r for r in results["sizes"] if r["status"] != "SKIPPED"]
    done = [r for r in rows if r["finished"]]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot([r["size"] for r in done], [r["wall_s"] for r in done], "o-", label="wall time (measured)")
    late = [r for r in rows if not r["finished"]]
    if late:
        ax.plot(
            [r["size"] for r in late],
            [r["deadline_s"] for r in late],
            "^",
            color="red",
            label="did not finish by (deadline)",
        )
    ax.plot(
        [r["size"] for r in rows],
        [r["physical_limit_s"] for r in rows],
        "s--",
        color="grey",
        label="physical limit: the API alone (N/2 x 5 ms / 16)",
    )
    slope = results["growth"]["slope"]
    if slope is not None and done:
        first = done[0]
        xs = [r["size"] for r in done]
        ax.plot(
            xs,
            [first["wall_s"] * (x / first["size"]) ** slope for x in xs],
            ":",
            label=f"fit: time ~ N^{slope}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("items in one execution")
    ax.set_ylabel("seconds, StartExecution to the parent's end")
    ax.set_title(
        f"Sluice scale, {results['dispatch']} dispatch, one execution per size\n"
        f"{results['growth']['statement']}",
        fontsize=9,
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(results: dict[str, Any], out: Path | None, md: Path | None, png: Path | None) -> None:
    write_figures(results, out, md, png, markdown=markdown, plot=plot)


def ok(results: dict[str, Any]) -> bool:
    """Every size finished and accounted for every item, within the limit, no duplicates."""
    return all(
        r["finished"] and r["lost"] == 0 and r["over_limit"] == 0 and r["duplicate_calls"] == 0
        for r in results["sizes"]
    )
