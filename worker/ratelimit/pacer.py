"""Pacing one command's calls on its channel's schedule.

A :class:`Pacer` is the client's ``before_call`` hook for the length of one command. It
holds the starts reserved for the command; before each call it confirms the next one with
the limiter (a pause may have moved it, a stall may have missed it), sleeps up to it when it
is near, and raises :class:`Deferred` when it is far, so that the command goes back to the
ledger holding its starts and the worker is free for other work.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from worker.ratelimit.schedule import Limit
from worker.ratelimit.sql import SqlLimiter


class Deferred(Exception):
    """The command's next call may not start for a while: put it back until ``start``."""

    def __init__(self, start: float, now: float) -> None:
        super().__init__(f"next start in {start - now:.1f} s")
        self.start = start
        self.now = now


class Pacer:
    """Spaces one command's calls on its channel's schedule."""

    def __init__(
        self,
        limiter: SqlLimiter,
        channel: str,
        limit: Limit,
        starts: list[float],
        epoch: int,
        *,
        inline_max_s: float,
        tolerance_s: float,
        sleep: Callable[[float], None] = time.sleep,
        keepalive: Callable[[], None] | None = None,
        keepalive_every_s: float = 5.0,
    ) -> None:
        self.limiter = limiter
        self.channel = channel
        self.limit = limit
        self.starts = list(starts)
        self.epoch = epoch
        self.inline_max_s = inline_max_s
        self.tolerance_s = tolerance_s
        self.sleep = sleep
        self.keepalive = keepalive
        self.keepalive_every_s = keepalive_every_s
        self.calls = 0
        self.waited_s = 0.0

    def __call__(self) -> None:
        """Before a call: wait for its start, or raise :class:`Deferred`.

        A far start defers the pass (what it already applied is recorded, so the pass
        resumes where it stopped); a near one is waited for here, calling ``keepalive``
        every few seconds."""
        if self.starts:
            start = self.starts.pop(0)
        else:
            fresh = self.limiter.reserve(self.channel, 1, self.limit)
            start, self.epoch = fresh.starts[0], fresh.epoch
        while True:
            confirmed = self.limiter.confirm(
                self.channel, start, self.epoch, self.limit, tolerance_s=self.tolerance_s
            )
            if confirmed.epoch != self.epoch:
                self.starts = []  # a pause voided every start held before it
            start, self.epoch, now = confirmed.starts[0], confirmed.epoch, confirmed.now
            wait = start - now
            if wait <= 0.005:
                self.calls += 1
                return
            if wait > self.inline_max_s:
                self.starts.insert(0, start)
                raise Deferred(start, now)
            pause = min(wait, self.keepalive_every_s)
            self.sleep(pause)
            self.waited_s += pause
            if self.keepalive is not None:
                self.keepalive()

    def unused(self) -> list[float]:
        """Starts still held (reserved and not yet used)."""
        return list(self.starts)

    def release(self) -> None:
        """Give the unused starts back to the channel."""
        self.limiter.release(self.channel, self.starts, self.epoch)
        self.starts = []
