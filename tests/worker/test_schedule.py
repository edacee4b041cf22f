"""The limiter's arithmetic: the limit holds over any window, whatever the requests."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.ratelimit.schedule import Limit, max_in_window, release, reserve

LIMIT = Limit(calls=5, period_s=10.0, margin_s=0.5)


def test_a_quiet_channel_bursts_its_allowance_then_waits_a_period() -> None:
    slots, schedule = reserve([], 7, now=100.0, limit=LIMIT)
    assert slots[:5] == [100.0] * 5
    assert slots[5:] == [pytest.approx(110.5)] * 2
    assert schedule[:3] == [100.0] * 3


def test_starts_never_go_before_the_pause_ends() -> None:
    slots, _ = reserve([], 2, now=100.0, limit=LIMIT, paused_until=130.0)
    assert slots == [130.0, 130.0]


def test_release_gives_back_unused_starts() -> None:
    slots, schedule = reserve([], 5, now=0.0, limit=LIMIT)
    schedule = release(schedule, slots[-2:])
    later, _ = reserve(schedule, 2, now=1.0, limit=LIMIT)
    assert later == [1.0, 1.0]


def test_starts_at_once_are_not_spaced() -> None:
    """On a quiet channel a start missed by a pass's second call is replaced at once."""
    slots, _ = reserve([], 3, now=100.0, limit=LIMIT, spacing_s=0.2)
    assert slots == [100.0] * 3


def test_the_rest_of_a_pass_is_spaced_from_the_start_it_holds() -> None:
    rest, _ = reserve([100.5], 2, now=100.0, limit=LIMIT, spacing_s=0.2, after=100.5)
    assert rest == [pytest.approx(100.7), pytest.approx(100.9)]


def test_under_a_backlog_a_pass_s_starts_are_not_one_bunch() -> None:
    """A full window repeats one period on: unspaced, a pass's three starts there are one
    instant, and its second call, made when the first is answered, would miss its start."""
    _, schedule = reserve([], 5, now=0.0, limit=LIMIT)  # a burst: the window is full
    bunched, _ = reserve(schedule, 3, now=0.0, limit=LIMIT)
    assert bunched == [pytest.approx(10.5)] * 3
    spaced, _ = reserve(schedule, 3, now=0.0, limit=LIMIT, spacing_s=0.15)
    assert spaced == [pytest.approx(10.5), pytest.approx(10.65), pytest.approx(10.8)]


@settings(max_examples=200)
@given(
    calls=st.integers(min_value=1, max_value=20),
    period=st.floats(min_value=0.5, max_value=60),
    requests=st.lists(
        st.tuples(st.floats(min_value=0, max_value=5), st.integers(min_value=1, max_value=6)),
        max_size=40,
    ),
    spacing=st.sampled_from([0.0, 0.01, 0.3, 2.0]),
)
def test_no_window_ever_holds_more_than_the_limit(
    calls: int, period: float, requests: list[tuple[float, int]], spacing: float
) -> None:
    limit = Limit(calls=calls, period_s=period)
    now, schedule, every = 0.0, [], []
    for gap, n in requests:
        now += gap
        slots, schedule = reserve(schedule, n, now=now, limit=limit, spacing_s=spacing)
        assert all(slot >= now for slot in slots)
        assert slots == sorted(slots)
        assert all(b - a >= spacing - 1e-9 for a, b in pairwise(slots) if b > now)
        every += slots
    assert max_in_window(every, period) <= calls


def test_max_in_window_counts_half_open_windows() -> None:
    assert max_in_window([0, 1, 2, 10, 10.5], 10) == 4  # [1, 11) holds 1, 2, 10, 10.5
    assert max_in_window([0, 10, 20], 10) == 1
    assert max_in_window([], 10) == 0
