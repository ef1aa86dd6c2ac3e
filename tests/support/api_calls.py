"""Reading the legacy API's own call log in tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from localcloud.legacy_api import Call


def most_at_once(calls: Sequence[Call]) -> int:
    """The most of `calls` that were at the API at the same moment."""
    edges = sorted([(c.start, 1) for c in calls] + [(c.end, -1) for c in calls])
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most
