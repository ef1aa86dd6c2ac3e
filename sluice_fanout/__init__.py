"""Sluice: Pulumi components that feed a rate-limited legacy API from Step Functions by priority.

`from sluice_fanout import ThrottledFanOut`. `.components` never imports boto3, `.handlers` never pulumi.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sluice_fanout.components import (
        FanOutWorkflow,
        FanOutWorkflowArgs,
        PriorityQueues,
        PriorityQueuesArgs,
        PriorityWorker,
        PriorityWorkerArgs,
        SluiceConfigError,
        ThrottledFanOut,
        ThrottledFanOutArgs,
    )

__all__ = [
    "FanOutWorkflow",
    "FanOutWorkflowArgs",
    "PriorityQueues",
    "PriorityQueuesArgs",
    "PriorityWorker",
    "PriorityWorkerArgs",
    "SluiceConfigError",
    "ThrottledFanOut",
    "ThrottledFanOutArgs",
]


def __getattr__(name: str) -> Any:
    """The components, imported on first use so that `sluice_fanout.handlers` (the Lambda code they
    deploy) and the `sluice` command (`sluice_fanout.cli`) work without Pulumi."""
    if name in __all__:
        return getattr(importlib.import_module("sluice_fanout.components"), name)
    raise AttributeError(f"module 'sluice_fanout' has no attribute {name!r}")
