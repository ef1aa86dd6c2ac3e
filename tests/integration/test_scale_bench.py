"""The scale benchmark at a tiny size, through the CLI and the real embedded AWS: the figures it
prints and writes add up.

What this cannot prove: the times, memory and CPU AWS would show (every service here shares this
machine's cores), nor anything about large sizes: those come from `make bench-scale`, not a test.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from localcloud.cli import main

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow


def test_scale_at_60_items_prints_consistent_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, md, png = tmp_path / "scale.json", tmp_path / "scale.md", tmp_path / "scale.png"
    argv = ["scale", "--sizes", "60", "--deadline", "100", "--out", str(out), "--markdown", str(md)]
    assert main([*argv, "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    (row,) = json.loads(out.read_text())["sizes"]
    assert (row["size"], row["status"], row["finished"]) == (60, "SUCCEEDED", True)
    assert (row["succeeded"] + row["failed"], row["lost"]) == (60, 0)
    assert (row["duplicate_calls"], row["over_limit"], row["throttled_answered"]) == (0, 0, 30)
    assert 0 < row["wall_s"] <= 100
    assert row["items_per_s"] == round(60 / row["wall_s"], 1) > 0
    assert row["peak_rss_tree_mib"] > row["peak_rss_main_mib"] > 0  # sandboxes are processes
    assert 0 < row["peak_pss_tree_mib"] < row["peak_rss_tree_mib"]  # shared pages count once
    assert row["peak_threads"] > 1
    assert row["cold_starts"]["worker"] >= 1
    assert row["cold_starts"]["aggregate"] >= 1
    cpu = row["cpu_ms_per_item"]
    assert cpu["worker"] > 0
    assert cpu["aggregate"] > 0
    assert cpu["emulator"] > 0
    assert cpu["api"] > 0  # the simulated API's own process, counted apart from the emulator
    # The same figures are printed and written as Markdown.
    assert f"│    60 │ SUCCEEDED │ {row['wall_s']:>6} │" in printed
    assert "Growth: fewer than two finished sizes: no growth to fit" in printed
    assert f"| 60 | SUCCEEDED | {row['wall_s']} | {row['items_per_s']} |" in md.read_text()
    assert png.read_bytes().startswith(b"\x89PNG")
