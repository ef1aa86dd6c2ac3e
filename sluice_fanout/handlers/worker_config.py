"""What a worker invocation has: its settings and wiring (`WorkerConfig`), its clients
(`WorkerDeps`) and its logger. Every part of the worker imports this; it imports none of them."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Self

from aws_lambda_powertools import Logger

from sluice_fanout.handlers import contract
from sluice_fanout.handlers.fair import KeysSettings
from sluice_fanout.handlers.metrics import WorkerMetrics
from sluice_fanout.handlers.settings import SettingsError, WorkerSettings
from sluice_fanout.handlers.slot_time import SlotTime

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from sluice_fanout.handlers.adapters import BatchCounts, KeyedItems, SqsQueues, TaskTokens
    from sluice_fanout.handlers.once import OncePerItem, ResultSpill
    from sluice_fanout.handlers.rate import RateLimiter
    from sluice_fanout.handlers.target import Target

logger = Logger(service=contract.METRICS_SERVICE)

EMPTY_TICKET_DELAY_SECONDS = 1
"""First delay of a ticket that found nothing; it doubles per receive up to the maximum."""
ORPHAN_TICKET_RECEIVES = 10
ORPHAN_TICKET_AGE_SECONDS = 60
"""A ticket is an orphan (dropped) after this many receives and this age with nothing waiting."""
# The FunctionName dimension when the worker runs outside Lambda (no AWS_LAMBDA_FUNCTION_NAME).
LOCAL_FUNCTION_NAME = "local"


class WorkerConfigError(SettingsError):
    """The worker's environment is wrong; the deploy, not the message, needs fixing."""


@dataclass(frozen=True)
class QueueRef:
    priority: str
    url: str
    arn: str
    dlq_url: str


@dataclass(frozen=True, kw_only=True)
class WorkerConfig(WorkerSettings):
    """The worker's settings (`WorkerSettings`) and what the deploy wires in beside them."""

    queues: tuple[QueueRef, ...]
    """Highest priority first."""
    idempotency_table: str = ""
    ticket_queue_url: str = ""
    results_bucket: str = ""
    """Bucket for results too large for Step Functions; empty: such results fail the item."""
    keys: KeysSettings | None = None
    """Fair share between keys (docs/keys.md); None: no keyed items."""
    keyed_table: str = ""
    # Not settings: fixed behaviour of the ticket dispatch, fields so that tests can shorten them.
    orphan_ticket_receives: int = ORPHAN_TICKET_RECEIVES
    orphan_ticket_age_seconds: int = ORPHAN_TICKET_AGE_SECONDS
    empty_ticket_delay_seconds: int = EMPTY_TICKET_DELAY_SECONDS

    @property
    def priorities(self) -> list[str]:
        return [q.priority for q in self.queues]

    def queue_for_arn(self, arn: str) -> QueueRef:
        for queue in self.queues:
            if queue.arn == arn:
                return queue
        raise WorkerConfigError(
            f"record from {arn!r}, which is not one of this worker's queues "
            f"({[q.arn for q in self.queues]!r}); check {contract.ENV_QUEUES}"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str], error: type[Exception] = WorkerConfigError) -> Self:
        raw = env.get(contract.ENV_QUEUES)
        if not raw:
            raise error(f"{contract.ENV_QUEUES} is not set")
        try:
            queues = tuple(QueueRef(q["priority"], q["url"], q["arn"], q["dlq_url"]) for q in json.loads(raw))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise error(
                f"{contract.ENV_QUEUES} must be a JSON list of objects with priority, url, arn "
                f"and dlq_url, got {raw!r}"
            ) from exc
        settings = WorkerSettings.from_env(env, error)
        if settings.dispatch == contract.DISPATCH_TICKET and not env.get(contract.ENV_TICKET_QUEUE_URL):
            raise error(f"{contract.ENV_TICKET_QUEUE_URL} is required with the ticket dispatch")
        table = env.get(contract.ENV_IDEMPOTENCY_TABLE, "")
        if not table:
            # Without the table a redelivered message would call the legacy API a second time.
            raise error(
                f"{contract.ENV_IDEMPOTENCY_TABLE} is not set; the worker needs its idempotency table"
            )
        keys = None
        keyed_table = env.get(contract.ENV_KEYED_TABLE, "")
        if raw_keys := env.get(contract.ENV_KEYS):
            if not keyed_table:
                raise error(f"{contract.ENV_KEYED_TABLE} is required with {contract.ENV_KEYS}")
            try:
                keys = KeysSettings.parse(
                    json.loads(raw_keys), [q.priority for q in queues], contract.ENV_KEYS
                )
            except ValueError as exc:  # KeyRuleError is one too
                raise error(f"{contract.ENV_KEYS}: {exc}") from exc
        return cls(
            **settings.values(),
            queues=queues,
            keys=keys,
            keyed_table=keyed_table,
            idempotency_table=table,
            ticket_queue_url=env.get(contract.ENV_TICKET_QUEUE_URL, ""),
            results_bucket=env.get(contract.ENV_RESULTS_BUCKET, ""),
        )


class SlotGrant(Protocol):
    """Whether an invocation that keeps its slot for more items may still keep it."""

    def start(self) -> None:
        """Note the limits when the invocation starts: later checks compare with them."""

    def granted(self) -> bool: ...


@dataclass(frozen=True)
class WorkerDeps:
    config: WorkerConfig
    queues: SqsQueues
    tokens: TaskTokens
    target: Target
    once: OncePerItem
    spill: ResultSpill | None = None
    """Where results too large for Step Functions go; None fails them with the reason."""
    clock: Callable[[], float] = time.time
    """Wall-clock seconds, to compare with SQS's SentTimestamp."""
    metrics: WorkerMetrics = field(default_factory=lambda: WorkerMetrics(LOCAL_FUNCTION_NAME))
    """Where item counts and timings go; flushed at the end of every batch."""
    timer: Callable[[], float] = time.perf_counter
    """Monotonic seconds, to time the target call."""
    limiter: RateLimiter | None = None
    """Where each real call reserves its slot under the calls-per-second limit; None: no limit."""
    sleep: Callable[[float], None] = time.sleep
    """How the worker waits for its slot."""
    grant: SlotGrant | None = None
    """Whether the adaptive controller and the operator's run-time concurrency (`sluice limits`)
    still grant this invocation's slot; None: the deployed limit is fixed."""
    slot_time: SlotTime = field(default_factory=SlotTime)
    """Where the invocation's time goes; its AWS clients are attached to it."""
    keyed: KeyedItems | None = None
    """Where keyed items wait (docs/keys.md); None: the stack has no keys."""
    progress: BatchCounts | None = None
    """Where each batch's outcomes and retries are counted (`sluice batch status`); None: not
    counted."""
