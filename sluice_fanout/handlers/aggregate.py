"""Aggregate: turns the Distributed Map's child results into the parent execution's output."""

from __future__ import annotations

import codecs
import heapq
import json
import re
from collections import Counter, defaultdict
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sluice_fanout.handlers.contract import (
    DIRECT_PATH,
    ERROR_CHILD_FAILED,
    ERROR_RESULT_MISSING,
    RESULT_POINTER_FIELD,
    STATUS_FAILED,
    STATUS_SUCCEEDED,
)
from sluice_fanout.handlers.limits import SFN_MAX_OUTPUT_BYTES

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from mypy_boto3_s3 import S3Client

MAX_FAILURES_LISTED = 100
"""The parent's output must stay under 256 KiB, so only this many failures are listed..."""
MAX_CAUSE_CHARS = 500
"""...each with its cause cut to this length."""
OUTPUT_HEADROOM_BYTES = 16_384  # room for the summary around the inline results


def normalise(entry: Any, position: int) -> dict[str, Any]:
    """One child's result in the structured form; anything else is a recorded failure."""
    if isinstance(entry, dict) and entry.get("status") in (STATUS_SUCCEEDED, STATUS_FAILED):
        # A direct function's result carries no index (its state cannot see the input); the
        # ResultWriter keeps the child's input, and the caller's position comes from it.
        return entry if "index" in entry else {**entry, "index": position}
    # A Distributed Map child that failed outright comes back as null (or, from a
    # ResultWriter, as a FAILED record): the item must still be counted, never dropped.
    return {
        "status": STATUS_FAILED,
        "index": position,
        "error": {
            "Error": ERROR_CHILD_FAILED,
            "Cause": f"child execution returned {json.dumps(entry)[:500]}",
        },
    }


def error_and_cause(item: dict[str, Any]) -> tuple[str, str]:
    """A failure's error name and cause, whether Catch left `{"Error", "Cause"}` or flat fields."""
    error = item.get("error")
    if isinstance(error, dict):
        return str(error.get("Error") or ERROR_CHILD_FAILED), str(error.get("Cause") or "")
    return str(error or ERROR_CHILD_FAILED), str(item.get("cause") or "")


class Tally:
    """Counts child results one at a time, in any order, holding only what the output lists.

    A 100,000-item batch's results are never held at once: each is counted as it is read,
    and only the first `MAX_FAILURES_LISTED` failures and spilled results by batch position
    are kept, in bounded heaps.
    """

    def __init__(self, exists: Callable[[str, str], int | None] | None = None) -> None:
        self._exists = exists
        self._by_status: Counter[str] = Counter()
        self._by_priority: dict[str, Counter[str]] = defaultdict(Counter)
        self._failures = _FirstByPosition()
        self._located = _FirstByPosition()

    def add(self, position: int, entry: Any) -> dict[str, Any]:
        """Count one child's result; return it as counted (a missing spill becomes a failure)."""
        item = self._locate(position, normalise(entry, position))
        status = item["status"]
        self._by_status[status] += 1
        self._by_priority[item.get("priority") or DIRECT_PATH][status] += 1
        if status == STATUS_FAILED:
            self._failures.offer(position, lambda: _listed_failure(item))
        return item

    def _locate(self, position: int, item: dict[str, Any]) -> dict[str, Any]:
        """Check a result the worker spilled to S3; a pointer to nothing is not a result.

        `exists(bucket, key)` gives the object's size, or None when it is missing; without it
        (the pure `aggregate`) pointers are counted as they stand.
        """
        result = item.get("result")
        pointer = result.get(RESULT_POINTER_FIELD) if isinstance(result, dict) else None
        if self._exists is None or item["status"] != STATUS_SUCCEEDED or not isinstance(pointer, dict):
            return item
        bucket, key = str(pointer.get("bucket", "")), str(pointer.get("key", ""))
        size = self._exists(bucket, key) if bucket and key else None
        if size is None:
            return {
                "status": STATUS_FAILED,
                "index": item.get("index", position),
                "priority": item.get("priority"),
                "error": {
                    "Error": ERROR_RESULT_MISSING,
                    "Cause": f"result pointer {json.dumps(pointer)[:300]} names no object in S3",
                },
            }
        index = item.get("index", position)
        self._located.offer(position, lambda: {"index": index, "bucket": bucket, "key": key, "bytes": size})
        return item

    def summary(self) -> dict[str, Any]:
        """Totals, counts by status and by priority, and the first failures with their reasons."""
        summary: dict[str, Any] = {
            "total": sum(self._by_status.values()),
            "succeeded": self._by_status[STATUS_SUCCEEDED],
            "failed": self._by_status[STATUS_FAILED],
            "by_priority": {
                group: {
                    "total": sum(counts.values()),
                    "succeeded": counts[STATUS_SUCCEEDED],
                    "failed": counts[STATUS_FAILED],
                }
                for group, counts in sorted(self._by_priority.items())
            },
            "failures": self._failures.first(),
            "failures_not_listed": self._failures.not_listed(),
        }
        if self._located.offered:
            summary["results_in_s3"] = self._located.first()
            summary["results_in_s3_not_listed"] = self._located.not_listed()
        return summary


class _FirstByPosition:
    """The `MAX_FAILURES_LISTED` entries of lowest batch position among those offered, in order."""

    def __init__(self) -> None:
        # A max-heap by position (negated), so the entry to drop is always on top.
        self._heap: list[tuple[int, int, dict[str, Any]]] = []
        self.offered = 0

    def offer(self, position: int, make: Callable[[], dict[str, Any]]) -> None:
        self.offered += 1
        if len(self._heap) < MAX_FAILURES_LISTED:
            heapq.heappush(self._heap, (-position, -self.offered, make()))
        elif -self._heap[0][0] > position:
            heapq.heapreplace(self._heap, (-position, -self.offered, make()))

    def first(self) -> list[dict[str, Any]]:
        return [entry for _, _, entry in sorted(self._heap, reverse=True)]

    def not_listed(self) -> int:
        return self.offered - len(self._heap)


def _listed_failure(item: dict[str, Any]) -> dict[str, Any]:
    error, cause = error_and_cause(item)
    return {
        "index": item.get("index"),
        "priority": item.get("priority"),
        "error": error,
        "cause": cause[:MAX_CAUSE_CHARS],
    }


def aggregate(results: Sequence[Any]) -> dict[str, Any]:
    """Totals, counts by status and by priority, and the failures with their reasons."""
    tally = Tally()
    for position, entry in enumerate(results):
        tally.add(position, entry)
    return tally.summary()


_SPACE = re.compile(r"[ \t\n\r]*")
_NUMBER_GOES_ON = frozenset(["", *"0123456789.eE+-"])
"""After these (the end of the text so far, or a number's next character) a number may go on."""
READ_CHUNK_BYTES = 1 << 20
"""A result file is read from S3 1 MiB at a time."""


class _TextStream:
    """Text arriving in chunks of UTF-8 bytes, kept from the parse position on only."""

    def __init__(self, chunks: Iterable[bytes | str]) -> None:
        self._chunks = iter(chunks)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.position = 0
        self._dropped = 0
        self._spent = False

    def more(self) -> bool:
        """Appends the next chunk (a character may span two); False once there is none."""
        if self._spent:
            return False
        chunk = next(self._chunks, None)
        if chunk is None:
            self._spent = True
            piece = self._utf8.decode(b"", final=True)
        else:
            piece = chunk if isinstance(chunk, str) else self._utf8.decode(chunk)
        self._dropped += self.position
        self.text = self.text[self.position :] + piece
        self.position = 0
        return True

    def next_char(self) -> str:
        """The next character that is not white space ("" at the end), not consumed."""
        while True:
            self.position = _SPACE.match(self.text, self.position).end()  # type: ignore[union-attr]  # matches ""
            if self.position < len(self.text) or not self.more():
                return self.text[self.position : self.position + 1]

    def value(self, decoder: json.JSONDecoder) -> Any:
        self.next_char()  # raw_decode takes no leading white space
        while True:
            try:
                item, end = decoder.raw_decode(self.text, self.position)
            except json.JSONDecodeError:
                if self.more():
                    continue  # the value goes on in the next chunk
                raise ValueError(self.malformed()) from None
            if self.text[end : end + 1] in _NUMBER_GOES_ON and self.more():
                continue  # "12" may be the start of "12.5e3" in the next chunk
            self.position = end
            return item

    def where(self) -> int:
        """The parse position, counted in characters from the start of the file."""
        return self._dropped + self.position

    def malformed(self, where: int | None = None) -> str:
        at = self.where() if where is None else where
        return f"a result file's JSON array is malformed at character {at}"


def json_array_items(source: str | Iterable[bytes]) -> Iterator[Any]:
    """The elements of a JSON array, parsed one at a time from its text or from its UTF-8 bytes
    in chunks (an S3 body's `iter_chunks`).

    A result file of 100,000 records is about 100 MB: read whole it is held as bytes, then as
    text, then as about four times that in parsed records. Streamed, only a chunk and the record
    in hand are. Anything but one JSON array raises ValueError naming where it went wrong.
    """
    decoder = json.JSONDecoder()
    stream = _TextStream([source] if isinstance(source, str) else source)
    if stream.next_char() != "[":
        raise ValueError(f"a result file must hold one JSON array; it starts with {stream.text[:40]!r}")
    stream.position += 1
    if stream.next_char() != "]":
        while True:
            yield stream.value(decoder)
            following = stream.next_char()
            if following == "]":
                break
            if following != ",":
                raise ValueError(stream.malformed())
            stream.position += 1
    closing = stream.where()
    stream.position += 1
    if stream.next_char():
        raise ValueError(stream.malformed(closing))


def result_writer_entries(
    manifest: dict[str, Any], read_records: Callable[[str], Iterable[Any]]
) -> Iterator[tuple[int, Any]]:
    """Each child's batch position and result, from a ResultWriter manifest, in file order.

    Each result file is a JSON array of child execution records (`Status`, `Input`, `Output`
    as JSON strings, `Error`/`Cause` when failed). `read_records(key)` gives a file's records
    (a list, or `json_array_items` of its text: one record parsed at a time). Nothing is
    sorted or kept here: a `Tally` counts the results in whatever order they come.
    """
    files = manifest.get("ResultFiles", {})
    for status in ("SUCCEEDED", "FAILED", "PENDING"):
        for ref in files.get(status, []):
            for position, record in enumerate(read_records(ref["Key"])):
                child_input = _loads(record.get("Input"))
                index = child_input.get("index", position) if isinstance(child_input, dict) else position
                if not isinstance(index, int):
                    index = position
                if record.get("Status") == "SUCCEEDED":
                    yield index, _loads(record.get("Output"))
                else:
                    yield (
                        index,
                        {
                            "status": STATUS_FAILED,
                            "index": index,
                            "error": {
                                "Error": record.get("Error") or ERROR_CHILD_FAILED,
                                "Cause": record.get("Cause") or f"child execution {record.get('Status')}",
                            },
                        },
                    )


def _loads(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def handle(event: dict[str, Any], s3: Callable[[], S3Client] | None) -> dict[str, Any]:
    """Aggregate inline results, or the ResultWriter output the event points at.

    The Map hands over either the results inline (a list, one entry per item, in batch order) or,
    with a ResultWriter, a pointer to a manifest in S3 whose result files list the child executions
    (`result_writer_entries`). Either way a `Tally` counts them one at a time.
    `s3` returns a client when one is needed (ResultWriter output, results spilled to S3).
    """

    def client() -> S3Client:
        if s3 is None:
            raise ValueError("an S3 client is needed to read results stored in S3")
        return s3()

    def exists(bucket: str, key: str) -> int | None:
        from botocore.exceptions import ClientError  # noqa: PLC0415 - only when results are in S3

        try:
            return int(client().head_object(Bucket=bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            # Without s3:ListBucket a missing key answers 403, not 404: both mean no result here.
            if exc.response.get("Error", {}).get("Code") in ("404", "403", "NoSuchKey"):
                return None
            raise

    tally = Tally(exists)
    map_output = event.get("map_output")
    if isinstance(map_output, list):
        for position, entry in enumerate(map_output):
            map_output[position] = tally.add(position, entry)
        summary = tally.summary()
        size = len(json.dumps(map_output).encode())
        if size + OUTPUT_HEADROOM_BYTES <= SFN_MAX_OUTPUT_BYTES:
            summary["results"] = map_output
        else:
            # Echoing them would push the parent's output past 256 KiB and fail the whole batch
            # with States.DataLimitExceeded, which no Catch can handle.
            summary["results_omitted"] = (
                f"{size} bytes of inline results do not fit beside the summary; start the batch "
                'with {"source": {"bucket", "key"}} to have results written to S3'
            )
    elif isinstance(map_output, dict) and "ResultWriterDetails" in map_output:
        details = map_output["ResultWriterDetails"]
        bucket = details["Bucket"]

        def read_records(key: str) -> Iterator[Any]:
            body = client().get_object(Bucket=bucket, Key=key)["Body"]
            return json_array_items(body.iter_chunks(READ_CHUNK_BYTES))

        manifest = json.loads(client().get_object(Bucket=bucket, Key=details["Key"])["Body"].read())
        for position, entry in result_writer_entries(manifest, read_records):
            tally.add(position, entry)
        summary = tally.summary()
        summary["results_location"] = {"bucket": bucket, "manifest_key": details["Key"]}
    else:
        raise ValueError(
            "event.map_output must be the Map's result list or its ResultWriter output, "
            f"got {json.dumps(map_output)[:200]}"
        )
    summary["execution"] = event.get("execution")
    return summary


@lru_cache(maxsize=1)
def _s3() -> S3Client:
    import boto3  # noqa: PLC0415 - deferred so importing this module makes no AWS client

    return boto3.client("s3")


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:  # noqa: ARG001 - Lambda signature
    return handle(event, _s3)
