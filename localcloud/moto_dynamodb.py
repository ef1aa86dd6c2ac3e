"""Where moto's DynamoDB (5.2.5) parses the same expression again on every request, and the fix."""

from __future__ import annotations

import bisect
import copy
import functools
import inspect
import threading
import weakref
from collections import deque
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any
from unittest import mock

from moto.dynamodb.comparisons import ConditionExpressionParser, OpDefault, get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import GlobalSecondaryIndex, Table
from moto.dynamodb.parsing import validators
from moto.dynamodb.parsing.ast_nodes import DepthFirstTraverser, Node  # type: ignore[attr-defined]  # moto declares it untyped
from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]  # moto declares it untyped

from localcloud.moto_version import MOTO_VERSION, UnsupportedMotoError, require_moto

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "MOTO_VERSION",
    "UnsupportedMotoError",
    "check_moto_version",
    "indexed_dynamodb_queries",
    "lean_dynamodb_expressions",
    "lean_dynamodb_transactions",
]

CACHED_EXPRESSIONS = 1024
"""Distinct texts kept per kind: a stack uses a handful; a run with more only parses again."""


def _cached_make(make: Any) -> Any:
    """UpdateExpressionParser.make, once per distinct text; a failure raises every time, as before.

    moto parsed each update expression twice per request (check, then apply). The tree returned is
    only read (`find_clauses`) or deep-copied before anything changes it (moto's `Validator` copies
    it first), so one tree serves every request with that text.
    """
    cached = functools.lru_cache(maxsize=CACHED_EXPRESSIONS)(make)

    def make_once(expression: str) -> Any:
        return cached(expression)

    make_once.cache_info = cached.cache_info  # type: ignore[attr-defined]
    return make_once


def _cached_lexing(lex: Any) -> Any:
    """A condition lexed once per distinct text (moto used a list of regular expressions per token).

    Tokens depend only on the text; names and values are substituted after lexing, from the
    request's own, so each request still gets its own tree and its own errors. Only successes are kept.
    """
    tokens: dict[str, tuple[Any, ...]] = {}
    lock = threading.Lock()

    def lex_once(self: ConditionExpressionParser) -> deque[Any]:
        text = self.condition_expression or ""
        with lock:
            known = tokens.get(text)
        if known is None:
            # moto's lexer reads nothing of its parser but the text (and the token classes).
            known = tuple(lex(self))
            with lock:
                if len(tokens) < CACHED_EXPRESSIONS:
                    tokens[text] = known
        # The parser consumes its deque and may grow a node's children: each request gets
        # its own deque and its own (empty, for tokens) children lists.
        return deque(node._replace(children=list(node.children)) for node in known)

    lex_once.cached = tokens  # type: ignore[attr-defined]
    return lex_once


_PLAN = "_sluice_processing_plan"
"""A traverser's attribute holding (node types, (type, processor) pairs): its fixed map."""


# moto checks and applies an update in about ten passes over its tree, and each pass asked its
# processor for its (fixed) map of node types at every node, building a dict and a tuple each time.
def _plan(self: Any) -> tuple[tuple[type, ...], tuple[tuple[type, Any], ...]]:
    plan = self.__dict__.get(_PLAN)
    if plan is None:
        mapping = self._processing_map()
        plan = (tuple(mapping), tuple(mapping.items()))
        self.__dict__[_PLAN] = plan
    return plan  # type: ignore[no-any-return]


def _nodes_to_be_processed(self: Any) -> tuple[type, ...]:
    return _plan(self)[0]


def _process(self: Any, node: Any) -> Any:
    for node_type, processor in _plan(self)[1]:
        if isinstance(node, node_type):
            return processor(node)
    return None


_PLAIN_LEAVES = (str, int, float, type(None))


class _NotPlainError(Exception):
    """A tree holding something besides nodes and plain values: deepcopy copies it."""


def _copy_tree(node: Any, copies: dict[int, Any]) -> Any:
    if isinstance(node, _PLAIN_LEAVES):
        return node
    if not isinstance(node, Node):
        raise _NotPlainError
    new = copy.copy(node)  # its type name and any attribute besides children and parent
    copies[id(node)] = new
    # As deepcopy: a parent inside the copied tree is its copy, one outside stays as it was.
    new.parent = copies.get(id(node.parent), node.parent)
    if node.children is not None:
        new.children = [_copy_tree(child, copies) for child in node.children]
    return new


def _deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """`copy.deepcopy` for moto's validators; a parsed tree (nodes, text) is copied by shape."""
    if isinstance(value, Node):
        try:
            return _copy_tree(value, {})
        except _NotPlainError:
            pass
    return copy.deepcopy(value, memo)


def check_moto_version(version: str | None = None) -> None:
    require_moto(
        "moto_dynamodb",
        "check that the new moto still only reads a parsed update tree, and lexes a condition from its "
        "text alone,",
        version,
    )


@contextmanager
def lean_dynamodb_expressions() -> Iterator[None]:
    """Each distinct update expression parsed, and condition expression lexed, once.

    Sluice's worker writes two items per throttled item through Powertools' idempotency: a PutItem
    and an UpdateItem whose expressions are the same text every time, with new values. Lexing and
    parsing them was about a quarter of the emulator's DynamoDB time.
    """
    check_moto_version()
    with ExitStack() as patches:
        patches.enter_context(
            mock.patch.object(
                UpdateExpressionParser, "make", staticmethod(_cached_make(UpdateExpressionParser.make))
            )
        )
        patches.enter_context(
            mock.patch.object(DepthFirstTraverser, "nodes_to_be_processed", _nodes_to_be_processed)
        )
        patches.enter_context(mock.patch.object(DepthFirstTraverser, "process", _process))
        patches.enter_context(mock.patch.object(validators, "deepcopy", _deepcopy))
        patches.enter_context(
            mock.patch.object(
                ConditionExpressionParser,
                "_lex_condition_expression",
                _cached_lexing(ConditionExpressionParser._lex_condition_expression),
            )
        )
        yield


_Plan = tuple[str, dict[str, Any], str, dict[str, Any]]


def _transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    """moto's TransactWriteItems, keeping a copy of only the items it touches.

    moto deep-copied every table a transaction names, to roll back on failure: a cost that grows
    with the table, paid by every keyed item's arrival, claim and finish (thousands of waiting
    records made each transaction tens of milliseconds). Here every condition is checked first,
    against the items as they were (as DynamoDB evaluates a transaction), and nothing is written
    unless all hold; a write that still fails restores the touched items. The emulator serializes
    DynamoDB writes (moto_fixes.atomic_dynamodb_writes), so the check and the writes are atomic.
    """
    plans = _checked(self, transact_items)
    before = [(name, key, copy.deepcopy(self.get_item(name, key))) for name, key, _, _ in plans]
    try:
        for plan in plans:
            _apply(self, plan)
    except Exception:
        for table_name, key, item in before:
            if item is None:
                self.delete_item(table_name, key)
            else:
                self.put_item(table_name, item.to_json()["Attributes"])
        raise


def _checked(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> list[_Plan]:
    """Each operation's table and key, once every condition held; else the cancellation."""
    if len(transact_items) > 100:
        raise TooManyTransactionsException
    plans: list[_Plan] = []
    seen: set[tuple[str, str]] = set()
    errors: list[tuple[str | None, str | None, dict[str, Any] | None]] = []
    for entry in transact_items:
        if len(entry) > 1:
            raise TransactWriteSingleOpException
        op_type, op = next(iter(entry.items()))
        if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
            raise ValueError("Unsupported transaction operation")
        table_name = op["TableName"]
        key = _key_of(self, table_name, op) if op_type == "Put" else op["Key"]
        marker = (str(table_name), str(dict(sorted(key.items()))))
        if marker in seen:
            raise MultipleTransactionsException
        seen.add(marker)
        condition = op.get("ConditionExpression")
        held = condition is None or get_filter_expression(
            condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
        ).expr(self.get_item(table_name, key))
        errors.append(
            (None, None, None) if held else ("ConditionalCheckFailed", ConditionalCheckFailed().message, None)
        )
        plans.append((table_name, key, op_type, op))
    if any(code is not None for code, _, _ in errors):
        raise TransactionCanceledException(errors)
    return plans


def _key_of(self: DynamoDBBackend, table_name: str, op: dict[str, Any]) -> dict[str, Any]:
    table = self.get_table(table_name)
    key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = op["Item"][table.range_key_attr]
    return key


def _apply(self: DynamoDBBackend, plan: _Plan) -> None:
    table_name, key, op_type, op = plan
    names = op.get("ExpressionAttributeNames") or {}
    values = op.get("ExpressionAttributeValues") or {}
    if op_type == "Put":
        self.put_item(
            table_name, op["Item"], expression_attribute_names=names, expression_attribute_values=values
        )
    elif op_type == "Delete":
        self.delete_item(
            table_name, key, expression_attribute_names=names, expression_attribute_values=values
        )
    elif op_type == "Update":
        self.update_item(
            table_name,
            key,
            update_expression=op["UpdateExpression"],
            expression_attribute_names=names,
            expression_attribute_values=values,
        )


@contextmanager
def lean_dynamodb_transactions() -> Iterator[None]:
    """TransactWriteItems without a copy of each table it names (see `_transact_write_items`)."""
    check_moto_version()
    with mock.patch.object(DynamoDBBackend, "transact_write_items", _transact_write_items):
        yield


class _GlobalIndexes:
    """One table's global secondary indexes as DynamoDB keeps them: for each index, its items by
    their index hash value, and in index order within each, kept up to date by every write."""

    def __init__(self, table: Table) -> None:
        self.table_hash = table.hash_key_attr
        self.hash_attrs = {
            index.name: next(k["AttributeName"] for k in index.schema if k["KeyType"] == "HASH")
            for index in table.global_indexes
            if isinstance(index, GlobalSecondaryIndex)
        }
        self.range_attrs = {
            index.name: next((k["AttributeName"] for k in index.schema if k["KeyType"] == "RANGE"), None)
            for index in table.global_indexes
            if isinstance(index, GlobalSecondaryIndex)
        }
        self.buckets: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            name: {} for name in self.hash_attrs
        }
        self.orders: dict[str, dict[tuple[str, str], list[tuple[Any, str]]]] = {
            name: {} for name in self.hash_attrs
        }
        """Per bucket, (index order, primary) sorted: moto's order, range value then table hash."""
        self.placed: dict[str, dict[str, tuple[tuple[str, str], Any]]] = {}
        for item in table.all_items():
            self.place(_primary(item.hash_key, item.range_key), item)

    def order_of(self, name: str, item: Any) -> Any:
        """The item's place in index `name` within its bucket; None when the index has no range
        key or the item lacks it (then DynamoDB does not index it for a ranged query)."""
        attr = self.range_attrs[name]
        if attr is None or attr not in item.attrs or self.table_hash not in item.attrs:
            return None
        return (_plain(item.attrs[attr]), _plain(item.attrs[self.table_hash]))

    def place(self, primary: str, item: Any | None) -> None:
        old = self.placed.pop(primary, {})
        for name, (where, order) in old.items():
            self.buckets[name].get(where, {}).pop(primary, None)
            if order is not None:
                line = self.orders[name].get(where, [])
                at = bisect.bisect_left(line, (order, primary))
                if at < len(line) and line[at] == (order, primary):
                    del line[at]
        if item is None:
            return
        now: dict[str, tuple[tuple[str, str], Any]] = {}
        for name, attr in self.hash_attrs.items():
            value = item.attrs.get(attr)
            if value is not None:
                where = (value.type, str(value.value))
                self.buckets[name].setdefault(where, {})[primary] = item
                order = self.order_of(name, item)
                if order is not None:
                    bisect.insort(self.orders[name].setdefault(where, []), (order, primary))
                now[name] = (where, order)
        self.placed[primary] = now

    def page(
        self, name: str, where: tuple[str, str], size: int, *, forward: bool, start: dict[str, Any] | None
    ) -> list[Any]:
        """The first `size` items of a bucket in index order after `start` (an
        ExclusiveStartKey): a binary search, not a walk of the bucket."""
        line = self.orders[name].get(where, [])
        bucket = self.buckets[name].get(where, {})
        attr = self.range_attrs[name]
        at = 0 if forward else len(line)
        if start and attr in start and self.table_hash in start:
            after = (_plain(DynamoType(start[attr])), _plain(DynamoType(start[self.table_hash])))
            # (order,) sorts before any (order, primary): right after or right before `start`.
            at = (
                bisect.bisect_right(line, (after, "\U0010ffff"))  # after every primary with this order
                if forward
                else bisect.bisect_left(line, (after,))
            )
        chosen = line[at : at + size] if forward else line[max(0, at - size) : at]
        return [bucket[primary] for _, primary in chosen]


_indexes: weakref.WeakKeyDictionary[Table, _GlobalIndexes] = weakref.WeakKeyDictionary()
_walk = threading.local()


def _primary(hash_key: Any, range_key: Any) -> str:
    return f"{hash_key.value}|{range_key.value if range_key is not None else ''}"


def _reindexing(original: Any, key_of: Any) -> Any:
    def write(self: DynamoDBBackend, table_name: str, *args: Any, **kwargs: Any) -> Any:
        result = original(self, table_name, *args, **kwargs)
        table = self.get_table(table_name)
        if table in _indexes:
            key = key_of(table, args, kwargs)
            hash_value, range_value = self.get_keys_value(table, key)
            item = table.get_item(hash_value, range_value)
            _indexes[table].place(_primary(hash_value, range_value), item)
        return result

    return write


def _put_key(table: Table, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    attrs = args[0] if args else kwargs["item_attrs"]
    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = attrs[table.range_key_attr]
    return key


def _given_key(_table: Table, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    return args[0] if args else kwargs["key"]  # type: ignore[no-any-return]


def _indexed_query(original: Any) -> Any:
    signature = inspect.signature(original)

    def query(self: Table, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs).arguments
        index_name = bound.get("index_name")
        indexes = None
        if index_name is not None and any(i.name == index_name for i in self.global_indexes):
            indexes = _indexes.get(self) or _indexes.setdefault(self, _GlobalIndexes(self))
        if indexes is None or index_name not in indexes.hash_attrs:
            return original(self, *args, **kwargs)
        attr = indexes.hash_attrs[index_name]
        conditions = bound.get("hash_key_conditions") or ()
        wanted = next((v for name, v in conditions if name == attr), bound.get("hash_key"))
        bucket = indexes.buckets[index_name].get((wanted.type, str(wanted.value)), {}) if wanted else {}
        items = list(bucket.values())
        range_attr = indexes.range_attrs[index_name]
        limit = bound.get("limit")
        if (
            range_attr is not None
            and wanted is not None
            and limit
            and not bound.get("range_comparison")
            and not bound.get("range_key_conditions")
            and isinstance(bound.get("filter_expression"), OpDefault | None)
        ):
            # A page of a key's line: DynamoDB reads `limit` items in index order, not the whole
            # key. moto sorts everything it is handed, so it gets only the page and the item past
            # it (which tells moto there is more); the order is moto's own (range, table hash).
            items = indexes.page(
                index_name,
                (wanted.type, str(wanted.value)),
                limit + 1,
                forward=bound.get("scan_index_forward", True) is not False,
                start=bound.get("exclusive_start_key"),
            )
        _walk.items = (self, items)
        try:
            return original(self, *args, **kwargs)
        finally:
            _walk.items = None

    return query


def _plain(value: DynamoType) -> Any:
    """A key attribute's value as it sorts (keys are S, N or B): cheaper than `cast_value`,
    which tests every type first."""
    return float(value.value) if value.type == "N" else value.value


def _all_items(original: Any) -> Any:
    def all_items(self: Table) -> Any:
        walk = getattr(_walk, "items", None)
        if walk is not None and walk[0] is self:
            return walk[1]
        return original(self)

    return all_items


@contextmanager
def indexed_dynamodb_queries() -> Iterator[None]:
    """A query on a global secondary index reads that index, not the whole table.

    moto walked (and sorted) every item of the table for each index query: with thousands of
    keyed items waiting, each worker pick's two queries cost milliseconds per thousand items, and
    a 5,000-item backlog made the keyed path four times slower than the queues. DynamoDB reads
    the index. Here each table's index entries are kept by hash value, updated by every put,
    update and delete, and a query hands moto's own matching and sorting only that bucket.
    Queries and writes run under the emulator's DynamoDB lock (moto_fixes), so the buckets never
    change under a query.
    """
    check_moto_version()
    with ExitStack() as patches:
        patches.enter_context(mock.patch.object(Table, "query", _indexed_query(Table.query)))
        patches.enter_context(mock.patch.object(Table, "all_items", _all_items(Table.all_items)))
        for name, key_of in (
            ("put_item", _put_key),
            ("update_item", _given_key),
            ("delete_item", _given_key),
        ):
            original = getattr(DynamoDBBackend, name)
            patches.enter_context(mock.patch.object(DynamoDBBackend, name, _reindexing(original, key_of)))
        yield
        _indexes.clear()
