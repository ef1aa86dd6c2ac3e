"""AWS service limits Sluice checks against or works within, each written once. Standard library only."""

from __future__ import annotations

SFN_MAX_TIMEOUT_SECONDS = 31_536_000  # a task's TimeoutSeconds may be at most one year
SFN_MAX_OUTPUT_BYTES = 262_144  # a state's output (and a task's) may be at most 256 KiB
SFN_MAX_ERROR_CHARS = 256  # SendTaskFailure `error` maximum length
SFN_MAX_CAUSE_CHARS = 32_768  # SendTaskFailure `cause` maximum length
SQS_MAX_VISIBILITY_SECONDS = 43_200  # ChangeMessageVisibility maximum (12 hours)
SQS_MAX_MAX_RECEIVE_COUNT = 1_000  # RedrivePolicy maxReceiveCount range is 1..1000
ESM_MIN_MAXIMUM_CONCURRENCY = 2  # ScalingConfig.MaximumConcurrency range is 2..1000
ESM_MAX_MAXIMUM_CONCURRENCY = 1_000
MAX_CALLS_PER_SECOND = 1_000.0  # one DynamoDB item takes at most 1000 writes a second (partition limit)
CW_MAX_METRIC_QUERIES = 500  # GetMetricData accepts at most 500 metric queries per request
