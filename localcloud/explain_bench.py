"""How long `sluice explain` takes as its batch grows: one running batch each of 1,000 and
100,000 items from S3 (the scale benchmark's mix), the command run over HTTP against the
embedded AWS for items spread over the batch while it runs. `python -m localcloud explain-bench`
runs it (`make bench-explain`; BENCHMARKS.md).

The batches are not run to the end: explain's cost is what it reads while items wait, are at the
API and finish, so each size runs for a fixed window and its explanations are timed inside it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localcloud import scale_bench
from localcloud.legacy_api import ApiProfile
from localcloud.runner import run_scenario
from localcloud.scenario import SOURCE_S3, Batch, Scenario

if TYPE_CHECKING:
    from collections.abc import Sequence

    from localcloud.legacy_api import LegacyApi
    from localcloud.runner import ExecutionRecord

SIZES = (1_000, 100_000)
ROUNDS_AT_S = (8.0, 25.0, 45.0)
"""Seconds after the batch starts when each round of explanations runs."""
WINDOW_S = 60.0
"""Each size's run ends here (its batch unfinished)."""
SAMPLES = 12
"""Items explained per round spread evenly over the batch (and EARLY)."""
COMMAND_TIMEOUT_S = 60.0


EARLY = (250, 500, 750)
"""Also asked about: items the Map opens first (the batch lists HIGH first), likely waiting."""


def indexes(size: int, count: int = SAMPLES) -> list[int]:
    spread = {round(n * (size - 1) / (count - 1)) for n in range(count)}
    return sorted(spread | {i for i in EARLY if i < size})


SLOW_API = ApiProfile(concurrency_limit=4, service_time_s=0.05)
"""A slow legacy API (80 calls a second at most): the batch's items wait, as when an operator asks."""
MIXES = ("waiting", "scale")


def scenario(size: int, mix: str) -> Scenario:
    """`waiting`: every item throttled (10% HIGH, 30% NORMAL, 60% BATCH) against SLOW_API, so the
    Map keeps its children open and most items wait; `scale`: the scale benchmark's mix (half
    direct) against its fast API, the emulator as busy as it gets."""
    if mix == "scale":
        return scale_bench.scenario(size, deadline_s=WINDOW_S)
    counts = {p: round(size * share) for p, share in scale_bench.PRIORITY_SHARES[:-1]}
    counts[scale_bench.PRIORITY_SHARES[-1][0]] = size - sum(counts.values())
    return Scenario(
        name=f"explain-{size}",
        batches=(Batch(start_s=0.0, counts=counts),),
        api=SLOW_API,
        deadline_s=WINDOW_S,
        source=SOURCE_S3,
    )


def run_size(size: int, mix: str = MIXES[0]) -> dict[str, Any]:
    """Explain `SAMPLES` items at each of ROUNDS_AT_S; times in seconds, with each sentence's
    opening words (to show which reads answered it)."""
    timings: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        outputs = Path(tmp) / "stack.json"
        where: dict[str, str] = {}
        begun: list[float] = []
        done: set[float] = set()

        def deployed(endpoint: str, stack: dict[str, Any]) -> None:
            where["endpoint"] = endpoint
            outputs.write_text(json.dumps(stack))

        def tick(api: LegacyApi, executions: list[ExecutionRecord]) -> None:
            del api
            if not executions:
                return
            if not begun:
                begun.append(time.monotonic())
            elapsed = time.monotonic() - begun[0]
            due = [r for r in ROUNDS_AT_S if r not in done and elapsed >= r]
            if not due and executions[0].status != "RUNNING" and not done:
                due = [round(elapsed, 1)]  # a batch that ended before the first round: once at its end
            for round_s in due[:1]:
                done.add(round_s)
                for index in indexes(size):
                    timing = _explain(executions[0].arn, index, outputs, where)
                    timings.append({"round_s": round_s, "index": index} | timing)

        run_scenario(scenario(size, mix), tick, deployed)
    ok = [t for t in timings if t["code"] == 0]
    seconds = [t["seconds"] for t in ok]
    return {
        "size": size,
        "mix": mix,
        "explained": len(seconds),
        "refused": len(timings) - len(ok),
        "median_s": round(statistics.median(seconds), 3) if seconds else None,
        "max_s": round(max(seconds), 3) if seconds else None,
        "median_wall_s": round(statistics.median(t["wall_s"] for t in ok), 3) if ok else None,
        "requests": sorted({t["requests"] for t in ok if t.get("requests") is not None}),
        "kinds": sorted({t["says"] for t in timings}),
        "timings": timings,
    }


TIMED = """
import json, sys, time
begun = time.perf_counter()
import botocore.client
from sluice_fanout.cli import explain
imported = time.perf_counter()
calls = []
make_api_call = botocore.client.BaseClient._make_api_call
def counted(client, operation, params):
    calls.append(operation)
    return make_api_call(client, operation, params)
botocore.client.BaseClient._make_api_call = counted
code = explain.main(sys.argv[1:])
print(json.dumps({"code": code, "import_s": imported - begun, "answer_s": time.perf_counter() - imported,
                  "requests": len(calls)}), file=sys.stderr)
"""
"""The command in a process of its own, as an operator runs it (the embedded AWS shares this
one's interpreter lock): its imports and its answer timed apart."""


def _explain(execution: str, index: int, outputs: Path, where: dict[str, str]) -> dict[str, Any]:
    argv = [execution, str(index), "--stack-outputs", str(outputs), "--endpoint-url", where["endpoint"]]
    begun = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - this interpreter, fixed code, arguments of our own
        [sys.executable, "-c", TIMED, *argv],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    wall = time.perf_counter() - begun
    timing = (
        json.loads(done.stderr.strip().splitlines()[-1]) if done.stderr.strip() else {"code": done.returncode}
    )
    text = done.stdout.split(": ", 1)[-1].strip() or done.stderr.strip()
    return {
        "code": timing.get("code", done.returncode),
        "seconds": round(timing.get("answer_s", wall), 3),
        "import_s": round(timing.get("import_s", 0.0), 3),
        "wall_s": round(wall, 3),
        "requests": timing.get("requests"),
        "says": " ".join(text.split()[:2]),
        "text": text,
    }


def run(sizes: Sequence[int] = SIZES, mix: str = MIXES[0]) -> dict[str, Any]:
    rows = [run_size(size, mix) for size in sizes]
    small, large = rows[0], rows[-1]
    ratio = (
        round(large["median_s"] / small["median_s"], 2)
        if len(rows) > 1 and large["median_s"] and small["median_s"]
        else None
    )
    return {"mix": mix, "sizes": rows, "median_ratio_largest_to_smallest": ratio}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| items in the batch | explained | AWS requests each | answer, median | answer, slowest "
        "| whole command, median | what they said |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['size']:,} | {r['explained']} | {_span(r['requests'])} "
        f"| {r['median_s']} s | {r['max_s']} s | {r['median_wall_s']} s | {', '.join(r['kinds'])} |"
        for r in results["sizes"]
    ]
    if results["median_ratio_largest_to_smallest"] is not None:
        lines.append("")
        lines.append(
            f"Median, largest batch / smallest: {results['median_ratio_largest_to_smallest']}x (same run)."
        )
    return "\n".join(lines)


def _span(values: list[int]) -> str:
    return (
        "-" if not values else (f"{values[0]}" if values[0] == values[-1] else f"{values[0]} to {values[-1]}")
    )


def write(results: dict[str, Any], out: Path | None, markdown_path: Path | None) -> None:
    if out is not None:
        out.write_text(json.dumps(results, indent=2))
    if markdown_path is not None:
        markdown_path.write_text(markdown(results) + "\n")
