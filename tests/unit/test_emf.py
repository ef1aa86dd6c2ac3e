"""EMF records to PutMetricData: what CloudWatch Logs would extract, and what it would skip."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from localcloud.emf import metric_data

STAMP_MS = 1_795_388_101_845
WHEN = datetime.fromtimestamp(STAMP_MS / 1000, tz=UTC)


def emf(
    metrics: list[dict[str, Any]], dimensions: Any = (("FunctionName", "Priority"),), **fields: Any
) -> dict[str, Any]:
    directive = {"Namespace": "Sluice", "Dimensions": [list(d) for d in dimensions], "Metrics": metrics}
    return {
        "_aws": {"Timestamp": STAMP_MS, "CloudWatchMetrics": [directive]},
        "FunctionName": "w",
        "Priority": "HIGH",
        **fields,
    }


DIMS = [{"Name": "FunctionName", "Value": "w"}, {"Name": "Priority", "Value": "HIGH"}]


def test_a_powertools_list_becomes_values_and_counts() -> None:
    record = emf([{"Name": "ApiCalls", "Unit": "Count"}], ApiCalls=[1.0, 1.0, 2.0])
    assert metric_data(record) == [
        (
            "Sluice",
            {
                "MetricName": "ApiCalls",
                "Dimensions": DIMS,
                "Timestamp": WHEN,
                "Unit": "Count",
                "StorageResolution": 60,
                "Values": [1.0, 2.0],
                "Counts": [2.0, 1.0],
            },
        )
    ]


def test_a_number_is_one_sample_and_high_resolution_is_kept() -> None:
    record = emf([{"Name": "Lat", "Unit": "Milliseconds", "StorageResolution": 1}], Lat=7)
    ((_, datum),) = metric_data(record)
    assert (datum["Values"], datum["Counts"], datum["StorageResolution"]) == ([7.0], [1.0], 1)


def test_each_dimension_set_is_its_own_metric() -> None:
    record = emf([{"Name": "N"}], dimensions=(("FunctionName",), ()), N=1)
    assert [d["Dimensions"] for _, d in metric_data(record)] == [[DIMS[0]], []]
    assert [d["Unit"] for _, d in metric_data(record)] == ["None", "None"]


def test_more_than_150_distinct_values_are_split() -> None:
    record = emf([{"Name": "N"}], N=[float(v) for v in range(151)])
    assert [len(d["Values"]) for _, d in metric_data(record)] == [150, 1]


@pytest.mark.parametrize(
    "record",
    [
        {"message": "a plain log line"},
        [1, 2],
        {"_aws": {"Timestamp": STAMP_MS}},
        {"_aws": {"CloudWatchMetrics": []}},
        emf([{"Name": "N"}], N="seven"),
        emf([{"Name": "N"}], N=True),
        emf([{"Name": "N"}], N=[]),
        emf([{"Name": "N"}]),
        emf([{"Name": "N"}], dimensions=(("Missing",),), N=1),
        emf([{"Name": "N"}], FunctionName=3, N=1),
        emf(["N"], N=1),
        {
            "_aws": {
                "Timestamp": STAMP_MS,
                "CloudWatchMetrics": [
                    {"Namespace": "S", "Dimensions": "FunctionName", "Metrics": [{"Name": "N"}]}
                ],
            },
            "FunctionName": "w",
            "N": 1,
        },
    ],
)
def test_what_is_not_valid_emf_is_skipped_not_raised(record: Any) -> None:
    assert metric_data(record) == []
