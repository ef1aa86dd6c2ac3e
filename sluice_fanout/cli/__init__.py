"""`sluice`: the operator's command line. Each subcommand is a module of this package with a
`main(argv)`, and its one-line help in COMMANDS; none of it ships in the Lambda archive."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

COMMANDS = {
    "batch": "how far a batch is (status), with its time to finish",
    "explain": "why one item of a batch is where it is, in a sentence",
    "dlq": "inspect the dead-letter queues and redrive them to their source queues",
    "limits": "show and change the worker's limits at run time, without a deploy",
}
"""Subcommand -> its one-line help; the code is `sluice_fanout.cli.<subcommand>`."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice",
        description="Operate a deployed Sluice stack. `sluice COMMAND --help` explains each command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        # The command's own parser reads the rest, its --help included.
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    command = importlib.import_module(f"sluice_fanout.cli.{args.command}")
    code: int = command.main(rest)
    return code
