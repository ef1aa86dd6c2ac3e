"""The idempotency table as the component declares it, created in moto for worker tests."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

from sluice_fanout.handlers.contract import IDEMPOTENCY_EXPIRY_ATTRIBUTE, IDEMPOTENCY_KEY_ATTRIBUTE


def create_idempotency_table(ddb: Any, name: str) -> None:
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": IDEMPOTENCY_KEY_ATTRIBUTE, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": IDEMPOTENCY_KEY_ATTRIBUTE, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.update_time_to_live(
        TableName=name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": IDEMPOTENCY_EXPIRY_ATTRIBUTE},
    )


def idempotency_store(ddb: Any, name: str) -> DynamoDBPersistenceLayer:
    return DynamoDBPersistenceLayer(
        table_name=name,
        key_attr=IDEMPOTENCY_KEY_ATTRIBUTE,
        expiry_attr=IDEMPOTENCY_EXPIRY_ATTRIBUTE,
        boto3_client=ddb,
    )
