"""Where moto's DynamoDB (5.2.5) parses the same expression again on every request, and the fix."""

from __future__ import annotations

import copy
import functools
import threading
from collections import deque
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any
from unittest import mock

from moto.dynamodb.comparisons import ConditionExpressionParser
from moto.dynamodb.parsing import validators
from moto.dynamodb.parsing.ast_nodes import DepthFirstTraverser, Node  # type: ignore[attr-defined]  # moto declares it untyped
from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]  # moto declares it untyped

from localcloud.moto_version import MOTO_VERSION, UnsupportedMotoError, require_moto

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["MOTO_VERSION", "UnsupportedMotoError", "check_moto_version", "lean_dynamodb_expressions"]

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
