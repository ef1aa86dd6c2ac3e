"""What every `sluice` subcommand shares: reading the stack outputs, and its parser's frame."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError

if TYPE_CHECKING:
    from collections.abc import Callable


def read_stack_outputs(path: Path, error: type[Exception]) -> Any:
    """The JSON of `pulumi stack output --json` in `path`; `error` says what is wrong with it."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise error(f"--stack-outputs {path}: cannot read it: {exc.strerror}") from exc
    except ValueError as exc:
        raise error(
            f"--stack-outputs {path}: not JSON ({exc}); write it with `pulumi stack output --json`"
        ) from exc


def command_parser(prog: str, description: str | None, epilog: str) -> argparse.ArgumentParser:
    """A subcommand's parser: its module docstring above the options, its help text below."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the stack is: its outputs file, and where its AWS calls go."""
    parser.add_argument(
        "--stack-outputs", type=Path, required=True, metavar="FILE", help="`pulumi stack output --json`"
    )
    parser.add_argument("--region", help="AWS region (default: the state machine's)")
    parser.add_argument("--endpoint-url", help="AWS endpoint, e.g. the embedded AWS's http://127.0.0.1:PORT")


EXIT_AWS_ERROR = 1
EXIT_BAD_INPUT = 2


def run_command(
    name: str,
    body: Callable[[], int],
    *,
    bad_input: tuple[type[Exception], ...],
    aws_errors: tuple[type[Exception], ...],
) -> int:
    """Run a subcommand's body; its errors end it with a message on stderr and an exit status:
    2 for input to fix (the message says how), 1 for AWS's errors."""
    try:
        return body()
    except bad_input as exc:
        print(f"sluice {name}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except aws_errors as exc:
        print(f"sluice {name}: {exc}", file=sys.stderr)
        return EXIT_AWS_ERROR
    except BotoCoreError as exc:
        print(f"sluice {name}: {exc} (check AWS credentials, --region and --endpoint-url)", file=sys.stderr)
        return EXIT_AWS_ERROR
