"""The contract between the worker and the user's target: `call(item, ctx) -> dict`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class RetryLater(Exception):  # noqa: N818 - a signal to the worker, named for what the target means
    """The API asked us to come back later (429, Retry-After): retry after `seconds`."""

    def __init__(self, seconds: float, reason: str = "") -> None:
        super().__init__(reason or f"retry after {seconds}s")
        self.seconds = seconds


class PermanentFailure(Exception):  # noqa: N818 - the verdict the target reports, as DESIGN.md names it
    """Retrying cannot help (a 4xx, a rejected record): fail the item at once."""


@dataclass(frozen=True)
class TargetContext:
    """What a target may want to know about the call it is making."""

    index: int
    """Position of the item in its batch."""
    priority: str
    execution: str
    """The parent execution's ARN: with `index`, a business key for idempotent calls."""
    receive_count: int
    """How many times SQS has delivered this message (yields included)."""
    remaining_ms: int
    """Time left before the worker invocation times out."""


Target = Callable[[Any, TargetContext], Any]
"""A target's `call`. A target module imports its exceptions from here:

    from sluice_fanout.handlers.target import PermanentFailure, RetryLater, TargetContext

    def call(item: dict, ctx: TargetContext) -> dict:
        ...
"""


class TargetConfigError(Exception):
    """The configured target cannot be loaded."""


def load_target(spec: str) -> Target:
    """Import `module.function` and return the function."""
    module_name, _, function_name = spec.rpartition(".")
    if not module_name or not function_name:
        raise TargetConfigError(
            f"target {spec!r} is not of the form module.function "
            "(set sluice:targetHandler, e.g. 'erp_client.call')"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TargetConfigError(
            f"target module {module_name!r} cannot be imported: {exc} "
            "(is it in the directory given as sluice:targetDir?)"
        ) from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise TargetConfigError(f"target {spec!r}: {module_name} has no callable {function_name!r}")
    return function  # type: ignore[no-any-return]  # checked callable just above
