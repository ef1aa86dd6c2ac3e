"""The legacy-API simulator enforces its limits and records every call (real server, 127.0.0.1)."""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcloud.legacy_api import ApiProfile, LegacyApi


@pytest.fixture
def api(request: pytest.FixtureRequest) -> Iterator[LegacyApi]:
    simulator = LegacyApi(request.param).start()
    yield simulator
    simulator.stop()


def post(url: str, item: dict[str, object], key: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        url, data=json.dumps(item).encode(), headers={"Idempotency-Key": key}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def burst(url: str, n: int) -> list[tuple[int, dict[str, str]]]:
    results: list[tuple[int, dict[str, str]]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        outcome = post(url, {"id": f"i{i}", "priority": "HIGH"}, f"e#{i}")
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    return results


@pytest.mark.parametrize(
    "api", [ApiProfile(concurrency_limit=2, service_time_s=0.5, service_jitter=0)], indirect=True
)
def test_answers_429_beyond_the_concurrency_limit(api: LegacyApi) -> None:
    results = burst(api.url, 6)
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200, 429, 429, 429, 429]
    assert all(headers["Retry-After"] == "1" for status, headers in results if status == 429)
    calls = api.snapshot()
    assert len(calls) == 6
    assert max(c.in_flight for c in calls) == 2
    assert sum(1 for c in calls if c.in_flight == 0) == 4  # refused: recorded as over the limit
    assert {c.priority for c in calls} == {"HIGH"}


@pytest.mark.parametrize(
    "api", [ApiProfile(concurrency_limit=10, calls_per_second=3, service_time_s=0.0)], indirect=True
)
def test_answers_429_beyond_the_rate_limit(api: LegacyApi) -> None:
    statuses = [post(api.url, {"id": i}, f"e#{i}")[0] for i in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


@pytest.mark.parametrize("api", [ApiProfile(service_time_s=0.0)], indirect=True)
def test_rejects_items_marked_to_fail(api: LegacyApi) -> None:
    assert post(api.url, {"id": "x", "reject": True}, "e#0")[0] == 400
    assert post(api.url, {"id": "y"}, "e#1")[0] == 200
    assert [(c.key, c.status) for c in api.snapshot()] == [("e#0", 400), ("e#1", 200)]


@pytest.mark.parametrize("api", [ApiProfile(service_time_s=0.0, error_rate=1.0)], indirect=True)
def test_injects_server_errors(api: LegacyApi) -> None:
    assert post(api.url, {"id": "x"}, "e#0")[0] == 500


@pytest.mark.parametrize("api", [ApiProfile(service_time_s=0.01, timeout_s=0.2)], indirect=True)
def test_per_item_faults_are_counted_per_key_then_the_call_succeeds(api: LegacyApi) -> None:
    fail = {"id": "f", "fail_first": 2}
    assert [post(api.url, fail, "e#1")[0] for _ in range(3)] == [500, 500, 200]
    status, headers = post(api.url, {"id": "t", "throttle_first": 1, "retry_after": 7}, "e#2")
    assert (status, headers["Retry-After"]) == (429, "7")
    assert post(api.url, {"id": "h", "hang_first": 1}, "e#3")[0] == 504
    assert post(api.url, {"id": "h", "hang_first": 1}, "e#3")[0] == 200


@pytest.mark.parametrize("api", [ApiProfile(service_time_s=0.01)], indirect=True)
def test_a_key_that_already_succeeded_is_answered_without_new_work(api: LegacyApi) -> None:
    assert post(api.url, {"id": "a"}, "e#1")[0] == 200
    assert post(api.url, {"id": "a"}, "e#1")[0] == 200
    assert [c.replayed for c in api.snapshot()] == [False, True]


def test_the_api_runs_in_a_process_of_its_own_and_ends_with_stop() -> None:
    """In the embedded AWS's process its answers waited for that busy interpreter."""
    api = LegacyApi(ApiProfile(concurrency_limit=2, service_time_s=0.0)).start()
    pid = api.pid
    assert pid is not None
    assert pid != os.getpid()
    assert b"localcloud.legacy_api" in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert post(api.url, {"id": "one"}, "e#1")[0] == 200
    # A call answered is a call recorded, here, by the time the caller asks.
    assert [c.key for c in api.snapshot()] == ["e#1"]
    api.stop()
    assert api.pid is None
    assert not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes().split()[2]
    assert [c.key for c in api.snapshot()] == ["e#1"]
