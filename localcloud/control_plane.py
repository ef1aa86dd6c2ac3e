"""The embedded AWS's data plane following its control plane (the Lambda settings stored in moto)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from moto.sqs.models import sqs_backends

from localcloud.ticker import Ticker

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from localcloud.esm import EventSourceMappings
    from localcloud.lambda_runner import LambdaRunner
    from localcloud.specs import MappingSpec

SYNC_INTERVAL_S = 0.25
# ListEventSourceMappings/GetEventSourceMapping states; the transitional ones count as where the
# mapping is heading, since the local data plane applies a change at once.
ENABLED_STATES = frozenset({"Enabled", "Enabling"})
DISABLED_STATES = frozenset({"Disabled", "Disabling"})


class Change(NamedTuple):
    t: float
    """time.monotonic() when the sync saw it."""
    what: str
    """`reserved:<function>`, `maximum_concurrency:<mapping uuid>` or `enabled:<mapping uuid>`."""
    value: int | bool | None


def create_detached_mapping(lam: Any, spec: MappingSpec) -> str:
    """Create `spec` in moto (same queue, function, batch size, MaximumConcurrency) so the Lambda
    API can read and update it; return moto's UUID.

    moto would also deliver to an enabled mapping inside SendMessage; the mapping is detached from
    the queue so only the local pollers deliver. moto runs in this process (the embedded AWS).
    """
    created = lam.create_event_source_mapping(
        EventSourceArn=spec.queue_arn,
        FunctionName=spec.function_name,
        BatchSize=spec.batch_size,
        ScalingConfig={"MaximumConcurrency": spec.maximum_concurrency},
        FunctionResponseTypes=["ReportBatchItemFailures"] if spec.report_batch_item_failures else [],
    )
    _, _, _, region, account, *_ = created["EventSourceMappingArn"].split(":")
    queue = sqs_backends[account][region].queues[spec.queue_arn.rsplit(":", 1)[-1]]
    queue.lambda_event_source_mappings.pop(created["FunctionArn"], None)
    return str(created["UUID"])


def mirror_mappings(lam: Any, specs: Iterable[MappingSpec]) -> dict[str, str]:
    """`create_detached_mapping` for each local mapping; returns {moto UUID: local uuid}.

    The local mappings are not moto's (moto's mapping invokes inside SendMessage and never
    retries), so a controller needs a moto mapping to update: this leaves it only its settings.
    """
    return {create_detached_mapping(lam, spec): spec.uuid for spec in specs}


class ControlPlaneSync(Ticker):
    """A thread that makes the runner and the mappings follow moto's Lambda settings.

    A controller changes concurrency through the Lambda API (PutFunctionConcurrency,
    UpdateEventSourceMapping), which here lands in moto and nothing more: moto stores the values,
    but the functions run in `LambdaRunner` and the SQS mappings in `EventSourceMappings`. This
    reads moto every `interval_s`, pushes what changed into both, and keeps a timeline of what it
    saw, so a report can plot limits against throughput.

    What this cannot prove: how long AWS takes to apply an update (here at most `interval_s`),
    AWS's Enabling/Disabling/Updating states (moto reports Enabled/Disabled at once), and the
    account's concurrency pool, which reserved concurrency is carved from.
    """

    def __init__(
        self,
        lam: Any,
        runner: LambdaRunner,
        mappings: EventSourceMappings | None = None,
        *,
        functions: Iterable[str] = (),
        mapping_ids: Mapping[str, str] | None = None,
        interval_s: float = SYNC_INTERVAL_S,
    ) -> None:
        """`functions`: names whose reserved concurrency to follow. `mapping_ids`: {moto UUID:
        local uuid in `mappings`} (what `mirror_mappings` returns)."""
        if mapping_ids and mappings is None:
            raise ValueError("ControlPlaneSync: mapping_ids given without the mappings to apply them to")
        self._lam = lam
        self._runner = runner
        self._mappings = mappings
        self._functions = list(functions)
        self._mapping_ids = dict(mapping_ids or {})
        super().__init__("control-plane-sync", interval_s)
        self._lock = threading.Lock()
        self._seen: dict[str, int | bool | None] = {}
        self._timeline: list[Change] = []
        self.syncs = 0
        self.errors = 0
        self.last_error: str | None = None

    @property
    def timeline(self) -> list[Change]:
        """Every value seen: the first observation of each setting, then each change."""
        with self._lock:
            return list(self._timeline)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception as exc:  # noqa: BLE001 - keep following; a report shows the count
                self.errors += 1
                self.last_error = repr(exc)
            self._stop.wait(self._interval_s)

    def sync_once(self) -> list[Change]:
        """Read every followed setting from moto once, apply what changed, return the changes."""
        changes: list[Change] = []
        for name in self._functions:
            reserved = self._lam.get_function_concurrency(FunctionName=name).get(
                "ReservedConcurrentExecutions"
            )
            value = None if reserved is None else int(reserved)
            if self._runner.reserved(name) != value:
                self._runner.set_reserved(name, value)
            changes += self._note(f"reserved:{name}", value)
        if self._mappings is not None:
            changes += self._sync_mappings(self._mappings)
        self.syncs += 1
        return changes

    def _sync_mappings(self, mappings: EventSourceMappings) -> list[Change]:
        changes: list[Change] = []
        for moto_uuid, local in self._mapping_ids.items():
            described = self._lam.get_event_source_mapping(UUID=moto_uuid)
            state = described.get("State")
            enabled = True if state in ENABLED_STATES else False if state in DISABLED_STATES else None
            # No MaximumConcurrency: AWS puts no per-mapping cap; locally the pollers started are.
            cap = (described.get("ScalingConfig") or {}).get("MaximumConcurrency")
            maximum = int(cap) if cap is not None else mappings.pollers(local)
            current = mappings.state(local)
            if maximum != current.maximum_concurrency or (enabled is not None and enabled != current.enabled):
                mappings.configure(local, maximum_concurrency=maximum, enabled=enabled)
            changes += self._note(f"maximum_concurrency:{local}", maximum)
            if enabled is not None:
                changes += self._note(f"enabled:{local}", enabled)
        return changes

    def _note(self, what: str, value: int | bool | None) -> list[Change]:
        with self._lock:
            if what in self._seen and self._seen[what] == value:
                return []
            self._seen[what] = value
            change = Change(time.monotonic(), what, value)
            self._timeline.append(change)
            return [change]
