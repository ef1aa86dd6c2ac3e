"""`python -m localcloud demo | run --scenario FILE --report FILE [--plot FILE.png]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from localcloud.demo_operator import DemoOperator
from localcloud.report import build_report
from localcloud.runner import ExecutionRecord, RunResult, batch_items, run_scenario
from localcloud.scenario import DEMO, Scenario, ScenarioError, load

if TYPE_CHECKING:
    from collections.abc import Callable

    from localcloud.legacy_api import LegacyApi

console = Console(stderr=True)


def run_with_progress(scenario: Scenario, operator: DemoOperator | None = None) -> RunResult:
    totals: Counter[str] = Counter()
    for batch in scenario.batches:
        totals.update(batch.counts)
    with Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        tasks = {p: progress.add_task(p, total=n) for p, n in sorted(totals.items())}

        def tick(api: LegacyApi, _executions: list[ExecutionRecord]) -> None:
            done: dict[str, set[str]] = {p: set() for p in tasks}
            for call in api.snapshot():
                if 200 <= call.status < 300 and call.priority in done:
                    done[call.priority].add(call.key)
            for p, task in tasks.items():
                progress.update(task, completed=len(done[p]))
            if operator is not None:
                operator.tick(api, _executions)

        return run_scenario(scenario, tick, operator.deployed if operator is not None else None)


def _longest_waiting(scenario: Scenario) -> int:
    """The first batch's last item of its lowest priority: it waits behind all the others."""
    items = batch_items(scenario, 0)
    lowest = [i for i, item in enumerate(items) if item.get("priority") is not None]
    return max(lowest, key=lambda i: (_rank(items[i].get("priority")), i)) if lowest else 0


def _rank(priority: Any) -> int:
    order = ("HIGH", "NORMAL", "BATCH")
    return order.index(priority) if priority in order else len(order)


def summary_lines(report: dict[str, Any]) -> list[str]:
    items, down, worker, ex = report["items"], report["downstream"], report["worker"], report["execution"]
    return [
        f"items {items['total']} (throttled {items['throttled']}, direct {items['direct']}): "
        f"succeeded {items['succeeded']}, failed {items['failed']}, lost {items['lost']}",
        f"API limit {down['limit']}: max in flight {down['max_in_flight']}, over limit {down['over_limit']}, "
        f"calls {down['calls']}, duplicates {down['duplicate_calls']}, utilization {down['utilization']}",
        f"worker invocations {worker['invocations']}, yields {worker['yields']}, forced {worker['forced']}, "
        f"throttled {worker['throttled']}; executions {ex['status']} in {ex['wall_s']} s",
    ]


def summary_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"Sluice run: {report['scenario']}")
    table.add_column("priority")
    table.add_column("items", justify="right")
    table.add_column("succeeded", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("wait p50 s", justify="right")
    table.add_column("wait p95 s", justify="right")
    table.add_column("wait max s", justify="right")
    table.add_column("from start p95 s", justify="right")
    for p, row in report["by_priority"].items():
        w = row["wait_s"]
        table.add_row(
            p,
            str(row["count"]),
            str(row["succeeded"]),
            str(row["failed"]),
            str(w["p50"]),
            str(w["p95"]),
            str(w["max"]),
            str(row["latency_s"]["p95"]),
        )
    return table


def plot(result: RunResult, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only --plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - same

    calls = [c for c in result.calls if c.in_flight > 0]
    if not calls:
        raise ValueError("no API calls to plot")
    t0 = min(c.start for c in calls)
    events = sorted([(c.start - t0, 1) for c in calls] + [(c.end - t0, -1) for c in calls])
    xs, ys, level = [0.0], [0], 0
    for t, delta in events:
        xs.append(t)
        ys.append(level)
        level += delta
        xs.append(t)
        ys.append(level)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(xs, ys, label="calls in flight")
    top.axhline(result.scenario.api.concurrency_limit, color="red", linestyle="--", label="API limit")
    top.set_ylabel("in flight")
    top.legend(loc="upper right")
    for priority in sorted({str(c.priority) for c in calls if c.priority}):
        done = sorted(c.end - t0 for c in calls if c.priority == priority and 200 <= c.status < 300)
        bottom.step(done, range(1, len(done) + 1), where="post", label=priority)
    bottom.set_xlabel("seconds since first call")
    bottom.set_ylabel("completed items")
    bottom.legend(loc="lower right")
    fig.suptitle(f"Sluice {result.scenario.name}: in-flight calls and completions by priority")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


Figures = dict[str, Any]
BENCH_COLUMNS: tuple[tuple[str, Callable[[Figures], Any]], ...] = (
    ("util", lambda f: f["utilization"]),
    ("util saturated", lambda f: f["saturated_utilization"]),
    ("over", lambda f: f["over_limit"]),
    ("lost", lambda f: f["lost"]),
    ("p95 HIGH s", lambda f: f["p95_wait_s"].get("HIGH", "-")),
    ("p95 NORMAL s", lambda f: f["p95_wait_s"].get("NORMAL", "-")),
    ("p95 BATCH s", lambda f: f["p95_wait_s"].get("BATCH", "-")),
    ("wasted/item", lambda f: f["wasted_per_item"]),
    ("billed wasted/item", lambda f: f["billed_wasted_per_item"]),
    ("SQS req/item", lambda f: f["sqs_requests_per_item"]),
    ("invokes/item", lambda f: f["invocations_per_item"]),
    ("transitions/item", lambda f: f["transitions_per_item"]),
    ("USD/M items", lambda f: f["usd_per_million_items"]),
    ("billed transitions/item", lambda f: f["billed_transitions_per_item"]),
    ("billed USD/M items", lambda f: f["billed_usd_per_million_items"]),
)


def bench_table(results: dict[str, Any]) -> Table:
    table = Table(title="Sluice dispatch benchmark")
    table.add_column("scenario")
    table.add_column("mode")
    for name, _ in BENCH_COLUMNS:
        table.add_column(name, justify="right")
    for name, modes in results.items():
        for mode, f in modes.items():
            table.add_row(name, mode, *(str(get(f)) for _, get in BENCH_COLUMNS))
    return table


def bench_markdown(results: dict[str, Any]) -> str:
    """The figures' table, then each slot's time by part (shares of limit x the calls' window)."""
    header = ["scenario", "mode", *(name for name, _ in BENCH_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, modes in results.items():
        for mode, f in modes.items():
            lines.append("| " + " | ".join([name, mode, *(str(get(f)) for _, get in BENCH_COLUMNS)]) + " |")
    parts = list(
        dict.fromkeys(p for modes in results.values() for f in modes.values() for p in f["slot_time"])
    )
    lines += ["", "| scenario | mode | " + " | ".join(parts) + " |", "|" + "---|" * (len(parts) + 2)]
    for name, modes in results.items():
        for mode, f in modes.items():
            shares = [str(f["slot_time"].get(p, "-")) for p in parts]
            lines.append("| " + " | ".join([name, mode, *shares]) + " |")
    return "\n".join(lines) + "\n"


def bench_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only --plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - same

    names = list(results)
    modes = list(next(iter(results.values())))
    fig, (util, wait) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(modes)
    for n, mode in enumerate(modes):
        xs = [i + n * width for i in range(len(names))]
        util.bar(xs, [results[s][mode]["utilization"] for s in names], width, label=mode)
        wait.bar(xs, [results[s][mode]["p95_wait_s"].get("HIGH") or 0 for s in names], width, label=mode)
    for ax, title in ((util, "utilization of the API's capacity"), (wait, "HIGH p95 wait (s)")):
        ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(names))], names, rotation=20)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_bench_command(
    names: list[str] | None,
    scale: float,
    out: Path | None,
    markdown: Path | None = None,
    plot_path: Path | None = None,
) -> int:
    from localcloud.bench import run_bench  # noqa: PLC0415 - only the bench command needs it

    def done(name: str, mode: str, figures: dict[str, Any]) -> None:
        console.print(f"{name} {mode}: utilization {figures['utilization']}, wall {figures['wall_s']} s")

    results = run_bench(names, scale, done)
    Console(width=200).print(bench_table(results))
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"figures: {out}")
    if markdown is not None:
        markdown.write_text(bench_markdown(results))
    if plot_path is not None:
        bench_plot(results, plot_path)
    ok = all(f["lost"] == 0 and f["over_limit"] == 0 for modes in results.values() for f in modes.values())
    return 0 if ok else 1


def run_capacity_command(
    scale: float, out: Path | None, markdown: Path | None, plot_path: Path | None
) -> int:
    from localcloud import capacity_bench  # noqa: PLC0415 - only this command needs it

    def done(mode: str, figures: dict[str, Any]) -> None:
        console.print(
            f"{mode}: 429 share after the drop {figures['after_drop']['share_429']}, "
            f"to 90% after the drop {figures['to_90pct_after_drop_s']} s, "
            f"after the recovery {figures['to_90pct_after_recovery_s']} s"
        )

    results = capacity_bench.run(capacity_bench.Plan().scaled(scale), done)
    console.print(capacity_bench.markdown(results), highlight=False)
    capacity_bench.write(results, out, markdown, plot_path)
    ok = all(results[m]["executions_not_succeeded"] == 0 for m in ("adaptive", "fixed"))
    return 0 if ok else 1


def run_fairness_command(
    scale: float, out: Path | None, markdown: Path | None, plot_path: Path | None
) -> int:
    from localcloud import fairness_bench  # noqa: PLC0415 - only this command needs it

    def done(mode: str, figures: dict[str, Any]) -> None:
        quiet = figures.get("quiet", {})
        console.print(f"{mode}: quiet p95 wait {quiet.get('p95_wait_s')} s, {figures['calls_per_s']} calls/s")

    results = fairness_bench.run(fairness_bench.Plan().scaled(scale), done)
    console.print(fairness_bench.markdown(results), highlight=False)
    fairness_bench.write(results, out, markdown, plot_path)
    return 0 if all(results[m]["executions_not_succeeded"] == 0 for m in fairness_bench.MODES) else 1


def scale_table(results: dict[str, Any]) -> Table:
    from localcloud import scale_bench  # noqa: PLC0415 - only the scale command needs it

    table = Table(title=f"Sluice scale benchmark ({results['dispatch']} dispatch, one execution per size)")
    for name, _ in scale_bench.COLUMNS:
        table.add_column(name, justify="left" if name == "status" else "right")
    for row in results["sizes"]:
        table.add_row(*scale_bench.cells(row))
    return table


def run_scale_command(
    sizes: list[int],
    dispatch: str,
    deadlines: list[float] | None,
    *,
    keep_going: bool,
    out: Path | None,
    markdown: Path | None,
    plot_path: Path | None,
) -> int:
    from localcloud import scale_bench  # noqa: PLC0415 - only the scale command needs it

    def done(row: dict[str, Any]) -> None:
        if row["finished"]:
            console.print(f"{row['size']:,} items: {row['status']} in {row['wall_s']} s")
        else:
            console.print(
                f"[red]{row['size']:,} items: did not finish within {row['deadline_s']:.0f} s "
                f"({row['throttled_answered']:,} throttled items answered)"
                + ("" if keep_going else "; stopping, larger sizes skipped (--keep-going runs them)")
                + "[/red]"
            )

    results = scale_bench.run(sizes, dispatch, deadlines, keep_going=keep_going, on_done=done)
    out_console = Console(width=240)
    out_console.print(scale_table(results))
    out_console.print(f"Growth: {results['growth']['statement']}", highlight=False)
    for note in scale_bench.notes(results):
        out_console.print(note, highlight=False)
    scale_bench.write(results, out, markdown, plot_path)
    return 0 if scale_bench.ok(results) else 1


def run_explain_bench_command(sizes: list[int], mix: str, out: Path | None, markdown: Path | None) -> int:
    from localcloud import explain_bench  # noqa: PLC0415 - only this command needs it

    if any(n < 2 for n in sizes):
        console.print(f"[red]explain-bench: --sizes must be >= 2, got {sizes}[/red]")
        return 2
    results = explain_bench.run(sizes, mix)
    console.print(explain_bench.markdown(results), highlight=False)
    explain_bench.write(results, out, markdown)
    return 0 if all(r["explained"] and not r["refused"] for r in results["sizes"]) else 1


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0911 - one return per command
    parser = argparse.ArgumentParser(prog="python -m localcloud", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="deploy the stack to the embedded AWS and push a mixed batch")
    demo.add_argument("--report", type=Path, help="write the report JSON here")
    demo.add_argument("--plot", type=Path, help="write a PNG of in-flight calls and completions")
    demo.add_argument("--scale", type=float, default=1.0, help="multiply the demo's item counts")
    run = sub.add_parser("run", help="run a scenario file")
    run.add_argument("--scenario", type=Path, required=True)
    run.add_argument("--report", type=Path, required=True)
    run.add_argument("--plot", type=Path)
    bench = sub.add_parser("bench", help="run the dispatch benchmark: yield vs ticket vs fifo")
    bench.add_argument("--scenarios", nargs="*", help="only these (default: all)")
    bench.add_argument("--scale", type=float, default=1.0, help="multiply every scenario's item counts")
    bench.add_argument("--out", type=Path, help="write the figures as JSON here")
    bench.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    bench.add_argument("--plot", type=Path, help="write a PNG comparing the modes")
    fairness = sub.add_parser(
        "fairness",
        help="a noisy tenant's backlog and a quiet tenant's few items: keys off, on, and quiet alone",
    )
    fairness.add_argument("--scale", type=float, default=1.0, help="multiply both tenants' item counts")
    fairness.add_argument("--out", type=Path, help="write the figures as JSON here")
    fairness.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    fairness.add_argument("--plot", type=Path, help="write a PNG of waits and throughput")
    capacity = sub.add_parser(
        "capacity", help="the API's capacity halves mid-run, then recovers: adaptive limit vs fixed"
    )
    capacity.add_argument("--time-scale", type=float, default=1.0, help="multiply the phases' lengths")
    capacity.add_argument("--out", type=Path, help="write the figures as JSON here")
    capacity.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    capacity.add_argument("--plot", type=Path, help="write a PNG of throughput, 429s and the limit")
    scale = sub.add_parser("scale", help="one execution each of 1,000 / 10,000 / 100,000 items from S3")
    scale.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    scale.add_argument("--dispatch", choices=["ticket", "yield"], default="ticket")
    scale.add_argument(
        "--deadline",
        type=float,
        nargs="+",
        help="seconds each size may take: one value for all, or one per size (default: 120 + 0.02 per item)",
    )
    scale.add_argument(
        "--keep-going", action="store_true", help="run the next size after one that did not finish"
    )
    scale.add_argument("--out", type=Path, help="write the figures as JSON here")
    scale.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    scale.add_argument("--plot", type=Path, help="write a log-log PNG of time against size")
    explain_bench = sub.add_parser(
        "explain-bench",
        help="how long `sluice explain` takes in a running batch of 1,000 and of 100,000 items",
    )
    explain_bench.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000])
    explain_bench.add_argument(
        "--mix",
        choices=["waiting", "scale"],
        default="waiting",
        help="waiting: every item throttled, a slow API; scale: the scale benchmark's batch and fast API",
    )
    explain_bench.add_argument("--out", type=Path, help="write the figures as JSON here")
    explain_bench.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    args = parser.parse_args(argv)
    if args.command == "explain-bench":
        return run_explain_bench_command(args.sizes, args.mix, args.out, args.markdown)
    if args.command == "scale":
        if any(n < 2 for n in args.sizes) or (args.deadline and any(d <= 0 for d in args.deadline)):
            console.print(
                f"[red]scale: --sizes must be >= 2 and --deadline > 0, "
                f"got {args.sizes} and {args.deadline}[/red]"
            )
            return 2
        return run_scale_command(
            args.sizes,
            args.dispatch,
            args.deadline,
            keep_going=args.keep_going,
            out=args.out,
            markdown=args.markdown,
            plot_path=args.plot,
        )
    if args.command == "fairness":
        return run_fairness_command(args.scale, args.out, args.markdown, args.plot)
    if args.command == "capacity":
        return run_capacity_command(args.time_scale, args.out, args.markdown, args.plot)
    if args.command == "bench":
        return run_bench_command(args.scenarios, args.scale, args.out, args.markdown, args.plot)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())


def run_command(args: argparse.Namespace) -> int:
    """`demo` or `run`: one scenario with progress bars, then its summary."""
    try:
        scenario = DEMO.scaled(args.scale) if args.command == "demo" else load(args.scenario)
    except ScenarioError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    operator = DemoOperator(_longest_waiting(scenario)) if args.command == "demo" else None
    try:
        result = run_with_progress(scenario, operator)
    finally:
        if operator is not None:
            operator.close()
    report = build_report(result)
    out = Console(width=110)
    out.print(summary_table(report))
    for line in summary_lines(report):
        out.print(line, highlight=False)
    if operator is not None and operator.lines():
        out.print("\nAn operator's view of the first batch (docs/operations.md):", highlight=False)
        for line in operator.lines():
            out.print(line, highlight=False, markup=False, soft_wrap=True)
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"report: {args.report}")
    if args.plot:
        plot(result, args.plot)
        console.print(f"plot: {args.plot}")
    ok = report["items"]["lost"] == 0 and report["downstream"]["over_limit"] == 0
    return 0 if ok else 1
