"""Group commit: the threads of a process that write at the same moment share one write.

Each caller hands in its item and waits. The first to arrive while no write is under way
leads: it takes every item waiting (its own first, up to ``max_group``), runs ``write`` on
them once, gives each item its outcome, wakes the callers, and hands the lead to the
oldest item that arrived meanwhile, if any. So a caller alone writes at once, on its own
thread (no hand-over to a writer thread, no timer), and under load the items that pile up
while one write waits on the database go together in the next: one round trip and one
commit for many.

This is the leader/follower scheme of database write groups (PostgreSQL's own WAL group
commit, RocksDB's write groups), here in front of the database rather than inside it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_PENDING = object()


class _Slot(Generic[T, R]):
    """One caller's item, its outcome once written, and the lock it waits on."""

    __slots__ = ("item", "outcome", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.outcome: R | BaseException | object = _PENDING
        self.wake = threading.Lock()
        self.wake.acquire()  # released by the leader that settles the slot or hands it the lead


class GroupCommit(Generic[T, R]):
    """Calls ``write`` on groups of the items that :meth:`submit` is given concurrently.

    ``write`` gets the items in the order they arrived and returns one outcome per item, in
    the same order: its result, or the exception that caller is to raise. An exception
    raised by ``write`` itself is every caller's outcome.
    """

    def __init__(
        self,
        write: Callable[[Sequence[T]], Sequence[R | BaseException]],
        *,
        max_group: int = 64,
    ) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self._write = write
        self._max_group = max_group
        self._mutex = threading.Lock()
        self._waiting: deque[_Slot[T, R]] = deque()
        self._leading = False
        self.groups = 0
        """Writes run so far (with :attr:`items`, the mean group size)."""
        self.items = 0

    def submit(self, item: T) -> R:
        """Write ``item`` (with whatever else is waiting); its outcome, or raise it."""
        slot: _Slot[T, R] = _Slot(item)
        with self._mutex:
            self._waiting.append(slot)
            lead = not self._leading
            self._leading = True
        if not lead:
            slot.wake.acquire()  # settled by a leader, or handed the lead
        if slot.outcome is _PENDING:
            self._lead()
        outcome = slot.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome  # type: ignore[return-value]

    def _lead(self) -> None:
        # The leader's own slot is the oldest waiting: it is in the group it takes.
        with self._mutex:
            count = min(self._max_group, len(self._waiting))
            group = [self._waiting.popleft() for _ in range(count)]
        outcomes: Sequence[R | BaseException]
        try:
            outcomes = self._write([slot.item for slot in group])
            if len(outcomes) != len(group):
                raise RuntimeError(f"write gave {len(outcomes)} outcomes for {len(group)} items")
        except BaseException as error:  # every caller learns it; none waits forever
            outcomes = [error] * len(group)
        finally:
            with self._mutex:
                self.groups += 1
                self.items += len(group)
                successor = self._waiting[0] if self._waiting else None
                if successor is None:
                    self._leading = False
        for slot, outcome in zip(group, outcomes, strict=True):
            slot.outcome = outcome
        if successor is not None:
            successor.wake.release()  # first: the next group's write starts at once
        for slot in group[1:]:
            slot.wake.release()
