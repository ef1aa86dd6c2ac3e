"""What every `sluice` subcommand shares: reading the stack outputs, and its parser's frame."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path


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
