"""The idempotency table as the component declares it, created in moto for worker tests."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import boto3
from moto import mock_aws

from sluice_fanout.handlers.contract import (
    IDEMPOTENCY_EXPIRY_ATTRIBUTE,
    IDEMPOTENCY_KEY_ATTRIBUTE,
    KEYED_INDEXES,
)
from sluice_fanout.handlers.once import item_persistence

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer


def create_idempotency_table(ddb: Any, name: str, *, keyed: bool = False) -> None:
    """`keyed`: with the two sparse indexes keyed items use (docs/keys.md)."""
    attributes = {IDEMPOTENCY_KEY_ATTRIBUTE: "S"}
    indexes: dict[str, Any] = {}
    if keyed:
        for index, ((hash_name, hash_type), (range_name, range_type)) in KEYED_INDEXES.items():
            attributes |= {hash_name: hash_type, range_name: range_type}
            indexes.setdefault("GlobalSecondaryIndexes", []).append(
                {
                    "IndexName": index,
                    "KeySchema": [
                        {"AttributeName": hash_name, "KeyType": "HASH"},
                        {"AttributeName": range_name, "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            )
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": IDEMPOTENCY_KEY_ATTRIBUTE, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, t in attributes.items()],
        BillingMode="PAY_PER_REQUEST",
        **indexes,
    )
    ddb.update_time_to_live(
        TableName=name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": IDEMPOTENCY_EXPIRY_ATTRIBUTE},
    )


def idempotency_store(ddb: Any, name: str) -> DynamoDBPersistenceLayer:
    return item_persistence(ddb, name)


@contextlib.contextmanager
def moto_idempotency_table(name: str) -> Iterator[Any]:
    """A DynamoDB client of a fresh moto account holding the idempotency table `name`."""
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_idempotency_table(client, name)
        yield client
