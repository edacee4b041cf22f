"""Pacing one command's calls on its channel's schedule.

A :class:`Pacer` is the client's ``before_call`` hook for the length of one command. It
holds the starts reserved for the command; before each call it confirms the next one with
the limiter (a pause may have moved it, a stall may have missed it), sleeps up to it when it
is near, and raises :class:`Deferred` when it is far, so that the command goes back to the
ledger holding its starts and the worker is free for other work.
"""

from __future__ import annotations

import threading
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


class CallTimes:
    """How long a channel's calls take, seen from this process: from a call's start to the
    moment the same pass is ready for its next call (the answer, and what the pass does with
    it). An exponentially weighted mean per channel, shared by the process's threads.

    It sets how far apart one pass's starts are reserved (:meth:`spacing`): under a backlog
    the schedule hands out starts in bunches at each window's edge, and a pass given two
    starts of one bunch cannot use the second, which is gone by the time the first call is
    answered (it may start at most ``margin_s / 2`` late)."""

    WEIGHT = 0.2
    """The weight of each new measurement."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mean: dict[str, float] = {}

    def note(self, channel: str, seconds: float) -> None:
        """One call's time, start to the next call being ready."""
        with self._lock:
            mean = self._mean.get(channel)
            self._mean[channel] = seconds if mean is None else mean + self.WEIGHT * (seconds - mean)

    def spacing(self, channel: str, limit: Limit) -> float:
        """How far apart to reserve one pass's starts: the mean call time, at most the
        limit's even spacing (``period / calls``), so that spaced passes can still use the
        whole limit; 0 before any call was timed."""
        with self._lock:
            mean = self._mean.get(channel, 0.0)
        return min(mean, limit.period_s / limit.calls)


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
        spacing_s: float = 0.0,
        call_times: CallTimes | None = None,
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
        self.spacing_s = spacing_s
        """How far after this pass's last start a fresh one is reserved."""
        self.call_times = call_times
        """Told how long each call took, start to the next call (none: not timed)."""
        self.calls = 0
        self.waited_s = 0.0
        self._last_start: float | None = None
        self._last_go: float | None = None

    def __call__(self) -> None:
        """Before a call: wait for its start, or raise :class:`Deferred`.

        A far start defers the pass (what it already applied is recorded, so the pass
        resumes where it stopped); a near one is waited for here, calling ``keepalive``
        every few seconds."""
        if self._last_go is not None and self.call_times is not None:
            self.call_times.note(self.channel, time.monotonic() - self._last_go)
            self._last_go = None
        if self.starts:
            start = self.starts.pop(0)
        else:
            fresh = self.limiter.reserve(
                self.channel, 1, self.limit, spacing_s=self.spacing_s, after=self._last_start
            )
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
                self._last_start, self._last_go = start, time.monotonic()
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
