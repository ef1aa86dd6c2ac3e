"""localcloud.moto_fixes.serialized_cloudwatch: a CloudWatch request that reads the alarms never
sees another change them half-way (moto's backend iterates its dicts with no lock).

A hook holds the reader inside its iteration while a second thread puts an alarm, so the race
happens every time without the fix. What this cannot prove: CloudWatch's own consistency model.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from moto import mock_aws
from moto.cloudwatch.models import cloudwatch_backends

from localcloud.moto_fixes import serialized_cloudwatch

REGION = "us-east-1"
ACCOUNT = "123456789012"
HOLD_S = 0.5  # how long the reader waits, inside its iteration, for the writer


def _alarm(backend: Any, name: str) -> None:
    backend.put_metric_alarm(
        name=name,
        namespace="Sluice",
        metric_name="Lost",
        metric_data_queries=None,
        comparison_operator="GreaterThanThreshold",
        evaluation_periods=1,
        datapoints_to_alarm=None,
        period=60,
        threshold=0.0,
        statistic="Sum",
        extended_statistic=None,
        description="",
        dimensions=[],
        alarm_actions=[],
        ok_actions=[],
        insufficient_data_actions=[],
        unit=None,
        actions_enabled=True,
        treat_missing_data=None,
        evaluate_low_sample_count_percentile=None,
        threshold_metric_id=None,
        rule=None,
        tags=[],
    )


class _NamesThatWait:
    """Alarm names whose first membership test starts a writer and waits for it (bounded)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.writer: threading.Thread | None = None
        self.errors: list[BaseException] = []

    def __contains__(self, name: object) -> bool:
        if self.writer is None:

            def write() -> None:
                try:
                    _alarm(self.backend, "added-meanwhile")
                except BaseException as error:  # noqa: BLE001 - handed to the test to assert on
                    self.errors.append(error)

            self.writer = threading.Thread(target=write, daemon=True)
            self.writer.start()
            self.writer.join(HOLD_S)  # with the fix the writer waits for this read to end
        return name == "first"


def _read_while_another_writes() -> tuple[list[str], list[str]]:
    backend = cloudwatch_backends[ACCOUNT][REGION]
    _alarm(backend, "first")
    _alarm(backend, "second")
    names = _NamesThatWait(backend)
    read = [alarm.name for alarm in backend.get_alarms_by_alarm_names(names)]
    assert names.writer is not None
    names.writer.join(5)
    assert names.errors == []
    return read, sorted(backend.alarms)


def test_a_read_of_the_alarms_is_never_changed_half_way() -> None:
    with mock_aws(), serialized_cloudwatch():
        read, alarms = _read_while_another_writes()
    assert read == ["first"]
    assert alarms == ["added-meanwhile", "first", "second"]


def test_moto_alone_changes_the_alarms_under_a_reader() -> None:
    # Why the patch exists; if moto stops doing this, the patch can go.
    with mock_aws(), pytest.raises(RuntimeError, match="dictionary changed size during iteration"):
        _read_while_another_writes()
