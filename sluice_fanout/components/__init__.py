"""Pulumi components of Sluice. Pulumi code only: never boto3 (a test enforces it)."""

from sluice_fanout.components.adaptive_controller import (
    AdaptiveArgs,
    AdaptiveController,
    AdaptiveControllerArgs,
)
from sluice_fanout.components.fan_out_workflow import FanOutWorkflow, FanOutWorkflowArgs
from sluice_fanout.components.observability import Observability, ObservabilityArgs
from sluice_fanout.components.priority_queues import PriorityQueues, PriorityQueuesArgs
from sluice_fanout.components.priority_worker import PriorityWorker, PriorityWorkerArgs
from sluice_fanout.components.throttled_fan_out import ThrottledFanOut, ThrottledFanOutArgs
from sluice_fanout.components.validation import SluiceConfigError

__all__ = [
    "AdaptiveArgs",
    "AdaptiveController",
    "AdaptiveControllerArgs",
    "FanOutWorkflow",
    "FanOutWorkflowArgs",
    "Observability",
    "ObservabilityArgs",
    "PriorityQueues",
    "PriorityQueuesArgs",
    "PriorityWorker",
    "PriorityWorkerArgs",
    "SluiceConfigError",
    "ThrottledFanOut",
    "ThrottledFanOutArgs",
]
