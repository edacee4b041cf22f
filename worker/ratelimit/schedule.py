"""The arithmetic of the rate limit: where the next calls may go. Pure, no I/O.

The state is the schedule of the channel's last ``calls`` reserved start times (past and
future). A new call may start at the earliest time ``s`` such that no more than ``calls``
starts fall in any window of ``period_s`` that contains ``s`` — that is, at least
``period_s + margin_s`` after the start ``calls`` places earlier — and never before the
channel's pause ends. Starts are handed out in non-decreasing order, so checking the one
``calls`` places back is enough.

This is a sliding-window log rather than a token bucket: a bucket (GCRA) with any burst
lets ``burst + period/interval`` calls into some window, over the limit; the log holds the
limit over ANY window while still letting a quiet channel burst its whole allowance at
once. ``margin_s`` absorbs the jitter between a reserved start and the moment the API sees
the call. See docs/rate-limiting.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

EPSILON_S = 1e-6
"""Added to each window boundary so float rounding can never put a start inside it."""


@dataclass(frozen=True)
class Limit:
    """``calls`` per ``period_s``, with ``margin_s`` of safety between windows."""

    calls: int
    period_s: float
    margin_s: float = 0.0

    def __post_init__(self) -> None:
        if self.calls < 1 or self.period_s <= 0 or self.margin_s < 0:
            raise ValueError(f"invalid limit {self}")


def reserve(
    schedule: Sequence[float],
    n: int,
    *,
    now: float,
    limit: Limit,
    paused_until: float = 0.0,
    spacing_s: float = 0.0,
    after: float | None = None,
) -> tuple[list[float], list[float]]:
    """Reserve ``n`` starts; returns them and the new schedule (its last ``calls`` entries).

    A start the schedule puts later than ``now`` is at least ``spacing_s`` after the one
    before it in this reservation (or ``after``, the start of the same pass's previous
    call): one pass's calls go one after the other, each waiting for the last one's
    answer, and under a backlog a start nearer than an answer takes would be missed, its
    replacement put at the end of the schedule. Starts at ``now`` are not spaced: one
    missed there is replaced by another at once. Spacing only moves starts later, so the
    limit holds as without it."""
    kept = sorted(schedule)[-limit.calls :]
    slots = []
    previous = after
    for _ in range(n):
        start = max(now, paused_until, kept[-1] if kept else now)
        if len(kept) >= limit.calls:
            boundary = kept[-limit.calls] + limit.period_s + limit.margin_s + EPSILON_S
            start = max(start, boundary)
        if previous is not None and start > now:
            start = max(start, previous + spacing_s)
        kept.append(start)
        kept = kept[-limit.calls :]
        slots.append(start)
        previous = start
    return slots, kept


def release(schedule: Sequence[float], slots: Sequence[float]) -> list[float]:
    """The schedule without ``slots`` (reserved, never used); one entry removed per slot."""
    remaining = list(schedule)
    for slot in slots:
        if slot in remaining:
            remaining.remove(slot)
    return remaining


def max_in_window(starts: Sequence[float], period_s: float) -> int:
    """The largest number of ``starts`` inside any half-open window of ``period_s``."""
    ordered = sorted(starts)
    best, left = 0, 0
    for right, start in enumerate(ordered):
        while start - ordered[left] >= period_s:
            left += 1
        best = max(best, right - left + 1)
    return best
