"""The priority worker: SQS records in, legacy-API calls out, task tokens completed."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)

from sluice_fanout.handlers import contract, dispatch_ticket, dispatch_yield
from sluice_fanout.handlers.adapters import (
    KEYED_LEASE_MAX_S,
    AllGrants,
    BatchCounts,
    ControllerGrant,
    DynamoStore,
    KeyedItems,
    LimitsGrant,
    LimitsStore,
    LiveLimits,
    LiveRate,
    SqsQueues,
    TaskTokens,
)
from sluice_fanout.handlers.metrics import WorkerMetrics
from sluice_fanout.handlers.once import OncePerItem, ResultSpill, item_persistence
from sluice_fanout.handlers.runtime_limits import Deployed as LimitsDeployed
from sluice_fanout.handlers.slot_time import SlotTime
from sluice_fanout.handlers.target import load_target
from sluice_fanout.handlers.worker_config import LOCAL_FUNCTION_NAME, WorkerConfig, WorkerDeps, logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

# When no Lambda context is given (tests, local runs), assume a generous deadline.
NO_CONTEXT_REMAINING_MS = 900_000
DISPATCH: dict[str, Callable[[WorkerDeps], Callable[[SQSRecord, int], None]]] = {
    contract.DISPATCH_TICKET: dispatch_ticket.record_handler,
    contract.DISPATCH_YIELD: dispatch_yield.record_handler,
}
"""Each dispatch mode's record handler (a new mode: a module with `record_handler`, added here,
and its name in contract.DISPATCH_MODES)."""


def handle_batch(event: dict[str, Any], context: LambdaContext | None, deps: WorkerDeps) -> dict[str, Any]:
    """Work one SQS batch; return the partial batch response.

    Each record ends in exactly one of:
    - processed: the target ran and the token got SendTaskSuccess or SendTaskFailure; the
      message is deleted (reported as a success to the event source mapping);
    - returned: a yield, a RetryLater or a retryable error; the message's visibility is set to the
      wanted delay and it is reported in batchItemFailures, so SQS delivers it again;
    - malformed: failed with a reason (token known) or moved to the DLQ (no token); deleted.
    """
    deps.slot_time.start()
    remaining_ms = context.get_remaining_time_in_millis if context else (lambda: NO_CONTEXT_REMAINING_MS)
    work = DISPATCH[deps.config.dispatch](deps)

    def record_handler(record: SQSRecord) -> None:
        work(record, remaining_ms())

    # Returning every record is normal here (a batch may all yield), so the processor must not
    # raise for it: that would make the whole batch, including any successes, come back.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    try:
        return dict(process_partial_response(event, record_handler, processor, context))
    finally:
        # Here rather than @log_metrics on lambda_handler: a batch run directly (tests, the
        # local runner) emits what Lambda would, and the sandbox carries nothing over.
        deps.metrics.flush()
        deps.slot_time.log(logger)


@lru_cache(maxsize=1)
def _deps() -> WorkerDeps:
    """Built on the first invocation, not at import, and reused while the sandbox lives."""
    import boto3  # noqa: PLC0415 - deferred so importing this module stays free of AWS set-up
    from botocore.config import Config  # noqa: PLC0415 - same reason

    config = WorkerConfig.from_env(os.environ)
    # Standard retry mode backs off on throttling and transient errors, so a throttled
    # SendTaskSuccess is retried by botocore rather than lost.
    client_config = Config(retries={"mode": "standard", "max_attempts": 5})
    ddb = boto3.client("dynamodb", config=client_config)
    persistence = item_persistence(ddb, config.idempotency_table)
    function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", LOCAL_FUNCTION_NAME)
    slot_time = SlotTime()
    sqs = boto3.client("sqs", config=client_config)
    sfn = boto3.client("stepfunctions", config=client_config)
    s3 = boto3.client("s3", config=client_config)
    for client in (ddb, sqs, sfn, s3):
        slot_time.attach(client)
    live = LiveLimits(
        LimitsStore(ddb, config.idempotency_table, function_name),
        LimitsDeployed(
            int(raw) if (raw := os.environ.get(contract.ENV_CONCURRENCY)) else None,
            config.calls_per_second,
            config.keys,
            config.priorities,
        ),
        logger,
    )
    limits_grant = LimitsGrant(live)
    return WorkerDeps(
        config=config,
        queues=SqsQueues(sqs),
        tokens=TaskTokens(sfn, logger),
        target=load_target(config.target),
        once=OncePerItem(persistence, config.idempotency_ttl_seconds),
        # Lambda sets it; the dashboard and alarms query the same name (the function's).
        metrics=WorkerMetrics(function_name),
        spill=ResultSpill(s3, config.results_bucket) if config.results_bucket else None,
        # One limiter per function: every invocation of it shares the item `rate#<function>`;
        # its rate is the operator's (`sluice limits`) if set, so it exists with or without one.
        limiter=LiveRate(live, ddb, config.idempotency_table, function_name),
        # The controller's state item and the run-time limits sit in the same table, under the
        # worker's name.
        grant=AllGrants(
            ControllerGrant(DynamoStore(ddb, config.idempotency_table, function_name)), limits_grant
        )
        if config.controlled
        else limits_grant,
        slot_time=slot_time,
        progress=BatchCounts(ddb, config.idempotency_table, config.idempotency_ttl_seconds),
        keyed=KeyedItems(ddb, config.keyed_table, live.keys_rule, lease_s=KEYED_LEASE_MAX_S)
        if config.keys is not None
        else None,
    )


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle_batch(event, context, _deps())
