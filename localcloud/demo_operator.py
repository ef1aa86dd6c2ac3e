"""What the demo shows an operator at its end: `sluice explain` for one item that waited, asked
while it waited and again once done, and `sluice batch status` for its batch. The real commands,
run over HTTP against the embedded AWS from the stack outputs, as on AWS."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sluice_fanout.cli import batch, explain

if TYPE_CHECKING:
    from collections.abc import Callable

    from localcloud.legacy_api import LegacyApi
    from localcloud.runner import ExecutionRecord


def sluice_command(
    main: Callable[[list[str]], int], argv: list[str], outputs: Path, endpoint: str
) -> tuple[int, str, str]:
    """One `sluice` subcommand (its module's `main`) run against a stack's outputs file and the
    embedded AWS's endpoint, as an operator would: its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--stack-outputs", str(outputs), "--endpoint-url", endpoint])
    return code, out.getvalue(), err.getvalue()


ASK_AFTER_S = 3.5
"""When the item is explained the first time: after the demo's HIGH batch (3 s) has arrived."""


class DemoOperator:
    """Asks about one item of the first batch mid-run and at the end (the demo asks about its
    last BATCH item, which waits longest); `lines()` is what the demo prints."""

    def __init__(self, index: int) -> None:
        self._index = index
        self._dir = tempfile.TemporaryDirectory()
        self._outputs = Path(self._dir.name) / "stack.json"
        self._endpoint = ""
        self._started: float | None = None
        self._mid: tuple[float, str] | None = None
        self._end: list[str] = []

    def deployed(self, endpoint: str, outputs: dict[str, Any]) -> None:
        self._endpoint = endpoint
        self._outputs.write_text(json.dumps(outputs))

    def tick(self, api: LegacyApi, executions: list[ExecutionRecord]) -> None:
        del api
        if not executions:
            return
        if self._started is None:
            self._started = time.monotonic()
        first = executions[0]
        elapsed = time.monotonic() - self._started
        if self._mid is None and first.status == "RUNNING" and elapsed >= ASK_AFTER_S:
            self._mid = (elapsed, self._explain(first.arn))
        if not self._end and all(r.status != "RUNNING" for r in executions):
            self._end = [self._command_line("explain", first.arn, str(self._index))]
            if self._mid is not None:
                self._end.append(f"  while it waited ({self._mid[0]:.1f} s in): {self._mid[1]}")
            self._end.append(f"  at the end: {self._explain(first.arn)}")
            self._end.append(self._command_line("batch status", first.arn))
            self._end += [f"  {line}" for line in self._run(batch.main, ["status", first.arn]).splitlines()]

    def lines(self) -> list[str]:
        return self._end

    def close(self) -> None:
        self._dir.cleanup()

    def _explain(self, execution: str) -> str:
        return self._run(explain.main, [execution, str(self._index)]).strip()

    def _run(self, main: Callable[[list[str]], int], argv: list[str]) -> str:
        code, out, err = sluice_command(main, argv, self._outputs, self._endpoint)
        return out if code == 0 else f"(exit {code}) {err.strip()}"

    def _command_line(self, command: str, execution: str, *extra: str) -> str:
        return " ".join(["$ sluice", command, execution, *extra, "--stack-outputs stack.json"])
