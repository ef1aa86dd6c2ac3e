"""Published AWS prices for the benchmark's cost estimate: one place, so a reader can check or update them."""

from __future__ import annotations

# us-east-1, on-demand, x86, without free tiers, as listed on the services' pricing pages in November 2026.
SFN_STANDARD_PER_TRANSITION = 0.025 / 1_000  # Step Functions Standard: $0.025 per 1,000 transitions
SQS_STANDARD_PER_REQUEST = 0.40 / 1_000_000  # SQS standard queue: $0.40 per million requests
LAMBDA_PER_REQUEST = 0.20 / 1_000_000  # Lambda: $0.20 per million requests
LAMBDA_PER_GB_SECOND = 0.0000166667  # Lambda x86 duration: per GB-second


def usd_per_million_items(
    *, transitions: float, sqs_requests: float, invocations: float, gb_seconds: float
) -> float:
    """Cost of a million items from per-item counts."""
    per_item = (
        transitions * SFN_STANDARD_PER_TRANSITION
        + sqs_requests * SQS_STANDARD_PER_REQUEST
        + invocations * LAMBDA_PER_REQUEST
        + gb_seconds * LAMBDA_PER_GB_SECOND
    )
    return round(per_item * 1_000_000, 2)
