"""The `sluice` command: one entry point, a subcommand per module, help for each."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from sluice_fanout import cli

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_installs_the_sluice_script() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"sluice": "sluice_fanout.cli:main"}


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        cli.main(["--help"])
    assert ended.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name, help_text in cli.COMMANDS.items():
        assert f"{name} {help_text}" in out


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_each_command_explains_itself(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        cli.main([command, "--help"])
    assert ended.value.code == 0
    assert f"usage: sluice {command}" in capsys.readouterr().out


def test_a_command_gets_the_rest_of_the_line() -> None:
    # dlq refuses a run that names no queues, after parsing its own arguments: exit 2, not argparse's.
    assert cli.main(["dlq", "inspect", "--peek", "1"]) == 2


def test_python_dash_m_runs_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sluice_fanout.cli", "dlq", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0
    assert "usage: sluice dlq" in done.stdout
    assert "redrive" in done.stdout


def test_the_lambda_archive_holds_no_operator_tooling() -> None:
    handlers = ROOT / "sluice_fanout" / "handlers"
    assert not (handlers / "dlq.py").exists()
    assert all("argparse" not in path.read_text() for path in handlers.glob("*.py"))
