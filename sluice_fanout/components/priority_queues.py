"""PriorityQueues: one SQS queue and one dead-letter queue per priority."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import pulumi
import pulumi_aws as aws

from sluice_fanout.components import validation as v
from sluice_fanout.components.policies import (
    build_redrive_allow_policy,
    build_redrive_policy,
    build_tls_only_queue_policy,
)
from sluice_fanout.handlers.limits import SQS_MAX_MAX_RECEIVE_COUNT
from sluice_fanout.handlers.settings import DEFAULT_PRIORITIES

TICKET_ROLE = "dispatch-tickets"
"""Resource-name role of the ticket queue; the hyphen keeps it apart from any priority name."""
TICKET_MAX_RECEIVE_COUNT = 100

if TYPE_CHECKING:
    from collections.abc import Mapping

COMPONENT = "PriorityQueues"
# AWS guidance for SQS-triggered functions: visibility timeout at least 6x the function
# timeout, so a message is not redelivered while a retried invocation still holds it.
VISIBILITY_TO_TIMEOUT_RATIO = 6
SQS_MAX_RETENTION_SECONDS = 1_209_600  # 14 days, the SQS maximum
SQS_MIN_RETENTION_SECONDS = 60
SQS_MAX_VISIBILITY_SECONDS = 43_200  # 12 hours
# How long SQS reuses a data key before asking KMS again (SQS allows 60 s to 24 h). Kept at
# AWS's default of 5 minutes: KMS calls stay at a handful per sending or receiving principal
# per 5 minutes whatever the message rate (far below KMS's request quotas, and cents a month),
# while disabling the key or revoking a grant stops new sends and receives within 5 minutes
# instead of hours.
KMS_DATA_KEY_REUSE_SECONDS = 300


class PriorityQueuesArgs(TypedDict):
    priorities: NotRequired[Sequence[str]]
    """Priority names, highest first. Default HIGH, NORMAL, BATCH. Plain values: they decide
    which queues exist."""
    worker_timeout_seconds: NotRequired[int]
    """Timeout of the function consuming the queues. Default 30. Used to check the visibility
    timeout."""
    visibility_timeout_seconds: NotRequired[int]
    """Default 6x worker_timeout_seconds; must be at least that (AWS guidance)."""
    max_receive_count: NotRequired[int]
    """Receives before SQS moves a message to its DLQ. Default 10."""
    message_retention_seconds: NotRequired[int]
    """How long an unworked message is kept. Default 4 days."""
    dlq_retention_seconds: NotRequired[int]
    """How long a dead letter is kept. Default 14 days (the maximum), to leave time to redrive."""
    ticket_queue: NotRequired[bool]
    """Also create the ticket queue (and its DLQ) the `ticket` dispatch needs. Default False."""
    queue_kms_key_arn: NotRequired[str]
    """Customer KMS key (key or alias ARN) encrypting every queue and DLQ. Default none: SQS-managed
    encryption (SSE-SQS). The key's policy must let this account's IAM policies grant its use
    (the default key policy does). Plain value: validated at construction."""


class PriorityQueues(pulumi.ComponentResource):
    """One encrypted SQS queue and one DLQ per priority, TLS-only, with redrive."""

    kms_key_arn: str | None
    """The customer KMS key encrypting the queues, or None for SQS-managed encryption."""

    queue_urls: pulumi.Output[dict[str, str]]
    """Queue URL by priority name."""
    queue_arns: pulumi.Output[dict[str, str]]
    """Queue ARN by priority name."""
    dlq_urls: pulumi.Output[dict[str, str]]
    """Dead-letter queue URL by priority name."""
    dlq_arns: pulumi.Output[dict[str, str]]
    """Dead-letter queue ARN by priority name."""

    def __init__(
        self, name: str, args: PriorityQueuesArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        cfg = check_queue_args(name, args)
        super().__init__("sluice:index:PriorityQueues", name, {}, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.priorities = cfg.priorities
        self.kms_key_arn = cfg.kms_key_arn
        queues: dict[str, aws.sqs.Queue] = {}
        dlqs: dict[str, aws.sqs.Queue] = {}
        for priority in cfg.priorities:
            queues[priority], dlqs[priority] = self._queue_pair(
                name, priority.lower(), cfg, cfg.max_receive_count, child
            )
        self.ticket_queue_url: pulumi.Output[str] | None = None
        self.ticket_queue_arn: pulumi.Output[str] | None = None
        self.ticket_dlq_url: pulumi.Output[str] | None = None
        if cfg.ticket_queue:
            # Tickets are fungible and the worker drops orphans itself; their DLQ only catches a
            # ticket whose every delivery crashes the worker.
            ticket, ticket_dlq = self._queue_pair(name, TICKET_ROLE, cfg, TICKET_MAX_RECEIVE_COUNT, child)
            self.ticket_queue_url, self.ticket_queue_arn = ticket.url, ticket.arn
            self.ticket_dlq_url = ticket_dlq.url

        self.queue_urls = _by_priority({p: q.url for p, q in queues.items()})
        self.queue_arns = _by_priority({p: q.arn for p, q in queues.items()})
        self.dlq_urls = _by_priority({p: q.url for p, q in dlqs.items()})
        self.dlq_arns = _by_priority({p: q.arn for p, q in dlqs.items()})
        self.register_outputs(
            {
                "ticket_queue_url": self.ticket_queue_url,
                "ticket_dlq_url": self.ticket_dlq_url,
                "queue_urls": self.queue_urls,
                "queue_arns": self.queue_arns,
                "dlq_urls": self.dlq_urls,
                "dlq_arns": self.dlq_arns,
            }
        )

    @staticmethod
    def _queue_pair(
        name: str, role: str, cfg: QueueSettings, max_receive_count: int, child: pulumi.ResourceOptions
    ) -> tuple[aws.sqs.Queue, aws.sqs.Queue]:
        """A queue and its DLQ: encrypted, TLS-only, redrive only from its own queue."""
        encryption = _encryption(cfg.kms_key_arn)
        dlq = aws.sqs.Queue(
            f"{name}-{role}-dlq",
            message_retention_seconds=cfg.dlq_retention_seconds,
            **encryption,
            opts=child,
        )
        queue = aws.sqs.Queue(
            f"{name}-{role}",
            visibility_timeout_seconds=cfg.visibility_timeout_seconds,
            message_retention_seconds=cfg.message_retention_seconds,
            **encryption,
            redrive_policy=pulumi.Output.json_dumps(
                dlq.arn.apply(
                    lambda arn: build_redrive_policy(dead_letter_arn=arn, max_receive_count=max_receive_count)
                )
            ),
            opts=child,
        )
        aws.sqs.RedriveAllowPolicy(
            f"{name}-{role}-dlq-redrive-allow",
            queue_url=dlq.url,
            redrive_allow_policy=pulumi.Output.json_dumps(
                queue.arn.apply(lambda arn: build_redrive_allow_policy(source_queue_arn=arn))
            ),
            opts=child,
        )
        for resource_name, q in ((f"{name}-{role}", queue), (f"{name}-{role}-dlq", dlq)):
            aws.sqs.QueuePolicy(
                f"{resource_name}-tls-only",
                queue_url=q.url,
                policy=pulumi.Output.json_dumps(
                    q.arn.apply(lambda arn: build_tls_only_queue_policy(queue_arn=arn))
                ),
                opts=child,
            )
        return queue, dlq


def _encryption(kms_key_arn: str | None) -> dict[str, Any]:
    """Queue arguments for SSE-KMS with the customer key, else SSE-SQS (they are exclusive)."""
    if kms_key_arn is None:
        return {"sqs_managed_sse_enabled": True}
    return {
        "kms_master_key_id": kms_key_arn,
        "kms_data_key_reuse_period_seconds": KMS_DATA_KEY_REUSE_SECONDS,
    }


def _by_priority(values: dict[str, pulumi.Output[str]]) -> pulumi.Output[dict[str, str]]:
    return pulumi.Output.all(**values).apply(dict)


@dataclass(frozen=True)
class QueueSettings:
    priorities: list[str]
    visibility_timeout_seconds: int
    max_receive_count: int
    message_retention_seconds: int
    dlq_retention_seconds: int
    ticket_queue: bool
    kms_key_arn: str | None


def check_queue_args(name: str, args: Mapping[str, Any], component: str = COMPONENT) -> QueueSettings:
    """Check the plain args; return them with defaults filled in."""
    priorities = v.check_priorities(component, name, args.get("priorities", DEFAULT_PRIORITIES))
    worker_timeout = v.check_int(
        component, name, "worker_timeout_seconds", args.get("worker_timeout_seconds", 30), low=1, high=900
    )
    min_visibility = VISIBILITY_TO_TIMEOUT_RATIO * worker_timeout
    visibility = args.get("visibility_timeout_seconds", min_visibility)
    v.check_int(
        component, name, "visibility_timeout_seconds", visibility, low=0, high=SQS_MAX_VISIBILITY_SECONDS
    )
    if visibility < min_visibility:
        raise v.fail(
            component,
            name,
            "visibility_timeout_seconds",
            f"must be at least {VISIBILITY_TO_TIMEOUT_RATIO}x worker_timeout_seconds "
            f"({worker_timeout}s), i.e. >= {min_visibility}",
            visibility,
        )
    max_receive_count = v.check_int(
        component,
        name,
        "max_receive_count",
        args.get("max_receive_count", 10),
        low=1,
        high=SQS_MAX_MAX_RECEIVE_COUNT,
    )
    retention = v.check_int(
        component,
        name,
        "message_retention_seconds",
        args.get("message_retention_seconds", 345_600),
        low=SQS_MIN_RETENTION_SECONDS,
        high=SQS_MAX_RETENTION_SECONDS,
    )
    dlq_retention = v.check_int(
        component,
        name,
        "dlq_retention_seconds",
        args.get("dlq_retention_seconds", SQS_MAX_RETENTION_SECONDS),
        low=SQS_MIN_RETENTION_SECONDS,
        high=SQS_MAX_RETENTION_SECONDS,
    )
    return QueueSettings(
        priorities=priorities,
        visibility_timeout_seconds=visibility,
        max_receive_count=max_receive_count,
        message_retention_seconds=retention,
        dlq_retention_seconds=dlq_retention,
        ticket_queue=bool(args.get("ticket_queue", False)),
        kms_key_arn=v.check_kms_key_arn(component, name, "queue_kms_key_arn", args.get("queue_kms_key_arn")),
    )
