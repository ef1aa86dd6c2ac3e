"""What a deploy found that the local pollers and timers need: shared by deploy, the control
plane and the mappings without any of them importing another."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MappingSpec:
    """An event source mapping as deployed: what the local poller needs."""

    uuid: str
    queue_arn: str
    function_name: str
    batch_size: int
    maximum_concurrency: int
    report_batch_item_failures: bool


@dataclass
class ScheduleSpec:
    """A function EventBridge invokes on a schedule: what a local timer needs. moto stores the
    rule and its target but never fires them."""

    function_name: str
    expression: str
    """EventBridge's schedule expression, e.g. `rate(1 minute)`."""
