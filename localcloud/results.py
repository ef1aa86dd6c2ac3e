"""Each item's outcome from a Map Run's result files, read a record at a time (ijson)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import ijson

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator


def read_results(s3: Any, output: Any) -> list[dict[str, Any]] | None:
    """The items' outcomes from the result files the aggregate's output points at."""
    location = output.get("results_location") if isinstance(output, dict) else None
    if not isinstance(location, dict):
        return None
    bucket = location["bucket"]

    def read_records(key: str) -> Iterator[Any]:
        # A record at a time from the response stream: 100,000 records parsed whole held about
        # four times the 100 MB file at once.
        yield from ijson.items(s3.get_object(Bucket=bucket, Key=key)["Body"], "item", use_float=True)

    manifest = json.loads(s3.get_object(Bucket=bucket, Key=location["manifest_key"])["Body"].read())
    return results_from_files(manifest, read_records)


def results_from_files(
    manifest: dict[str, Any], read_records: Callable[[str], Iterable[Any]]
) -> list[dict[str, Any]]:
    """Each item's outcome from a Map Run's result files, in item order, read once.

    `manifest` is the ResultWriter's manifest.json; `read_records(key)` gives a result file's
    child execution records (any iterable: a parsed file, or one parsed a record at a time). A
    succeeded child's `Output` is Sluice's structured result (`status`, `index`, `priority`?,
    ...); a child that failed outright becomes a FAILED entry with its Error, at the index its
    `Input` names.
    """
    entries: list[dict[str, Any]] = []
    for group in ("SUCCEEDED", "FAILED", "PENDING"):
        for ref in manifest.get("ResultFiles", {}).get(group, []):
            for record in read_records(ref["Key"]):
                child_input = _json(record.get("Input"))
                index = child_input.get("index") if isinstance(child_input, dict) else None
                output = _json(record.get("Output"))
                if record.get("Status") == "SUCCEEDED" and isinstance(output, dict):
                    entries.append(output)
                else:
                    entries.append(
                        {
                            "status": "FAILED",
                            "index": index,
                            "error": record.get("Error") or record.get("Status"),
                        }
                    )
    return sorted(entries, key=lambda e: e["index"] if isinstance(e.get("index"), int) else -1)


def _json(value: Any) -> Any:
    try:
        return json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return value
