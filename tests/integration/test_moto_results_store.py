"""Result files written into moto's S3 store a part at a time (`localcloud/moto_results.py`):
what a client reads back is exactly what was written, and the file is never in memory whole.

What this cannot prove: S3's own durability or multipart behaviour; only moto's store."""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from localcloud.moto_results import _KeyWriter, _s3_store, result_files, write_result_files
from tests.support.clients import client

pytestmark = pytest.mark.slow

BUCKET = "results-store"
RUN_ARN = "arn:aws:states:us-east-1:123456789012:mapRun:sm/Map:run-1"
PART = 64 * 1024
TOTAL = 24 * 1024 * 1024  # far past moto's 5 MiB in-memory spool


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        s3 = client("s3")
        s3.create_bucket(Bucket=BUCKET)
        yield s3


def _parts() -> Iterator[bytes]:
    for n in range(TOTAL // PART):
        yield bytes([n % 251]) * PART


def test_a_file_written_in_parts_reads_back_exactly_with_its_size_and_etag(s3: Any) -> None:
    store = _s3_store(RUN_ARN)
    writer = _KeyWriter(store.put_object(BUCKET, "run-1/SUCCEEDED_0.json", b""))
    digest = hashlib.md5()  # noqa: S324 - S3's ETag of a single-part object is its MD5
    for part in _parts():
        writer.write(part)
        digest.update(part)
    got = s3.get_object(Bucket=BUCKET, Key="run-1/SUCCEEDED_0.json")
    body = got["Body"].read()
    assert (len(body), got["ContentLength"]) == (TOTAL, TOTAL)
    assert hashlib.md5(body).hexdigest() == digest.hexdigest()  # noqa: S324 - as above
    assert got["ETag"] == f'"{digest.hexdigest()}"'


@pytest.mark.usefixtures("s3")
def test_writing_in_parts_never_holds_the_file() -> None:
    store = _s3_store(RUN_ARN)
    tracemalloc.start()
    try:
        writer = _KeyWriter(store.put_object(BUCKET, "run-1/FAILED_0.json", b""))
        for part in _parts():
            writer.write(part)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # moto's spool holds 5 MiB before it moves to disk (and copies it once as it does).
    assert peak < TOTAL // 2


def test_files_written_to_sinks_are_the_files_result_files_builds() -> None:
    records = [
        {"Status": status, "Input": "{}", "n": n}
        for n, status in enumerate(["SUCCEEDED", "FAILED", "SUCCEEDED", "ABORTED", "SUCCEEDED"])
    ]
    opened: dict[tuple[str, int], io.BytesIO] = {}

    def open_file(group: str, n: int) -> io.BytesIO:
        opened[group, n] = io.BytesIO()
        return opened[group, n]

    sizes = write_result_files(records, open_file, max_bytes=60)
    built = result_files(records, max_bytes=60)
    assert {g: [opened[g, n].getvalue() for n in range(len(s))] for g, s in sizes.items()} == built
    assert sizes == {g: [len(f) for f in files] for g, files in built.items()}
