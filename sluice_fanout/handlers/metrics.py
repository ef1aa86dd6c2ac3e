"""The worker's CloudWatch metrics, as Embedded Metric Format lines in its log (Powertools)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_lambda_powertools.metrics import MetricResolution, MetricUnit
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

from sluice_fanout.handlers import contract

if TYPE_CHECKING:
    from sluice_fanout.handlers.fair import Backlog


class WorkerMetrics:
    """Item counts and timings by priority for one function; `flush` prints and clears them.

    One EMF provider per priority: an EMF object has one dimension set for all the metrics in it,
    so a Priority dimension per metric needs an object per priority. Providers
    (`AmazonCloudWatchEMFProvider`) each own their sets, whereas Powertools' `Metrics` class keeps
    them in class attributes shared by every instance (so that modules share one set), so several
    `Metrics` objects would merge into one. `single_metric` would also work but prints one log
    line per data point; a provider per priority prints one line per priority per batch, values
    of a metric gathered in a list.
    """

    def __init__(
        self,
        function_name: str,
        *,
        namespace: str = contract.METRICS_NAMESPACE,
        service: str = contract.METRICS_SERVICE,
    ) -> None:
        self.function_name = function_name
        self._namespace = namespace
        self._service = service
        self._by_priority: dict[str | tuple[str, str], AmazonCloudWatchEMFProvider] = {}
        """By priority, and by (priority, key) for the keys a backlog names."""

    def _provider(self, priority: str, key: str | None = None) -> AmazonCloudWatchEMFProvider:
        where = priority if key is None else (priority, key)
        if where not in self._by_priority:
            dimensions = {
                contract.DIMENSION_FUNCTION: self.function_name,
                contract.DIMENSION_PRIORITY: priority,
            }
            if key is not None:
                dimensions[contract.DIMENSION_KEY] = key
            self._by_priority[where] = AmazonCloudWatchEMFProvider(
                namespace=self._namespace,
                # Given, not read from POWERTOOLS_SERVICE_NAME, so the dimension set is the same
                # wherever the worker runs and the dashboard's queries match it.
                service=self._service,
                default_dimensions=dimensions,
            )
        return self._by_priority[where]

    def backlog(self, priority: str, backlog: Backlog) -> None:
        """Keys waiting in `priority`: their number, the few largest by name, the rest summed.
        The Key dimension carries only the named few, so the metrics stay bounded whatever the
        number of keys."""
        self._provider(priority).add_metric(
            name=contract.METRIC_KEYS_WAITING, unit=MetricUnit.Count, value=backlog.keys
        )
        self._provider(priority).add_metric(
            name=contract.METRIC_OTHER_KEYS_WAITING_ITEMS, unit=MetricUnit.Count, value=backlog.rest
        )
        for key, waiting in backlog.top:
            self._provider(priority, key).add_metric(
                name=contract.METRIC_KEY_WAITING_ITEMS, unit=MetricUnit.Count, value=waiting
            )

    def count(self, name: str, priority: str) -> None:
        self._provider(priority).add_metric(
            name=name, unit=MetricUnit.Count, value=1, resolution=_resolution(name)
        )

    def milliseconds(self, name: str, priority: str, value: float) -> None:
        self._provider(priority).add_metric(
            name=name, unit=MetricUnit.Milliseconds, value=value, resolution=_resolution(name)
        )

    def flush(self) -> None:
        """Print one EMF line per priority that has data, then forget it (once per invocation).

        The worker flushes at the end of each batch in `handle_batch` (not `@log_metrics` on
        `lambda_handler`), so a batch run directly, as tests and the local runner do, emits exactly
        what Lambda would.
        """
        providers, self._by_priority = self._by_priority, {}
        for provider in providers.values():
            provider.flush_metrics()


def _resolution(name: str) -> MetricResolution:
    return MetricResolution.High if name in contract.HIGH_RESOLUTION_METRICS else MetricResolution.Standard
