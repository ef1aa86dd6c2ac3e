"""localcloud.moto_dynamodb: moto's DynamoDB parses each distinct expression once, and answers
every request exactly as moto 5.2.5 does without the patch (values, errors, condition results).

Driven through boto3 against moto in this process; what this cannot prove: DynamoDB's own
expression grammar where moto's differs from it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any
from unittest import mock

import boto3
import moto
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.dynamodb.comparisons import ConditionExpressionParser
from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]

from localcloud import moto_dynamodb
from localcloud.moto_dynamodb import MOTO_VERSION, UnsupportedMotoError, lean_dynamodb_expressions
from sluice_fanout.handlers.contract import KEYED_INDEXES
from tests.support.idempotency import create_idempotency_table

REGION = "us-east-1"
# Powertools' idempotency writes, as the worker sends them.
CLAIM = (
    "attribute_not_exists(#id) OR #expiry < :now OR "
    "(#status = :inprogress AND attribute_exists(#in_progress_expiry) AND #in_progress_expiry < :now_ms)"
)
CLAIM_NAMES = {"#id": "id", "#expiry": "expiry", "#status": "status", "#in_progress_expiry": "ipe"}
FINISH = "SET #data = :data, #expiry = :expiry, #status = :status"


@pytest.fixture
def table() -> Iterator[Any]:
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        _create(ddb)
        yield ddb


def _create(ddb: Any) -> None:
    ddb.create_table(
        TableName="t",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


def _claim(ddb: Any, key: str, now: int) -> str:
    try:
        ddb.put_item(
            TableName="t",
            Item={
                "id": {"S": key},
                "expiry": {"N": str(now + 3600)},
                "status": {"S": "INPROGRESS"},
                "ipe": {"N": str(now * 1000 + 60_000)},
            },
            ConditionExpression=CLAIM,
            ExpressionAttributeNames=CLAIM_NAMES,
            ExpressionAttributeValues={
                ":now": {"N": str(now)},
                ":now_ms": {"N": str(now * 1000)},
                ":inprogress": {"S": "INPROGRESS"},
            },
        )
    except ClientError as error:
        return str(error.response["Error"]["Code"])
    return "claimed"


def _finish(ddb: Any, key: str, data: str, expiry: int) -> None:
    ddb.update_item(
        TableName="t",
        Key={"id": {"S": key}},
        UpdateExpression=FINISH,
        ExpressionAttributeNames={"#data": "data", "#expiry": "expiry", "#status": "status"},
        ExpressionAttributeValues={
            ":data": {"S": data},
            ":expiry": {"N": str(expiry)},
            ":status": {"S": "COMPLETED"},
        },
    )


def _update(
    ddb: Any, key: str, expression: str, names: Any, values: Any, *, condition: str | None = None
) -> Any:
    extra = {"ConditionExpression": condition} if condition else {}
    return ddb.update_item(
        TableName="t",
        Key={"id": {"S": key}},
        UpdateExpression=expression,
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=values,
        ReturnValues="ALL_NEW",
        **extra,
    )["Attributes"]


def _put(ddb: Any, key: str, condition: str, names: Any, values: Any) -> Any:
    extra = {"ExpressionAttributeValues": values} if values else {}
    return ddb.put_item(
        TableName="t",
        Item={"id": {"S": key}},
        ConditionExpression=condition,
        ExpressionAttributeNames=names,
        **extra,
    )


def _outcome(call: Any) -> Any:
    try:
        return call()
    except ClientError as error:
        return ("error", error.response["Error"]["Code"], error.response["Error"]["Message"])
    except (ValueError, KeyError) as error:  # moto raises some parse errors as they are, patched or not
        return ("error", type(error).__name__, str(error))


def _session(ddb: Any) -> list[Any]:
    """A run of writes whose every answer is recorded: repeated texts with new values, failed
    conditions, and expressions that do not parse (twice each: an error is never kept)."""
    seen: list[Any] = []
    for n in range(6):
        seen.append(_claim(ddb, f"k{n % 3}", 1_000 + n))  # k0..k2 claimed, then refused
        _finish(ddb, f"k{n % 3}", f"result {n}", 5_000 + n)
    for _ in range(2):
        seen.append(_outcome(lambda: _update(ddb, "k0", "SET #a = = :v", {"#a": "a"}, {":v": {"N": "1"}})))
        seen.append(_outcome(lambda: _put(ddb, "x", "attribute_not_exists(#id) OR", {"#id": "id"}, None)))
        # A name the request does not define: its own error, not a kept tree's.
        seen.append(_outcome(lambda: _put(ddb, "y", CLAIM, {"#id": "id"}, {":now": {"N": "1"}})))
    for n in range(3):
        names = {"#c": "c", "#data": "data", "#status": "status"}
        values = {":one": {"N": str(n + 1)}, ":done": {"S": "COMPLETED"}}
        seen.append(
            _outcome(
                lambda names=names, values=values: _update(
                    ddb, "k1", "ADD #c :one REMOVE #data", names, values, condition="#status = :done"
                )
            )
        )
    for n in range(3):  # functions, and a list each request must extend, not share
        values = {":none": {"L": []}, ":more": {"L": [{"N": str(n)}]}}
        seen.append(
            _outcome(
                lambda values=values: _update(
                    ddb, "k2", "SET #l = list_append(if_not_exists(#l, :none), :more)", {"#l": "l"}, values
                )
            )
        )
    items = ddb.scan(TableName="t")["Items"]
    seen.append(sorted(items, key=lambda item: item["id"]["S"]))
    return seen


def test_every_answer_is_the_one_moto_gives_without_the_patch(table: Any) -> None:
    with lean_dynamodb_expressions():
        patched = _session(table)
    table.delete_table(TableName="t")
    _create(table)
    plain = _session(table)
    assert patched == plain
    # The session's own checks: new values reach the items; refusals and errors are kept apart.
    assert patched[:6] == ["claimed"] * 3 + ["ConditionalCheckFailedException"] * 3
    assert {item["id"]["S"]: item.get("data", {}).get("S") for item in patched[-1]} == {
        "k0": "result 3",
        "k1": None,
        "k2": "result 5",
    }
    assert patched[-2]["l"] == {"L": [{"N": "0"}, {"N": "1"}, {"N": "2"}]}
    assert sum(1 for answer in patched if isinstance(answer, tuple) and answer[0] == "error") == 6


def test_each_distinct_text_is_parsed_once(table: Any) -> None:
    makes: list[str] = []
    lexes: list[str] = []
    original_make = UpdateExpressionParser.make
    original_lex = ConditionExpressionParser._lex_condition_expression

    def counting_make(expression: str) -> Any:
        makes.append(expression)
        return original_make(expression)

    def counting_lex(self: ConditionExpressionParser) -> Any:
        lexes.append(self.condition_expression or "")
        return original_lex(self)

    with (
        mock.patch.object(UpdateExpressionParser, "make", staticmethod(counting_make)),
        mock.patch.object(ConditionExpressionParser, "_lex_condition_expression", counting_lex),
        lean_dynamodb_expressions(),
    ):
        for n in range(20):
            assert _claim(table, f"item-{n}", 1_000) == "claimed"
            _finish(table, f"item-{n}", "done", 9_000)
    # Each text (moto may parse a request's update as sent and rewritten) once; the condition once.
    assert makes
    assert len(makes) == len(set(makes))
    assert lexes == [CLAIM]


def test_the_patches_are_written_for_the_installed_moto() -> None:
    assert moto.__version__ == MOTO_VERSION


def test_another_moto_is_refused_with_the_fix_in_the_message() -> None:
    with pytest.raises(UnsupportedMotoError, match=r"moto==5\.2\.5"):
        moto_dynamodb.check_moto_version("9.9.9")


def test_the_embedded_aws_installs_the_patches() -> None:
    from localcloud.cloud import embedded_aws

    original = ConditionExpressionParser._lex_condition_expression
    with embedded_aws():
        assert ConditionExpressionParser._lex_condition_expression is not original
    assert ConditionExpressionParser._lex_condition_expression is original


def _index_answers(ddb: Any, queries: list[dict[str, Any]]) -> list[Any]:
    answers = []
    for query in queries:
        pages, start = [], None
        for _ in range(50):  # every page of the query
            page = ddb.query(TableName="keyed", **query, **({"ExclusiveStartKey": start} if start else {}))
            pages.append([item["id"]["S"] for item in page["Items"]])
            start = page.get("LastEvaluatedKey")
            if start is None:
                break
        answers.append(pages)
    return answers


@pytest.mark.parametrize("seed", range(4))
def test_index_queries_page_as_moto_does_without_the_patch(seed: int) -> None:
    """The indexed queries hand moto only a page of a bucket, found by binary search in an order
    kept by every write: the pages must be moto's own, whatever the writes did to the keys."""
    rng = random.Random(seed)  # noqa: S311 - reproducible writes, not secrets
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        create_idempotency_table(ddb, "keyed", keyed=True)
        queries = [
            {
                "IndexName": index,
                "KeyConditionExpression": f"{hash_name} = :h"
                + (f" AND {range_name} >= :r" if ranged else ""),
                "ExpressionAttributeValues": {":h": {"S": value}} | ({":r": low} if ranged else {}),
                "Limit": limit,
                "ScanIndexForward": forward,
            }
            for index, ((hash_name, _), (range_name, range_type)) in KEYED_INDEXES.items()
            for value in ("a", "b")
            for limit in (1, 3, 7)
            for forward in (True, False)
            for ranged in (False, True)
            for low in [{"N": "5"} if range_type == "N" else {"S": "05"}]
        ]
        with moto_dynamodb.indexed_dynamodb_queries():
            _index_answers(ddb, queries)  # the index exists from here on: every write keeps it
            for n in range(300):
                record = {"id": {"S": f"r{rng.randrange(60):02d}"}}
                if rng.random() < 0.15:
                    ddb.delete_item(TableName="keyed", Key=record)
                    continue
                for (hash_name, _), (range_name, range_type) in KEYED_INDEXES.values():
                    if rng.random() < 0.8:
                        record[hash_name] = {"S": rng.choice("ab")}
                        number = rng.randrange(12)
                        record[range_name] = (
                            {"N": str(number)} if range_type == "N" else {"S": f"{number:02d}"}
                        )
                if n % 3:
                    ddb.put_item(TableName="keyed", Item=record)
                else:  # an update that moves an item within or between buckets
                    names = {f"#a{i}": k for i, k in enumerate(record) if k != "id"}
                    if names:
                        ddb.update_item(
                            TableName="keyed",
                            Key={"id": record["id"]},
                            UpdateExpression="SET " + ", ".join(f"{a} = :v{a[2:]}" for a in names),
                            ExpressionAttributeNames=names,
                            ExpressionAttributeValues={f":v{a[2:]}": record[k] for a, k in names.items()},
                        )
            patched = _index_answers(ddb, queries)
        assert patched == _index_answers(ddb, queries)  # the patch is off again here
        assert any(len(pages) > 1 for pages in patched)  # some queries did need several pages
