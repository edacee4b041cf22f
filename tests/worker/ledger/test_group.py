"""Group commit (worker/ledger/group.py) with real threads and no database: who leads, what
goes in a group, and what each caller gets back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest

from worker.ledger.group import GroupCommit

pytestmark = pytest.mark.timeout(30)  # a lost wake-up fails the test instead of hanging

JOIN_S = 10.0


class Caller(threading.Thread):
    """A thread that submits one item and keeps what it got: a result or an exception."""

    def __init__(self, coordinator: GroupCommit[str, str], item: str) -> None:
        super().__init__(name=f"caller-{item}", daemon=True)
        self.coordinator = coordinator
        self.item = item
        self.result: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.coordinator.submit(self.item)
        except BaseException as error:  # kept for the test to look at
            self.error = error

    def outcome(self) -> str | BaseException | None:
        self.join(JOIN_S)
        assert not self.is_alive(), f"{self.name} is still waiting for its outcome"
        return self.error if self.error is not None else self.result


class Writes:
    """A ``write`` that notes each group (its items and the thread that ran it), answers each
    item with ``item + "!"``, and holds its first call until :attr:`release` is set, so that
    later callers pile up behind it."""

    def __init__(
        self,
        answer: Callable[[Sequence[str]], Sequence[str | BaseException]] | None = None,
        *,
        hold_first: bool = True,
    ) -> None:
        self.groups: list[list[str]] = []
        self.threads: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self._answer = answer or (lambda items: [f"{item}!" for item in items])

    def __call__(self, items: Sequence[str]) -> Sequence[str | BaseException]:
        self.groups.append(list(items))
        self.threads.append(threading.current_thread().name)
        if len(self.groups) == 1:
            self.entered.set()
            assert self.release.wait(JOIN_S), "the test never released the first write"
        return self._answer(items)


def waiting(coordinator: GroupCommit[str, str], count: int) -> None:
    """Wait until ``count`` callers wait behind the running write (so arrival is ordered)."""
    deadline = time.monotonic() + JOIN_S
    while len(coordinator._waiting) < count:
        assert time.monotonic() < deadline, f"never {count} callers waiting"
        time.sleep(0.001)


def pile_up(coordinator: GroupCommit[str, str], writes: Writes, items: str) -> list[Caller]:
    """The first item's caller leads and its write is held; the others arrive one by one,
    in order, and wait. Returns the callers, the leader first."""
    leader = Caller(coordinator, items[0])
    leader.start()
    assert writes.entered.wait(JOIN_S), "the first caller never wrote"
    callers = [leader]
    for count, item in enumerate(items[1:], start=1):
        caller = Caller(coordinator, item)
        caller.start()
        waiting(coordinator, count)
        callers.append(caller)
    return callers


def let_go(
    answer: Callable[[Sequence[str]], list[str]], items: str
) -> tuple[GroupCommit[str, str], Writes, list[str | BaseException | None]]:
    """``items`` piled up behind a held first write, then released: the coordinator, its
    writes and each caller's outcome, the leader's first."""
    writes = Writes(answer)
    coordinator = GroupCommit(writes)
    callers = pile_up(coordinator, writes, items)
    writes.release.set()
    return coordinator, writes, [caller.outcome() for caller in callers]


def test_a_lone_caller_writes_at_once_on_its_own_thread_in_a_group_of_one() -> None:
    writes = Writes(hold_first=False)
    coordinator = GroupCommit(writes)
    assert coordinator.submit("a") == "a!"
    assert writes.groups == [["a"]]
    assert writes.threads == [threading.current_thread().name]  # no hand-over to a writer
    assert (coordinator.groups, coordinator.items) == (1, 1)
    assert coordinator.submit("b") == "b!"  # the lead was given up: the next one leads too
    assert writes.groups == [["a"], ["b"]]
    assert (coordinator.groups, coordinator.items) == (2, 2)


def test_callers_that_arrive_during_a_write_go_together_in_the_next_in_arrival_order() -> None:
    writes = Writes()
    coordinator = GroupCommit(writes)
    callers = pile_up(coordinator, writes, "abcde")
    assert writes.groups == [["a"]]  # nothing more is written while the first write runs
    writes.release.set()
    assert [caller.outcome() for caller in callers] == ["a!", "b!", "c!", "d!", "e!"]
    assert writes.groups == [["a"], ["b", "c", "d", "e"]]
    assert writes.threads == ["caller-a", "caller-b"]  # the oldest waiting led the second
    assert (coordinator.groups, coordinator.items) == (2, 5)
    assert coordinator.submit("f") == "f!"  # and gave the lead up once nobody waited
    assert writes.groups[-1] == ["f"]


def test_max_group_caps_a_group_and_the_rest_go_in_the_next() -> None:
    writes = Writes()
    coordinator = GroupCommit(writes, max_group=2)
    callers = pile_up(coordinator, writes, "abcdef")
    writes.release.set()
    assert [caller.outcome() for caller in callers] == ["a!", "b!", "c!", "d!", "e!", "f!"]
    assert writes.groups == [["a"], ["b", "c"], ["d", "e"], ["f"]]
    assert writes.threads == ["caller-a", "caller-b", "caller-d", "caller-f"]
    assert (coordinator.groups, coordinator.items) == (4, 6)


def test_a_group_of_one_at_most_writes_each_item_alone() -> None:
    writes = Writes()
    coordinator = GroupCommit(writes, max_group=1)
    callers = pile_up(coordinator, writes, "abc")
    writes.release.set()
    assert [caller.outcome() for caller in callers] == ["a!", "b!", "c!"]
    assert writes.groups == [["a"], ["b"], ["c"]]
    assert (coordinator.groups, coordinator.items) == (3, 3)


def test_an_exception_outcome_is_raised_only_in_its_own_caller() -> None:
    refused = ValueError("c is refused")

    def answer(items: Sequence[str]) -> list[str | BaseException]:
        return [refused if item == "c" else f"{item}!" for item in items]

    writes = Writes(answer)
    coordinator = GroupCommit(writes)
    callers = pile_up(coordinator, writes, "abcd")
    writes.release.set()
    assert [caller.outcome() for caller in callers] == ["a!", "b!", refused, "d!"]
    assert callers[2].error is refused  # the very instance write gave, nothing wrapped
    assert writes.groups == [["a"], ["b", "c", "d"]]


def test_the_leaders_own_exception_outcome_is_raised_in_the_leader() -> None:
    refused = KeyError("mine")
    coordinator: GroupCommit[str, str] = GroupCommit(
        lambda items: [refused if item == "bad" else item for item in items]
    )
    with pytest.raises(KeyError) as raised:
        coordinator.submit("bad")
    assert raised.value is refused
    assert coordinator.submit("good") == "good"
    assert (coordinator.groups, coordinator.items) == (2, 2)


def test_an_exception_raised_by_write_reaches_every_caller_of_its_group_only() -> None:
    broken = OSError("the disk is gone")

    def answer(items: Sequence[str]) -> list[str]:
        if "b" in items:
            raise broken
        return [f"{item}!" for item in items]

    writes = Writes(answer)
    coordinator = GroupCommit(writes)
    callers = pile_up(coordinator, writes, "abcd")
    writes.release.set()
    assert [caller.outcome() for caller in callers] == ["a!", broken, broken, broken]
    assert writes.groups == [["a"], ["b", "c", "d"]]
    assert (coordinator.groups, coordinator.items) == (2, 4)
    # The coordinator is not left believing a write runs: the next caller writes at once.
    assert coordinator.submit("e") == "e!"
    assert writes.groups[-1] == ["e"]
    assert (coordinator.groups, coordinator.items) == (3, 5)


def test_a_failed_write_still_hands_the_lead_to_those_waiting() -> None:
    def answer(items: Sequence[str]) -> list[str]:
        if items == ["a"]:
            raise RuntimeError("first write fails")
        return [f"{item}!" for item in items]

    coordinator, writes, outcomes = let_go(answer, "abc")
    assert isinstance(outcomes[0], RuntimeError) and str(outcomes[0]) == "first write fails"
    assert outcomes[1:] == ["b!", "c!"]
    assert writes.groups == [["a"], ["b", "c"]]
    assert coordinator.submit("d") == "d!"


def test_a_base_exception_from_write_is_every_callers_outcome_too() -> None:
    def answer(items: Sequence[str]) -> list[str]:
        raise KeyboardInterrupt

    coordinator, _, outcomes = let_go(answer, "ab")
    assert all(isinstance(outcome, KeyboardInterrupt) for outcome in outcomes)
    assert (coordinator.groups, coordinator.items) == (2, 2)


@pytest.mark.parametrize("answer_count", [0, 1, 3])
def test_a_wrong_number_of_outcomes_is_an_error_for_every_caller(answer_count: int) -> None:
    def answer(items: Sequence[str]) -> list[str]:
        if items == ["b", "c"]:
            return [f"answer {n}" for n in range(answer_count)]
        return [f"{item}!" for item in items]

    coordinator, writes, outcomes = let_go(answer, "abc")
    assert outcomes[0] == "a!"
    for outcome in outcomes[1:]:  # no caller takes an answer that may be another's
        assert isinstance(outcome, RuntimeError)
        assert str(outcome) == f"write gave {answer_count} outcomes for 2 items"
    assert writes.groups == [["a"], ["b", "c"]]
    assert coordinator.submit("d") == "d!"
    assert (coordinator.groups, coordinator.items) == (3, 4)


def test_a_lone_caller_given_the_wrong_number_of_outcomes_raises() -> None:
    coordinator: GroupCommit[str, str] = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="write gave 0 outcomes for 1 items"):
        coordinator.submit("a")


@pytest.mark.parametrize("max_group", [0, -1])
def test_a_group_smaller_than_one_is_refused(max_group: int) -> None:
    with pytest.raises(ValueError, match="max_group must be at least 1"):
        GroupCommit(lambda items: list(items), max_group=max_group)


def test_many_threads_each_get_their_own_outcome_and_every_item_is_written_once() -> None:
    written: list[str] = []
    sizes: list[int] = []
    in_write = threading.Lock()

    def write(items: Sequence[str]) -> list[str | BaseException]:
        assert in_write.acquire(blocking=False), "two writes ran at the same time"
        try:
            written.extend(items)
            sizes.append(len(items))
            time.sleep(0.0005)  # a round trip, for callers to pile up behind
            return [ValueError(item) if item.endswith("7") else item.upper() for item in items]
        finally:
            in_write.release()

    coordinator = GroupCommit(write, max_group=5)
    threads_n, per_thread = 12, 60
    wrong: list[str] = []
    start = threading.Barrier(threads_n)

    def run(thread: int) -> None:
        start.wait(JOIN_S)
        mine: list[str] = []
        for n in range(per_thread):
            item = f"t{thread}-{n}"
            try:
                got = coordinator.submit(item)
            except ValueError as error:
                got = f"refused {error}"
            expected = f"refused {item}" if item.endswith("7") else item.upper()
            if got != expected:
                wrong.append(f"{item}: {got!r}")
            mine.append(item)
        # A caller's own items were written in the order it submitted them.
        if [item for item in written if item.startswith(f"t{thread}-")] != mine:
            wrong.append(f"thread {thread}: its items were written out of order")

    threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_S * 2)
    assert not any(thread.is_alive() for thread in threads), "a caller never got its outcome"
    assert wrong == []
    total = threads_n * per_thread
    everything = [f"t{t}-{n}" for t in range(threads_n) for n in range(per_thread)]
    assert sorted(written) == sorted(everything)  # each item written once
    assert max(sizes) <= 5
    assert coordinator.items == total == sum(sizes)
    assert coordinator.groups == len(sizes) < total  # some went together
