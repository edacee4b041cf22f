"""Dead letters on SQLite and on PostgreSQL: listing, filtering, paging, replaying, purging."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services import empty_ledger

from worker.commands import ContactRef, make_command
from worker.deadletter import (
    DeadLetterFilter,
    count_dead,
    counts_by_reason,
    dead_id_batches,
    get_dead,
    list_dead,
    newest_dead_id,
    purge,
    purge_batches,
    replay,
)
from worker.ledger import Ledger, connect, migrate
from worker.ledger.store import NewEvent

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = connect(url)
    migrate(engine)
    empty_ledger(engine)
    yield Ledger(engine, clock=Clock())
    engine.dispose()


def open_command(ledger: Ledger, key: str, *, channel: str = "main", source: str = "web") -> int:
    ref = ContactRef(match_field="email", match_value=f"{key}@example.com")
    command = make_command("upsert", channel, ref, fields={"firstName": key})
    (recorded,) = ledger.record(source, [NewEvent(key, "contact.upsert", {"id": key}, [command])])
    return recorded.command_ids[0]


def dead(
    ledger: Ledger,
    key: str,
    *,
    at: float,
    reason: str = "forbidden",
    status: int | None = 403,
    **where: str,
) -> int:
    """A dead letter that died at ``at``."""
    command_id = open_command(ledger, key, **where)
    claimed = ledger.claim(command_id, lease_s=30)
    assert claimed is not None
    ledger.clock.now = at  # type: ignore[attr-defined]
    ledger.kill(claimed, reason=reason, status=status, error=f"{key}: refused by the API")
    return command_id


def done(ledger: Ledger, key: str) -> int:
    command_id = open_command(ledger, key)
    claimed = ledger.claim(command_id, lease_s=30)
    assert claimed is not None and ledger.complete(claimed, contact_id="c-1")
    return command_id


@pytest.fixture
def three(ledger: Ledger) -> list[int]:
    """Three dead letters, oldest first, of different channels, sources and reasons."""
    return [
        dead(ledger, "a", at=T0 + 10),
        dead(ledger, "b", at=T0 + 30, channel="crm", reason="invalid", status=None),
        dead(ledger, "c", at=T0 + 20, source="crm-hook", reason="no_such_contact"),
    ]


def test_list_is_newest_first_with_contact_event_and_failure(
    ledger: Ledger, three: list[int]
) -> None:
    open_command(ledger, "pending")
    done(ledger, "done")
    letters = list_dead(ledger.engine)
    assert [letter.id for letter in letters] == [three[1], three[2], three[0]]
    assert count_dead(ledger.engine) == 3
    first = letters[2]
    assert (first.source, first.event_key, first.event_type) == ("web", "a", "contact.upsert")
    assert (first.channel, first.kind, first.contact) == ("main", "upsert", "email=a@example.com")
    assert (first.reason, first.last_status, first.attempts) == ("forbidden", 403, 1)
    assert first.last_error == "a: refused by the API"
    assert first.payload == {"fields": {"firstName": "a"}, "tags": []}
    assert first.finished_at == T0 + 10


def test_filters_by_channel_reason_source_since_and_ids(ledger: Ledger, three: list[int]) -> None:
    a, b, c = three

    def ids(**criteria: Any) -> list[int]:
        chosen = DeadLetterFilter(**criteria)
        found = [letter.id for letter in list_dead(ledger.engine, chosen)]
        assert count_dead(ledger.engine, chosen) == len(found)
        return sorted(found)

    assert ids(channel="crm") == [b]
    assert ids(reason="no_such_contact") == [c]
    assert ids(source="web") == [a, b]
    assert ids(since=T0 + 20) == [b, c]
    assert ids(ids=[a, c, 9999]) == [a, c]
    assert ids(ids=[]) == []
    assert ids(source="web", since=T0 + 20, channel="crm") == [b]
    assert ids(channel="nope") == []


def test_pages_cover_every_dead_letter_once_in_order(ledger: Ledger) -> None:
    made = [dead(ledger, f"k{i}", at=T0 + i) for i in range(7)]
    pages = [list_dead(ledger.engine, limit=3, offset=offset) for offset in (0, 3, 6, 9)]
    assert [len(page) for page in pages] == [3, 3, 1, 0]
    assert [letter.id for page in pages for letter in page] == made[::-1]


def test_same_finish_time_orders_by_id_descending(ledger: Ledger) -> None:
    made = [dead(ledger, f"k{i}", at=T0) for i in range(3)]
    assert [letter.id for letter in list_dead(ledger.engine)] == made[::-1]


def test_counts_by_reason_most_frequent_first(ledger: Ledger, three: list[int]) -> None:
    dead(ledger, "d", at=T0 + 40, reason="invalid")
    assert counts_by_reason(ledger.engine) == {"invalid": 2, "forbidden": 1, "no_such_contact": 1}


def test_get_finds_only_dead_letters(ledger: Ledger, three: list[int]) -> None:
    letter = get_dead(ledger.engine, three[0])
    assert letter is not None and letter.id == three[0]
    assert get_dead(ledger.engine, open_command(ledger, "pending")) is None
    assert get_dead(ledger.engine, 987654) is None


def test_to_json_has_iso_utc_times_and_epochs(ledger: Ledger, three: list[int]) -> None:
    letter = get_dead(ledger.engine, three[0])
    assert letter is not None
    data = json.loads(json.dumps(letter.to_json()))
    assert data["finished_at"] == "2023-11-14T22:13:30.000Z"
    assert data["finished_at_epoch"] == T0 + 10
    assert data["created_at"].endswith("Z") and data["created_at_epoch"] == T0
    assert data["source"] == "web" and data["event_key"] == "a"


def test_replay_puts_a_dead_letter_back_to_pending_with_attempts_reset(
    ledger: Ledger, three: list[int]
) -> None:
    pending = open_command(ledger, "pending")
    finished = done(ledger, "done")
    untouched = {i: ledger.command(i) for i in (pending, finished, three[1])}
    changed = replay(ledger.engine, [three[0], three[2], pending, finished, 9999], now=T0 + 99)
    assert [(d.id, d.kind) for d in changed] == [(three[0], "upsert"), (three[2], "upsert")]
    row = ledger.command(three[0])
    assert row is not None
    assert (row["state"], row["attempts"], row["reason"]) == ("pending", 0, None)
    assert (row["not_before"], row["finished_at"], row["published_at"]) == (None, None, T0 + 99)
    assert (row["last_status"], row["last_error"]) == (403, "a: refused by the API")
    assert {i: ledger.command(i) for i in untouched} == untouched
    assert ledger.claim(three[0], lease_s=30) is not None  # a worker can take it again
    assert replay(ledger.engine, [three[0]]) == []  # no longer a dead letter
    assert count_dead(ledger.engine) == 1


def test_purge_deletes_only_dead_letters_and_keeps_their_events(
    ledger: Ledger, three: list[int]
) -> None:
    pending = open_command(ledger, "pending")
    assert purge(ledger.engine, [three[0], pending, 9999]) == 1
    assert ledger.command(three[0]) is None
    assert ledger.command(pending) is not None
    assert count_dead(ledger.engine) == 2
    again = ledger.record("web", [NewEvent("a", "contact.upsert", {"id": "a"}, [])])
    assert again[0].duplicate  # the event is still known: a resend is not applied twice


def test_purge_takes_an_unsent_outbox_row_with_its_command(ledger: Ledger) -> None:
    newest = dead(ledger, "z", at=T0)  # recorded, never relayed, then dead and purged
    assert ledger.outbox_size() == 1
    assert purge(ledger.engine, [newest]) == 1
    assert ledger.outbox_size() == 0
    # SQLite gives the purged (highest) id to the next command: its outbox row is its own
    following = open_command(ledger, "after")
    assert ledger.outbox_size() == 1
    assert ledger.relay(lambda due: len(list(due))) == 1
    assert ledger.command(following) is not None


def test_id_batches_walk_every_match_once_in_ascending_order(ledger: Ledger) -> None:
    made = [
        dead(ledger, f"k{i}", at=T0 + i, reason="invalid" if i % 2 else "forbidden")
        for i in range(7)
    ]
    batches = list(dead_id_batches(ledger.engine, batch_size=3))
    assert batches == [made[0:3], made[3:6], made[6:]]
    chosen = DeadLetterFilter(reason="invalid", ids=[made[1], made[2], made[5], 9999])
    assert list(dead_id_batches(ledger.engine, chosen, batch_size=1)) == [[made[1]], [made[5]]]
    newest = newest_dead_id(ledger.engine)
    later = dead(ledger, "later", at=T0 + 100)
    assert newest == made[-1] and newest_dead_id(ledger.engine) == later
    assert sum(map(len, dead_id_batches(ledger.engine, up_to_id=newest, batch_size=4))) == 7


def test_batches_may_be_changed_while_walking(ledger: Ledger) -> None:
    made = [dead(ledger, f"k{i}", at=T0 + i) for i in range(5)]
    keep = dead(ledger, "keep", at=T0 + 9, reason="invalid")
    replayed = [replay(ledger.engine, ids) for ids in dead_id_batches(ledger.engine, batch_size=2)]
    assert sum(map(len, replayed)) == 6 and count_dead(ledger.engine) == 0
    for command_id in [*made, keep]:
        claimed = ledger.claim(command_id, lease_s=30)
        assert claimed is not None
        ledger.kill(claimed, reason="invalid" if command_id == keep else "forbidden")
    chosen = DeadLetterFilter(reason="forbidden")
    assert list(purge_batches(ledger.engine, chosen, batch_size=2)) == [2, 2, 1]
    assert [letter.id for letter in list_dead(ledger.engine)] == [keep]
