"""Names shared by the components (deploy time) and the handlers (run time): environment
variables, message fields, metrics, errors, entry points. Standard library only."""

from __future__ import annotations

from typing import Any

# Environment variables of the worker function.
ENV_QUEUES = "SLUICE_QUEUES"
"""JSON list of {"priority", "url", "arn", "dlq_url"}, highest priority first."""
ENV_TARGET = "SLUICE_TARGET"
"""The user's target as `module.function`."""
ENV_FORCE_AFTER_RECEIVES = "SLUICE_FORCE_AFTER_RECEIVES"
ENV_MAX_ATTEMPTS = "SLUICE_MAX_ATTEMPTS"
ENV_YIELD_DELAY_SECONDS = "SLUICE_YIELD_DELAY_SECONDS"
ENV_RETRY_BASE_SECONDS = "SLUICE_RETRY_BASE_SECONDS"
ENV_RETRY_MAX_SECONDS = "SLUICE_RETRY_MAX_SECONDS"
ENV_DISPATCH = "SLUICE_DISPATCH"
"""`yield` (one mapping per priority queue) or `ticket` (one mapping on the ticket queue)."""
ENV_TICKET_QUEUE_URL = "SLUICE_TICKET_QUEUE_URL"
ENV_SHARE_PERIOD = "SLUICE_SHARE_PERIOD"
ENV_IDEMPOTENCY_TABLE = "SLUICE_IDEMPOTENCY_TABLE"
"""DynamoDB table of idempotency records, one per (execution, index)."""
ENV_IDEMPOTENCY_TTL_SECONDS = "SLUICE_IDEMPOTENCY_TTL_SECONDS"
IDEMPOTENCY_KEY_ATTRIBUTE = "id"
IDEMPOTENCY_EXPIRY_ATTRIBUTE = "expiration"
"""Powertools' attribute names; the table's key and TTL must match them."""
ENV_RESULTS_BUCKET = "SLUICE_RESULTS_BUCKET"
"""Bucket for results too large to return through Step Functions."""
ENV_THROTTLE_HOLD_SECONDS = "SLUICE_THROTTLE_HOLD_SECONDS"
"""Least seconds the worker keeps a slot the API refused (429); set with the adaptive controller."""
ENV_CONTROLLED = "SLUICE_CONTROLLED"
"""`true` when an adaptive controller moves the worker's limit (its state item is read)."""
ENV_CALLS_PER_SECOND = "SLUICE_CALLS_PER_SECOND"
"""The API's published rate; set only when the stack sets one."""
ENV_CONCURRENCY = "SLUICE_CONCURRENCY"
"""The stack's `concurrency` as deployed (the worker's reserved concurrency may differ at run
time: the adaptive controller, `sluice limits set`); `sluice limits` shows and checks against it."""


# CloudWatch metrics the worker emits (EMF lines in its log, so no PutMetricData permission) and
# the dashboard and alarms read. Every metric carries all three dimensions: CloudWatch matches a
# metric by its exact dimension set, and the function name keeps two Sluice stacks apart.
METRICS_NAMESPACE = "Sluice"
METRICS_SERVICE = "sluice-worker"
"""The worker's Powertools service: Powertools adds it as the `service` dimension."""
DIMENSION_SERVICE = "service"
DIMENSION_FUNCTION = "FunctionName"
DIMENSION_PRIORITY = "Priority"
METRIC_PROCESSED = "ItemsProcessed"
"""Count: items finished with SendTaskSuccess."""
METRIC_FAILED = "ItemsFailed"
"""Count: items finished with SendTaskFailure (permanent, attempts spent, malformed with a token)."""
METRIC_RETRIED = "ItemsRetried"
"""Count: deliveries returned to be tried again (retryable error, RetryLater, in progress elsewhere)."""
METRIC_YIELDED = "ItemsYielded"
"""Count: deliveries that gave their slot to higher-priority work (yield dispatch)."""
METRIC_FORCED = "ItemsForced"
"""Count: deliveries worked past waiting higher-priority work (yield dispatch force rule)."""
METRIC_QUEUE_WAIT = "QueueWaitTime"
"""Milliseconds from SQS SentTimestamp to the delivery being worked (it keeps growing over retries)."""
METRIC_API_LATENCY = "ApiLatency"
"""Milliseconds spent in a target call the API answered (not refused with 429/RetryLater): its
sum over a window, / 1000 / the window's seconds, is the concurrency the API actually served,
the controller's capacity estimate; a refusal answers fast and would drag the latency down."""
METRIC_API_CALLS = "ApiCalls"
"""Count: calls to the target (the legacy API), refused and failed ones included; not replays."""
METRIC_API_THROTTLED = "ApiThrottled"
"""Count: calls the target refused with RetryLater (HTTP 429)."""
METRIC_API_ERRORS = "ApiErrors"
"""Count: calls that failed with a retryable error (5xx, timeout, any other exception)."""
# Keys (docs/keys.md): reported once a minute per worker function, by one of its invocations.
METRIC_KEYS_WAITING = "KeysWaiting"
"""Count: keys of a priority with at least one item waiting."""
METRIC_KEY_WAITING_ITEMS = "KeyWaitingItems"
"""Count: items waiting of one key, with a Key dimension, for the few keys with the most only
(bounded: the distinct Key values in any hour are at most KEY_BACKLOG_TOP per priority per report)."""
METRIC_OTHER_KEYS_WAITING_ITEMS = "OtherKeysWaitingItems"
"""Count: items waiting of the keys not named by KeyWaitingItems."""
DIMENSION_KEY = "Key"
KEY_BACKLOG_TOP = 5
"""Keys named per priority in each report."""
KEY_BACKLOG_INTERVAL_S = 60.0
"""One report per worker function per this many seconds (CloudWatch's standard resolution)."""
KEYED_REPORT_TURN_ID = "turn#backlog"
"""The keyed table's item whose conditional update gives one invocation the report's turn."""
API_SIGNAL_METRICS = (METRIC_API_CALLS, METRIC_API_THROTTLED, METRIC_API_ERRORS)
HIGH_RESOLUTION_METRICS = (*API_SIGNAL_METRICS, METRIC_API_LATENCY)
"""Stored at 1-second resolution: the controller reads them in windows of 1 to 30 s, and
CloudWatch serves periods under a minute only for high-resolution metrics."""
ITEM_COUNT_METRICS = (METRIC_PROCESSED, METRIC_FAILED, METRIC_RETRIED, METRIC_YIELDED, METRIC_FORCED)

# The field of a worker log record that names what happened to the delivery, for whoever counts
# them (the embedded AWS's report) without reading the message text.
LOG_EVENT = "event"
EVENT_YIELDED = "yielded"
EVENT_FORCED = "forced"
EVENT_EMPTY_TICKET = "empty_ticket"
EVENT_ORPHAN_TICKET = "orphan_ticket"
EVENT_SLOT_RETURNED = "slot_returned"
"""A worker gave its slot back because the adaptive controller lowered the limit."""
EVENT_SLOT_TIME = "slot_time"
"""Once per invocation: its length and where it went (handlers/slot_time.py)."""

DISPATCH_YIELD = "yield"
DISPATCH_TICKET = "ticket"
DISPATCH_MODES = (DISPATCH_YIELD, DISPATCH_TICKET)

# The adaptive controller: a scheduled function that moves the worker's concurrency limit
# within [min, max] and pauses its event source mappings while the API is failing.
ENV_CONTROLLER_WORKER = "SLUICE_CONTROLLER_WORKER"
"""Name of the worker function whose reserved concurrency the controller sets."""
ENV_CONTROLLER_MAPPINGS = "SLUICE_CONTROLLER_MAPPINGS"
"""JSON list of the worker's event source mapping UUIDs (MaximumConcurrency, Enabled)."""
ENV_CONTROLLER_PRIORITIES = "SLUICE_CONTROLLER_PRIORITIES"
"""JSON list of priority names: the Priority dimensions of the worker metrics to read."""
ENV_CONTROLLER_TABLE = "SLUICE_CONTROLLER_TABLE"
"""DynamoDB table (the idempotency table) holding the controller's state item."""
ENV_CONTROLLER_SETTINGS = "SLUICE_CONTROLLER_SETTINGS"
"""JSON object. Required: interval_seconds, signal_delay_seconds. Optional (ControllerSettings
defaults otherwise; the component always sets the first two): min_limit, max_limit,
throttle_threshold, error_threshold, latency_tolerance, min_calls, probe_intervals. `breaker`:
null (no breaker) or an object with error_threshold, min_calls, open_seconds, probe_limit
(BreakerSettings defaults otherwise)."""
CONTROLLER_HANDLER = "sluice_fanout.handlers.adaptive.lambda_handler"
CONTROLLER_STATE_PREFIX = "controller#"
"""State item key: prefix + worker function name (next to the rate limiter's `rate#` item)."""
BATCH_PROGRESS_PREFIX = "batch#"
"""A batch's progress record: prefix + parent execution ARN, in the idempotency table (the
worker counts each item's outcome there and notes its retries; `sluice batch status`)."""
ITEM_ENDED_PREFIX = "ended#"
"""An item that ended without a stored outcome (progress.Ended): prefix + parent execution ARN +
"#" + index, in the idempotency table; one PutItem per such item, expiring with the records."""
LIMITS_PREFIX = "limits#"
"""Run-time limits item key (`sluice limits`, docs/limits.md): prefix + worker function name, in
the idempotency table beside the controller's state."""
# Keyed items (docs/keys.md): records in the idempotency table and its two sparse indexes.
KEYED_WAIT_PREFIX = "wait#"
"""A waiting keyed item: prefix + priority#key#seq; seq sorts in submission order."""
KEYED_LEDGER_PREFIX = "keys#"
"""A key's ledger: prefix + priority#key; the priority's virtual clock: prefix + priority."""
KEYED_BY_KEY_INDEX = "by_key"
"""Waiting items of one priority#key (`wkey`), in submission order (`wseq`)."""
KEYED_READY_INDEX = "ready"
"""Ledgers of one priority (`kpri`) with unfinished items, by virtual finish (`kfin`)."""
KEYED_INDEXES = {
    KEYED_BY_KEY_INDEX: (("wkey", "S"), ("wseq", "S")),
    KEYED_READY_INDEX: (("kpri", "S"), ("kfin", "N")),
}
ENV_KEYS = "SLUICE_KEYS"
"""JSON object: the stack's `keys` setting (fair.KeysSettings.to_json); unset: no keyed items."""
ENV_KEYED_TABLE = "SLUICE_KEYED_TABLE"
"""The DynamoDB table where keyed items wait (set with SLUICE_KEYS)."""
KEYED_ARRIVAL_UPDATE = (
    "ADD pending :one SET kpri = :p, kkey = :k, kfin = if_not_exists(vfinish, :zero), arrived = :now, "
    "leases = if_not_exists(leases, :none)"
)
"""What a keyed item's arrival does to its key's ledger: one more unfinished item, and the key
in the ready index at its virtual finish."""
KEYED_INDEX_OFFSET = 1_000_000_000
"""Added to an item's index in its sort key, so that indexes below it sort as text."""
CONTROLLER_SCHEDULE = "rate(1 minute)"  # EventBridge's shortest rate
CONTROLLER_RUN_SECONDS = 60
"""One invocation steps every interval_seconds for this long, then the next scheduled one takes
over: control steps finer than the schedule allows."""
CONTROLLER_INTERVALS_SECONDS = (1, 5, 10, 30, 60)  # GetMetricData periods of high-resolution metrics

# Environment variables of the bundled HTTP target.
ENV_HTTP_URL = "SLUICE_HTTP_URL"
ENV_HTTP_TIMEOUT_SECONDS = "SLUICE_HTTP_TIMEOUT_SECONDS"
ENV_HTTP_SECRET_ARN = "SLUICE_HTTP_SECRET_ARN"  # noqa: S105 - the variable name, not a secret
ENV_HTTP_SSM_PARAMETER = "SLUICE_HTTP_SSM_PARAMETER"
ENV_HTTP_AUTH_HEADER = "SLUICE_HTTP_AUTH_HEADER"

HTTP_TARGET = "sluice_fanout.handlers.http_target.call"
"""The bundled HTTP target, as a `module.function` the worker can load."""

# Entry points inside the deployed archive.
WORKER_HANDLER = "sluice_fanout.handlers.worker.lambda_handler"
AGGREGATE_HANDLER = "sluice_fanout.handlers.aggregate.lambda_handler"
ORDER_HANDLER = "sluice_fanout.handlers.order.lambda_handler"

# Environment variables of the order function (a batch larger than the Map's concurrency is
# sorted by priority before the Map opens any child).
ENV_ORDER_BUCKET = "SLUICE_ORDER_BUCKET"
ENV_ORDER_PRIORITIES = "SLUICE_ORDER_PRIORITIES"
"""JSON list of priority names, highest first."""
ENV_ORDER_DEFAULT_PRIORITY = "SLUICE_ORDER_DEFAULT_PRIORITY"
ORDERED_PREFIX = "ordered/"
"""Where in the results bucket the ordered copy of a batch goes, one object per execution."""

# Fields of the message body the state machine sends to a priority queue.
FIELD_TOKEN = "token"  # noqa: S105 - a field name, not a secret
FIELD_ITEM = "item"
FIELD_INDEX = "index"
FIELD_PRIORITY = "priority"
FIELD_EXECUTION = "execution"
FIELD_KEYED = "keyed"
"""On a ticket: its item waits in the keyed table, not on a priority queue."""

# A task output of `{RESULT_POINTER_FIELD: {"bucket", "key", "bytes"}}` means the result is in S3.
RESULT_POINTER_FIELD = "sluice_result_s3"
RESULTS_PREFIX = "item-results/"
"""Where in the results bucket those results go (the Map's own output goes under results/)."""

# Error names the worker sends with SendTaskFailure; the aggregate reports them verbatim.
DEFAULT_THROTTLE_RULE: dict[str, Any] = {"Variable": "$.item.priority", "IsPresent": True}
"""Items that carry a `priority` go through the queues; the rest take the direct path."""
ERROR_PERMANENT = "Sluice.PermanentFailure"
ERROR_RETRIES_EXHAUSTED = "Sluice.RetriesExhausted"
ERROR_MALFORMED = "Sluice.MalformedMessage"
ERROR_UNKNOWN_PRIORITY = "Sluice.UnknownPriority"
ERROR_INVALID_KEY = "Sluice.InvalidKey"
"""The item's key field holds something other than a string (keys, docs/keys.md)."""
ERROR_ORDER_BROKEN = "Sluice.OrderBroken"
"""An item of an ordered key behind one that failed for good, from a batch started before that
failure: failed without a call rather than overtaking it (docs/keys.md)."""
ERROR_CHILD_FAILED = "Sluice.ChildExecutionFailed"
ERROR_RESULT_MISSING = "Sluice.ResultMissing"

# Attribute set on a message the worker dead-letters itself, so an operator reading the DLQ
# sees why without digging through logs.
ATTR_DEAD_LETTER_REASON = "SluiceDeadLetterReason"

STATUS_SUCCEEDED = "SUCCEEDED"
STATUS_FAILED = "FAILED"
DIRECT_PATH = "DIRECT"
"""The pseudo-priority under which items that skip the queues are counted."""
