"""How far apart a pass's starts are reserved: the channel's call time, as this process saw it."""

from __future__ import annotations

import pytest

from worker.ratelimit import CallTimes, Limit

LIMIT = Limit(calls=60, period_s=6.0)  # even spacing: 0.1 s


def test_no_spacing_before_a_call_was_timed() -> None:
    assert CallTimes().spacing("main", LIMIT) == 0.0


def test_the_spacing_follows_the_calls_times() -> None:
    times = CallTimes()
    times.note("main", 0.05)
    assert times.spacing("main", LIMIT) == pytest.approx(0.05)
    for _ in range(30):
        times.note("main", 0.08)
    assert times.spacing("main", LIMIT) == pytest.approx(0.08, abs=0.001)
    assert times.spacing("other", LIMIT) == 0.0  # per channel


def test_a_slow_api_is_spaced_at_most_evenly_over_the_period() -> None:
    """Spaced further than ``period / calls``, passes one after the other could no longer
    use the whole limit."""
    times = CallTimes()
    times.note("main", 2.0)
    assert times.spacing("main", LIMIT) == pytest.approx(0.1)
