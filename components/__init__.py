"""Pulumi components of Sluice. Pulumi code only: never boto3 (a test enforces it)."""

from components.fan_out_workflow import FanOutWorkflow, FanOutWorkflowArgs
from components.priority_queues import PriorityQueues, PriorityQueuesArgs
from components.priority_worker import PriorityWorker, PriorityWorkerArgs
from components.throttled_fan_out import ThrottledFanOut, ThrottledFanOutArgs
from components.validation import SluiceConfigError

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
