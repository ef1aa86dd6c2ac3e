"""Invariants of the yield rule, for any priorities, depths and receive counts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sluice_fanout.handlers.priority import Process, Yield, attempts_exhausted, decide

priority_lists = st.lists(
    st.from_regex(r"[A-Z][A-Z0-9_]{0,5}", fullmatch=True), min_size=1, max_size=6, unique=True
)


@st.composite
def situations(draw: st.DrawFn) -> dict[str, object]:
    priorities = draw(priority_lists)
    return {
        "priorities": priorities,
        "priority": draw(st.sampled_from(priorities)),
        "receive_count": draw(st.integers(min_value=1, max_value=1_000)),
        "force_after_receives": draw(st.integers(min_value=1, max_value=50)),
        "visible_depths": draw(
            st.dictionaries(st.sampled_from(priorities), st.integers(min_value=0, max_value=10**6))
        ),
        "yield_delay_seconds": draw(st.integers(min_value=0, max_value=900)),
    }


@given(situations())
def test_highest_priority_never_yields(s: dict[str, object]) -> None:
    s["priority"] = s["priorities"][0]  # type: ignore[index]
    assert decide(**s) == Process(forced=False)  # type: ignore[arg-type]


@given(situations())
def test_yields_only_while_a_strictly_higher_queue_has_visible_work(s: dict[str, object]) -> None:
    decision = decide(**s)  # type: ignore[arg-type]
    priorities: list[str] = s["priorities"]  # type: ignore[assignment]
    higher = priorities[: priorities.index(s["priority"])]  # type: ignore[arg-type]
    depths: dict[str, int] = s["visible_depths"]  # type: ignore[assignment]
    higher_has_work = any(depths.get(p, 0) > 0 for p in higher)
    if isinstance(decision, Yield):
        assert higher_has_work
        assert decision.delay_seconds == s["yield_delay_seconds"]
    if not higher_has_work:
        assert decision == Process(forced=False)


@given(situations())
def test_at_or_past_the_force_threshold_always_processes(s: dict[str, object]) -> None:
    s["receive_count"] = s["force_after_receives"] + s["receive_count"] % 5  # type: ignore[operator]
    assert isinstance(decide(**s), Process)  # type: ignore[arg-type]


@given(situations(), st.data())
def test_processed_by_the_threshold_attempt_whatever_the_higher_queues_hold(
    s: dict[str, object], data: st.DataObject
) -> None:
    """Replay one message's deliveries against arbitrary depths: it is worked by receive F."""
    priorities: list[str] = s["priorities"]  # type: ignore[assignment]
    force: int = s["force_after_receives"]  # type: ignore[assignment]
    depth_maps = st.dictionaries(st.sampled_from(priorities), st.integers(min_value=0, max_value=100))
    processed_at = None
    for receive_count in range(1, force + 1):
        s["receive_count"] = receive_count
        s["visible_depths"] = data.draw(depth_maps)
        if isinstance(decide(**s), Process):  # type: ignore[arg-type]
            processed_at = receive_count
            break
    assert processed_at is not None
    assert processed_at <= force


@given(
    st.integers(min_value=1, max_value=50),
    st.integers(min_value=1, max_value=50),
    st.integers(min_value=0, max_value=49),
)
def test_an_item_gets_its_attempts_whatever_it_yielded(force: int, max_attempts: int, yields: int) -> None:
    """Yields come only before receive F, so at least max_attempts real attempts precede giving up."""
    yields = min(yields, force - 1)
    receive = yields
    attempts = 0
    while True:
        receive += 1
        attempts += 1
        if attempts_exhausted(receive_count=receive, force_after_receives=force, max_attempts=max_attempts):
            break
    assert attempts >= max_attempts
    assert receive == force - 1 + max_attempts
