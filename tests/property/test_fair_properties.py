"""Fair share between keys (handlers/fair.py): a model of one priority's waiting items, worked
by a fixed number of API slots that pick with `fair.pick` and book with `fair.dispatch`.

Calls end in success, a retry (the item goes back to the head of its key's line) or a dead
worker (the item comes back, and its lease frees, only when the lease runs out). Checked at
every step: no key over its cap, no more calls than slots, ordered keys one at a time in
submission order, a free slot never left idle while some key could use it, and the share bound
the module states for every two keys that both had waiting items and room throughout.
"""

from __future__ import annotations

import itertools
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sluice_fanout.handlers import fair
from sluice_fanout.handlers.fair import KeyRule, KeyRuleError, Ledger

KEYS = ("a", "b", "c", "d")
LEASE_S = 10.0
EPSILON = 1e-9


class FairShare(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.clock = 0.0
        self.rules: dict[str, KeyRule] = {}
        self.slots = 1
        self.seq = itertools.count()
        self.waiting: dict[str, deque[int]] = {key: deque() for key in KEYS}
        self.in_flight: list[tuple[str, int, float]] = []
        self.lost: list[tuple[str, int, float]] = []
        self.ledgers = {key: Ledger() for key in KEYS}
        self.calls = dict.fromkeys(KEYS, 0)
        self.worked: dict[str, list[int]] = {key: [] for key in KEYS}
        self.submitted: dict[str, list[int]] = {key: [] for key in KEYS}
        # Per pair of keys that contended at every dispatch since it began: (low, high) of
        # calls_i / w_i - calls_j / w_j over that stretch.
        self.stretch: dict[tuple[str, str], tuple[float, float]] = {}

    @initialize(
        slots=st.integers(min_value=1, max_value=6),
        rules=st.lists(
            st.builds(
                KeyRule,
                weight=st.sampled_from([1, 1, 2, 3, 0.5]),
                cap=st.sampled_from([None, None, 1, 2, 3]),
                ordered=st.sampled_from([False, False, False, True]),
            ),
            min_size=len(KEYS),
            max_size=len(KEYS),
        ),
    )
    def setup(self, slots: int, rules: list[KeyRule]) -> None:
        self.slots = slots
        self.rules = dict(zip(KEYS, rules, strict=True))

    def _contenders(self) -> set[str]:
        return {k for k in KEYS if self.waiting[k] and self.ledgers[k].has_room(self.rules[k], self.now)}

    def _share(self, i: str, j: str) -> float:
        return self.calls[i] / self.rules[i].weight - self.calls[j] / self.rules[j].weight

    @rule(key=st.sampled_from(KEYS), count=st.integers(min_value=1, max_value=8))
    def submit(self, key: str, count: int) -> None:
        for _ in range(count):
            n = next(self.seq)
            self.waiting[key].append(n)
            self.submitted[key].append(n)

    @precondition(lambda self: len(self.in_flight) < self.slots)
    @rule()
    def dispatch(self) -> None:
        before = self._contenders()
        key = fair.pick(((k, self.ledgers[k], self.rules[k]) for k in KEYS if self.waiting[k]), self.now)
        if key is None:
            assert not before
            return
        assert key in before
        for pair in itertools.combinations(sorted(before), 2):
            if pair not in self.stretch:
                share = self._share(*pair)
                self.stretch[pair] = (share, share)
        lease_until = self.now + LEASE_S
        self.ledgers[key], self.clock = fair.dispatch(
            self.ledgers[key], self.rules[key], self.clock, self.now, lease_until
        )
        self.in_flight.append((key, self.waiting[key].popleft(), lease_until))
        self.calls[key] += 1
        after = self._contenders()
        for pair, (low, high) in list(self.stretch.items()):
            share = self._share(*pair)
            self.stretch[pair] = (min(low, share), max(high, share))
            i, j = pair
            bound = 1 / self.rules[i].weight + 1 / self.rules[j].weight
            assert max(high, share) - min(low, share) <= bound + EPSILON, (pair, self.rules, self.calls)
            if not {i, j} <= after:
                del self.stretch[pair]

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), outcome=st.sampled_from(["worked", "worked", "retry", "dead"]))
    def end_call(self, data: st.DataObject, outcome: str) -> None:
        key, n, lease_until = self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))
        if outcome == "dead":
            self.lost.append((key, n, lease_until))
            return
        self.ledgers[key] = fair.release(self.ledgers[key], lease_until)
        if outcome == "worked":
            self.worked[key].append(n)
        else:
            self.waiting[key].appendleft(n)

    @rule(seconds=st.sampled_from([0.5, 3.0, LEASE_S]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        # The platform ends an invocation at its timeout, which the lease is: no call outlives it.
        for call in [c for c in self.in_flight if c[2] <= self.now]:
            self.in_flight.remove(call)
            self.lost.append(call)
        for call in [c for c in self.lost if c[2] <= self.now]:
            self.lost.remove(call)
            self.waiting[call[0]].appendleft(call[1])

    @invariant()
    def no_key_over_its_cap(self) -> None:
        for key in KEYS:
            limit = self.rules[key].limit if self.rules else None
            at_api = sum(1 for k, _, _ in self.in_flight if k == key)
            assert limit is None or at_api <= limit, (key, at_api, limit)

    @invariant()
    def no_more_calls_than_slots(self) -> None:
        assert len(self.in_flight) <= self.slots

    @invariant()
    def ordered_keys_in_submission_order(self) -> None:
        for key in KEYS:
            if self.rules and self.rules[key].ordered:
                assert self.worked[key] == self.submitted[key][: len(self.worked[key])], key

    @invariant()
    def ledgers_stay_small(self) -> None:
        for key in KEYS:
            limit = self.rules[key].limit if self.rules else None
            assert limit is None or len(self.ledgers[key].live(self.now)) <= limit


FairShare.TestCase.settings = settings(max_examples=300, stateful_step_count=80, deadline=None)
test_fair_share_model = FairShare.TestCase


@settings(max_examples=50, deadline=None)
@given(weights=st.lists(st.sampled_from([1, 2, 3, 4]), min_size=2, max_size=4), calls=st.integers(200, 600))
def test_backlogged_keys_share_the_calls_by_weight(weights: list[int], calls: int) -> None:
    """Every key with a deep backlog and no cap: each gets its weight's share, within one call."""
    keys = [f"k{n}" for n in range(len(weights))]
    rules = {k: KeyRule(weight=w) for k, w in zip(keys, weights, strict=True)}
    ledgers = {k: Ledger() for k in keys}
    got = dict.fromkeys(keys, 0)
    clock = 0.0
    for n in range(calls):
        key = fair.pick(((k, ledgers[k], rules[k]) for k in keys), float(n))
        assert key is not None
        ledgers[key], clock = fair.dispatch(ledgers[key], rules[key], clock, float(n), float(n) + 0.5)
        got[key] += 1
    total = sum(weights)
    for k, w in zip(keys, weights, strict=True):
        assert abs(got[k] - calls * w / total) <= len(keys), (got, weights)


def test_a_quiet_key_goes_next_however_deep_the_noisy_backlog() -> None:
    """The issue's case: a key with 5,000 waiting does not push back one that just arrived."""
    rules = {"noisy": KeyRule(), "quiet": KeyRule()}
    ledgers = {"noisy": Ledger(), "quiet": Ledger()}
    clock = 0.0
    for n in range(4_000):
        ledgers["noisy"], clock = fair.dispatch(ledgers["noisy"], rules["noisy"], clock, float(n), n + 1.0)
    picked = fair.pick(((k, ledgers[k], rules[k]) for k in ("noisy", "quiet")), 4_000.0)
    assert picked == "quiet"
    ledgers["quiet"], clock = fair.dispatch(ledgers["quiet"], rules["quiet"], clock, 4_000.0, 4_001.0)
    # ...and then alternates with it instead of catching up for the time it was idle.
    order = []
    for n in range(4):
        key = fair.pick(((k, ledgers[k], rules[k]) for k in ("noisy", "quiet")), 4_001.0 + n)
        assert key is not None
        ledgers[key], clock = fair.dispatch(ledgers[key], rules[key], clock, 4_001.0 + n, 4_002.0 + n)
        order.append(key)
    assert sorted(order) == ["noisy", "noisy", "quiet", "quiet"]


def test_an_expired_lease_gives_the_slot_back() -> None:
    rule = KeyRule(cap=1)
    ledger, _ = fair.dispatch(Ledger(), rule, 0.0, now=0.0, lease_until=10.0)
    assert not ledger.has_room(rule, 9.9)
    assert ledger.has_room(rule, 10.0)
    assert fair.release(ledger, 10.0).has_room(rule, 0.0)
    assert fair.release(ledger, 99.0) == ledger


@pytest.mark.parametrize(
    ("weight", "cap", "named"),
    [
        (0, None, "got 0"),
        (-1, None, "got -1"),
        (float("nan"), None, "got nan"),
        (1e6, None, "1000"),
        ("2", None, "'2'"),
        (True, None, "True"),
        (1, 0, "got 0"),
        (1, 1.5, "got 1.5"),
        (1, True, "True"),
    ],
)
def test_a_bad_weight_or_cap_is_named_with_the_fix(weight: object, cap: object, named: str) -> None:
    with pytest.raises(KeyRuleError, match="must") as raised:
        KeyRule(weight=weight, cap=cap)  # type: ignore[arg-type]
    assert named in str(raised.value)
