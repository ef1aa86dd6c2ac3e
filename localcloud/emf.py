"""Embedded Metric Format extraction: function log lines become CloudWatch metrics in moto."""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self

from localcloud.ticker import Ticker

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from localcloud.lambda_runner import LambdaRunner

FORWARD_INTERVAL_S = 0.25
PUT_METRIC_DATA_MAX_DATUMS = 1_000  # PutMetricData: metrics per request
PUT_METRIC_DATA_MAX_VALUES = 150  # PutMetricData: distinct values per datum
READ_MAX_BYTES = 4 * 1024 * 1024  # per file per pass: a pass stays short; the rest comes next pass
DEFAULT_STORAGE_RESOLUTION = 60  # standard resolution, EMF's default


def _numbers(value: Any) -> list[float] | None:
    """The samples of an EMF metric value; None if it is not a number or a list of numbers."""
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, int | float) for v in items):
        return None
    return [float(v) for v in items]


def _dimension_sets(directive: dict[str, Any], record: dict[str, Any]) -> list[list[dict[str, str]]]:
    sets = directive.get("Dimensions")
    dimension_sets = [[]] if sets is None else sets if isinstance(sets, list) else []
    valid = []
    for keys in dimension_sets:
        # CloudWatch Logs rejects a dimension whose value is missing or not a string.
        if isinstance(keys, list) and all(
            isinstance(k, str) and isinstance(record.get(k), str) for k in keys
        ):
            valid.append([{"Name": k, "Value": record[k]} for k in keys])
    return valid


def metric_data(record: Any) -> list[tuple[str, dict[str, Any]]]:
    """(namespace, PutMetricData datum) for every metric an EMF record defines; [] if not EMF.
    Parts that are not valid EMF are skipped, never raised on: a log line must not stop the tail."""
    aws = record.get("_aws") if isinstance(record, dict) else None
    directives = aws.get("CloudWatchMetrics") if isinstance(aws, dict) else None
    if not isinstance(record, dict) or not isinstance(aws, dict) or not isinstance(directives, list):
        return []
    stamp = aws.get("Timestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        return []
    timestamp = datetime.fromtimestamp(stamp / 1000, tz=UTC)
    data: list[tuple[str, dict[str, Any]]] = []
    for directive in directives:
        if not isinstance(directive, dict) or not isinstance(directive.get("Namespace"), str):
            continue
        definitions = directive.get("Metrics")
        for dimensions in _dimension_sets(directive, record):
            for definition in definitions if isinstance(definitions, list) else []:
                name = definition.get("Name") if isinstance(definition, dict) else None
                samples = _numbers(record.get(name)) if isinstance(name, str) else None
                if name is None or samples is None:
                    continue
                resolution = definition.get("StorageResolution", DEFAULT_STORAGE_RESOLUTION)
                base = {
                    "MetricName": name,
                    "Dimensions": dimensions,
                    "Timestamp": timestamp,
                    "Unit": definition.get("Unit", "None"),
                    # 1 (high resolution) or 60 are the only values CloudWatch takes.
                    "StorageResolution": 1 if resolution == 1 else DEFAULT_STORAGE_RESOLUTION,
                }
                counted = list(Counter(samples).items())
                for start in range(0, len(counted), PUT_METRIC_DATA_MAX_VALUES):
                    chunk = counted[start : start + PUT_METRIC_DATA_MAX_VALUES]
                    values = {"Values": [v for v, _ in chunk], "Counts": [float(n) for _, n in chunk]}
                    data.append((directive["Namespace"], base | values))
    return data


class EmfForwarder(Ticker):
    """A thread that forwards the EMF records new in some functions' logs to CloudWatch.

    In AWS, CloudWatch Logs turns each EMF record a function prints (a JSON object whose
    `_aws.CloudWatchMetrics` lists namespace, dimension sets and metrics) into metric data. Here
    the sandboxes print to `runner.log_path(name)`; this tails those files and calls PutMetricData
    on moto, so GetMetricData sees what a controller or dashboard would see in AWS:
    - one metric per (directive, dimension set, metric), dimension values from the record's fields;
    - a metric value is a number or a list of numbers (Powertools writes lists), each a sample:
      Sum adds them, SampleCount counts them;
    - Unit and StorageResolution from the metric's definition; Timestamp from `_aws.Timestamp` (ms).
    A record that is not valid EMF is skipped, as CloudWatch Logs keeps it as a log line only.

    What this cannot prove: CloudWatch's delay before extracted metrics are queryable (here at
    most `interval_s`), its EMF validation limits (100 values per metric, 30 dimensions, 100
    metrics per directive) and its statistics beyond what moto computes (moto's periods start at
    StartTime, not on period boundaries).
    """

    def __init__(
        self,
        cloudwatch: Any,
        runner: LambdaRunner,
        functions: Iterable[str],
        *,
        interval_s: float = FORWARD_INTERVAL_S,
    ) -> None:
        self._cloudwatch = cloudwatch
        self._paths = [runner.log_path(name) for name in functions]
        super().__init__("emf-forwarder", interval_s)
        self._offsets: dict[Path, int] = {}
        self._pass = threading.Lock()  # the thread's passes and stop()'s last pass never overlap
        self.records = 0
        """EMF records forwarded."""
        self.datums = 0
        """Metric data put (one per metric, dimension set and 150 distinct values)."""
        self.errors = 0
        self.last_error: str | None = None

    def start(self) -> Self:
        # From each log's current end: what was printed before is not this run's.
        for path in self._paths:
            self._offsets[path] = path.stat().st_size if path.exists() else 0
        return super().start()

    def stop(self) -> None:
        """Stop the thread, then forward whatever complete lines are left."""
        super().stop()
        self.forward_once()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.forward_once()

    def forward_once(self) -> int:
        """One pass over every log; returns the records forwarded."""
        with self._pass:
            forwarded = 0
            for path in self._paths:
                forwarded += self._forward(path)
            return forwarded

    def _forward(self, path: Path) -> int:
        if not path.exists():
            return 0
        if path.stat().st_size < self._offsets.get(path, 0):
            self._offsets[path] = 0  # the file was replaced: read the new one from its start
        with path.open("rb") as log:
            log.seek(self._offsets.get(path, 0))
            chunk = log.read(READ_MAX_BYTES)
        # Only whole lines: a sandbox may be half-way through printing one. A line longer than a
        # whole read is skipped (CloudWatch Logs also truncates events over 256 KB).
        end = chunk.rfind(b"\n") + 1 or (len(chunk) if len(chunk) == READ_MAX_BYTES else 0)
        self._offsets[path] = self._offsets.get(path, 0) + end
        by_namespace: dict[str, list[dict[str, Any]]] = {}
        records = 0
        for line in chunk[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            data = metric_data(record)
            records += 1 if data else 0
            for namespace, datum in data:
                by_namespace.setdefault(namespace, []).append(datum)
        for namespace, datums in by_namespace.items():
            for start in range(0, len(datums), PUT_METRIC_DATA_MAX_DATUMS):
                batch = datums[start : start + PUT_METRIC_DATA_MAX_DATUMS]
                try:
                    self._cloudwatch.put_metric_data(Namespace=namespace, MetricData=batch)
                except Exception as exc:  # noqa: BLE001 - a lost batch is counted, the tail goes on
                    self.errors += 1
                    self.last_error = repr(exc)
                    continue
                self.datums += len(batch)
        self.records += records
        return records
