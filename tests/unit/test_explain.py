"""`sluice explain`'s sentences: one test per reason Sluice can hold an item back or end it, and
the order in which the evidence is believed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from sluice_fanout.cli.explain import ExplainInputError, find_index, routing_of
from sluice_fanout.components.definition import build_state_machine_definition
from sluice_fanout.handlers import contract
from sluice_fanout.handlers.explain import Breaker, Evidence, KeyHold, Queue, Slots, explain
from sluice_fanout.handlers.once import Outcome, StoredItem
from sluice_fanout.handlers.progress import Ended, Retry

T0 = datetime(2026, 12, 5, 10, 40, 0, tzinfo=UTC).timestamp()
NOW = T0 + 42
PRIORITIES = ("HIGH", "NORMAL", "BATCH")


def waiting(**changes: Any) -> Evidence:
    base = Evidence(
        index=7,
        total=50_000,
        state="RUNNING",
        started_at=T0,
        now=NOW,
        priority="NORMAL",
        priorities=PRIORITIES,
        throttled=True,
        started=20_000,
        queue=Queue("NORMAL", 1_204, ("HIGH", "NORMAL")),
        slots=Slots(busy=8, limit=8, calls_per_second=None),
        rate_per_s=8.0,
    )
    return replace(base, **changes)


def test_waiting_says_what_is_ahead_that_the_slots_are_busy_and_an_estimate() -> None:
    assert explain(waiting()) == (
        "waiting in NORMAL since its batch started 42 s ago: 1,204 HIGH and NORMAL items wait with or "
        "ahead of it, and all 8 API slots are busy (about 2m 30s more at the batch's 8.0 items a "
        "second; an estimate)."
    )


def test_waiting_with_free_slots_and_nothing_ahead() -> None:
    text = explain(
        waiting(queue=Queue("HIGH", 0, ("HIGH",)), slots=Slots(busy=3, limit=8, calls_per_second=None))
    )
    assert (
        text
        == "waiting in HIGH since its batch started 42 s ago: no HIGH item waits ahead of it, and 3 of 8 "
        "API slots are busy."
    )


def test_held_by_the_calls_per_second_limit_when_slots_are_free() -> None:
    text = explain(waiting(slots=Slots(busy=3, limit=8, calls_per_second=6)))
    assert "held by the calls-per-second limit (6 calls a second): 3 of 8 API slots are busy" in text
    assert text.startswith("waiting in NORMAL since its batch started 42 s ago: 1,204 HIGH and NORMAL items")
    # All slots busy: the slots hold it, not the rate.
    assert "calls-per-second" not in explain(waiting(slots=Slots(busy=8, limit=8, calls_per_second=6)))


def test_not_started_by_the_map() -> None:
    assert explain(waiting(not_started=True)) == (
        "not started yet: the Map has started 20,000 of the batch's 50,000 items and opens more as "
        "earlier ones finish (highest priority first in a large batch)."
    )


def test_at_the_api_now() -> None:
    stored = StoredItem(False, None, None, None, NOW + 20)
    assert explain(waiting(stored=stored)) == (
        "at the API now: a worker is calling the API with it (the worker holds it until 10:41:02 UTC)."
    )


def test_an_attempt_whose_worker_stopped() -> None:
    stored = StoredItem(False, None, None, None, NOW - 2)
    assert explain(waiting(stored=stored)).startswith(
        "its last attempt did not finish: the worker holding it stopped (its lease ran out at 10:40:40 UTC)"
    )


def test_retrying_names_the_error_the_attempt_and_the_next_one() -> None:
    retry = Retry(7, NOW + 25, 2, "ApiUnavailable: HTTP 503", last_attempt=3)
    assert explain(waiting(retry=retry)) == (
        "retrying after ApiUnavailable: HTTP 503 (attempt 2 of 3 failed; next at 10:41:07 UTC, in 25 s)."
    )


def test_a_retry_that_is_due_waits_for_a_slot() -> None:
    retry = Retry(7, NOW - 5, 1, "ConnectionError: reset")
    assert explain(waiting(retry=retry)) == (
        "retrying after ConnectionError: reset (attempt 1 failed; its next attempt was due at "
        "10:40:37 UTC and waits for a free API slot)."
    )


def test_a_retry_behind_an_open_breaker_says_so() -> None:
    retry = Retry(7, NOW + 5, 1, "ApiUnavailable: HTTP 503", 3)
    text = explain(waiting(retry=retry, breaker=Breaker(NOW - 10, NOW + 180)))
    assert text.endswith("The breaker is open until about 10:43:42 UTC, so it waits at least that long.")


def test_paused_by_the_breaker() -> None:
    assert explain(waiting(breaker=Breaker(NOW - 10, NOW + 180))) == (
        "paused: the breaker is open until about 10:43:42 UTC (it opened at 10:40:32 UTC when too many "
        "of the API's calls failed); the item waits in NORMAL meanwhile and nothing is sent to the API."
    )


def test_succeeded_when_and_after_how_many_attempts() -> None:
    stored = StoredItem(True, Outcome(output="{}"), T0 + 72, 2, None)
    assert explain(waiting(stored=stored)) == "succeeded at 10:41:12 UTC after 2 attempts."
    old = StoredItem(True, Outcome(output="{}"), None, None, None)  # stored before times were kept
    assert explain(waiting(stored=old)) == "succeeded."


def test_failed_with_the_apis_verdict() -> None:
    outcome = Outcome(error=contract.ERROR_PERMANENT, cause="HTTP 400: order rejected")
    stored = StoredItem(True, outcome, T0 + 10, 1, None)
    assert explain(waiting(stored=stored)) == (
        "failed at 10:40:10 UTC after 1 attempt: Sluice.PermanentFailure: HTTP 400: order rejected "
        "(the API's answer, not retried; `sluice batch redrive` runs it again)."
    )


def test_failed_with_its_attempts_used_up() -> None:
    ended = Ended(7, T0 + 30, contract.ERROR_RETRIES_EXHAUSTED, "ApiUnavailable: HTTP 503", 3)
    assert explain(waiting(ended=ended)) == (
        "failed at 10:40:30 UTC after 3 attempts: Sluice.RetriesExhausted: ApiUnavailable: HTTP 503 "
        "(`sluice batch redrive` runs it again)."
    )


def test_failed_without_a_call_behind_its_ordered_keys_failure() -> None:
    ended = Ended(7, T0 + 30, contract.ERROR_ORDER_BROKEN, "item 3 of key acct-7 failed first", 0)
    assert explain(waiting(ended=ended)).startswith(
        "failed at 10:40:30 UTC without a call to the API: Sluice.OrderBroken: "
        "item 3 of key acct-7 failed first"
    )


def test_dead_lettered() -> None:
    ended = Ended(
        7, T0 + 5, contract.ERROR_MALFORMED, "body has no task token in 'token'", 0, dead_lettered=True
    )
    assert explain(waiting(ended=ended)) == (
        "dead-lettered at 10:40:05 UTC: body has no task token in 'token' (the message is in its "
        "priority's dead-letter queue: `sluice dlq inspect`; its execution waits until its callback "
        "times out)."
    )


def test_an_unknown_priority() -> None:
    assert explain(waiting(priority="URGENT")) == (
        "fails without a call: its priority 'URGENT' is not one of HIGH, NORMAL, BATCH "
        "(Sluice.UnknownPriority); fix the item's priority and redrive it."
    )


def test_not_throttled_takes_the_direct_path() -> None:
    assert explain(waiting(priority=None, throttled=False)).startswith("on the direct path:")
    ended_batch = waiting(priority=None, throttled=False, state="SUCCEEDED")
    assert (
        explain(ended_batch)
        == "succeeded on the direct path (not throttled, so it never waited for the API)."
    )


def test_after_the_batch_the_output_lists_its_failure() -> None:
    text = explain(waiting(state="SUCCEEDED", listed_failure=("Sluice.UnknownPriority", "not one of ...")))
    assert text == (
        "failed: Sluice.UnknownPriority: not one of ... (from the batch's output; `sluice batch redrive` "
        "runs it again)."
    )


def test_a_batch_that_ended_before_the_item() -> None:
    assert (
        explain(waiting(state="ABORTED"))
        == "did not finish: its batch ended ABORTED before the item had an outcome."
    )
    assert explain(waiting(state="SUCCEEDED")).startswith("ended with its batch, and no record of it remains")


def test_held_by_its_keys_cap() -> None:
    hold = KeyHold("tenant-a", "NORMAL", waiting=True, pending=37, busy=1, cap=1, ordered=False)
    assert explain(waiting(key=hold)) == (
        "held by its key 'tenant-a' (NORMAL): the key's cap of 1 call at once is in use, and 37 of its "
        "items are unfinished, this one included."
    )


def test_waiting_its_keys_fair_turn() -> None:
    hold = KeyHold("tenant-a", "NORMAL", waiting=True, pending=5, busy=2, cap=4, ordered=False)
    assert explain(waiting(key=hold)) == (
        "waiting for its key 'tenant-a''s turn (NORMAL): keys with waiting items share the API's slots "
        "by weight; the key has 2 items at the API and 5 unfinished; all 8 API slots are busy."
    )


def test_waiting_in_an_ordered_key() -> None:
    hold = KeyHold("acct-7", "HIGH", waiting=True, pending=4, busy=1, cap=1, ordered=True)
    assert explain(waiting(key=hold)) == (
        "waiting its turn in ordered key 'acct-7' (HIGH): the key's items reach the API one at a time, "
        "oldest first, and 3 other items of the key are unfinished (1 at the API now)."
    )


def test_the_most_certain_record_wins() -> None:
    """A stored outcome beats a stale retry note; an ended record beats the breaker."""
    done = StoredItem(True, Outcome(output="{}"), T0 + 72, 2, None)
    retry = Retry(7, NOW + 5, 1, "HTTP 503", 3)
    assert explain(waiting(stored=done, retry=retry)).startswith("succeeded")
    ended = Ended(7, T0 + 30, contract.ERROR_RETRIES_EXHAUSTED, "HTTP 503", 3)
    assert explain(waiting(ended=ended, breaker=Breaker(NOW, NOW + 60))).startswith("failed")


def test_an_item_is_found_by_index_or_by_its_id() -> None:
    items = [{"id": "o-1"}, {"id": "o-2"}, {"id": 3}]
    assert find_index(items, "1", None) == 1
    assert find_index(items, "o-2", "id") == 1
    assert find_index(items, "3", "id") == 2
    with pytest.raises(ExplainInputError, match=r"item 3 is not in this batch of 3 items \(indexes 0 to 2\)"):
        find_index(items, "3", None)
    with pytest.raises(ExplainInputError, match=r"'o-2' is not an index; .* --id-field NAME"):
        find_index(items, "o-2", None)
    with pytest.raises(ExplainInputError, match="no item of this batch has id = 'o-9'"):
        find_index(items, "o-9", "id")


def _definition(**changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "priorities": list(PRIORITIES),
        "queue_urls": {p: f"https://sqs/{p}" for p in PRIORITIES},
        "aggregate_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:agg",
        "order_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:order",
        "results_bucket": "results",
        "map_max_concurrency": 40,
    }
    return build_state_machine_definition(**(args | changes))


def test_routing_is_read_from_the_deployed_definition() -> None:
    routing = routing_of(_definition())
    assert (routing.default_rule, routing.default_priority, routing.map_max_concurrency) == (
        True,
        "BATCH",
        40,
    )
    custom = routing_of(
        _definition(
            throttle_rule={"Variable": "$.item.slow", "BooleanEquals": True}, default_priority="NORMAL"
        )
    )
    assert (custom.default_rule, custom.default_priority) == (False, "NORMAL")
