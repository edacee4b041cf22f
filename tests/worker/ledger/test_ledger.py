"""The ledger on SQLite and on PostgreSQL: recording, claiming, settling, reconciling."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from worker.commands import ContactRef, make_command
from worker.ledger import CommandState, Ledger, LedgerUnavailable, connect, migrate
from worker.ledger.db import current_revision, head_revision
from worker.ledger.store import NewEvent


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

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
    with engine.begin() as connection:
        for table in ("commands", "contacts", "events"):
            connection.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - fixed names
    yield Ledger(engine, clock=Clock())
    engine.dispose()


ANN = ContactRef(match_field="email", match_value="ann@example.com")


def event(key: str, *commands: object) -> NewEvent:
    return NewEvent(key, "contact.upsert", {"id": key}, list(commands))  # type: ignore[arg-type]


def upsert(ref: ContactRef = ANN, **fields: object) -> object:
    return make_command("upsert", "main", ref, fields=fields or {"firstName": "Ann"})


def tag(ref: ContactRef = ANN, *tags: str) -> object:
    return make_command("tag", "main", ref, tags=list(tags or ("vip",)))


def test_migrate_is_idempotent_and_reaches_head(ledger: Ledger) -> None:
    assert migrate(ledger.engine) is False
    assert current_revision(ledger.engine) == head_revision()


def test_record_keeps_event_and_commands_and_sees_duplicates(ledger: Ledger) -> None:
    first = ledger.record("web", [event("e1", upsert(), tag())])
    assert len(first) == 1 and not first[0].duplicate
    assert len(first[0].command_ids) == 2
    again = ledger.record("web", [event("e1", upsert())])
    assert again[0].duplicate
    assert again[0].command_ids == first[0].command_ids
    assert ledger.counts()["pending"] == 2


def test_same_key_from_another_source_is_not_a_duplicate(ledger: Ledger) -> None:
    ledger.record("web", [event("e1", upsert())])
    assert not ledger.record("crm", [event("e1", upsert())])[0].duplicate


def test_sequence_numbers_follow_acceptance_per_contact(ledger: Ledger) -> None:
    bob = ContactRef(match_field="email", match_value="bob@example.com")
    ids = [
        ledger.record("web", [event(f"e{i}", upsert(ref))])[0].command_ids[0]
        for i, ref in enumerate([ANN, bob, ANN, ANN])
    ]
    seqs = [ledger.command(i)["seq"] for i in ids]  # type: ignore[index]
    assert seqs[0] < seqs[2] < seqs[3]
    assert seqs[1] == 1


def test_claim_is_exclusive_and_a_second_delivery_finds_nothing(ledger: Ledger) -> None:
    (command_id,) = ledger.record("web", [event("e1", upsert())])[0].command_ids
    claimed = ledger.claim(command_id, lease_s=30)
    assert claimed is not None and claimed.kind == "upsert"
    assert ledger.claim(command_id, lease_s=30) is None
    assert ledger.complete(claimed, contact_id="42")
    assert ledger.claim(command_id, lease_s=30) is None
    assert ledger.command(command_id)["state"] == CommandState.DONE  # type: ignore[index]


def test_later_command_waits_for_the_earlier_one_of_its_contact(ledger: Ledger) -> None:
    first, second = ledger.record("web", [event("e1", upsert(), tag())])[0].command_ids
    assert ledger.claim(second, lease_s=30) is None
    claimed = ledger.claim(first, lease_s=30)
    assert claimed is not None
    assert ledger.claim(second, lease_s=30) is None  # the first is still running
    ledger.complete(claimed, contact_id="42")
    assert ledger.next_for_contact("main", ANN.key) == second
    assert ledger.claim(second, lease_s=30) is not None


def test_concurrent_claims_give_one_winner(ledger: Ledger) -> None:
    (command_id,) = ledger.record("web", [event("e1", upsert())])[0].command_ids
    winners = []

    def grab() -> None:
        if ledger.claim(command_id, lease_s=30) is not None:
            winners.append(1)

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert winners == [1]


def test_a_settle_needs_the_current_lease(ledger: Ledger) -> None:
    (command_id,) = ledger.record("web", [event("e1", upsert())])[0].command_ids
    stale = ledger.claim(command_id, lease_s=10)
    assert stale is not None
    ledger.clock.now += 11  # type: ignore[attr-defined]
    assert ledger.reclaim_expired(max_attempts=5) == [(command_id, "upsert", "main")]
    fresh = ledger.claim(command_id, lease_s=10)
    assert fresh is not None and fresh.attempts == 1
    assert not ledger.complete(stale, contact_id="1")  # the zombie cannot settle it
    assert ledger.complete(fresh, contact_id="1")


def test_reclaim_makes_a_dead_letter_when_attempts_run_out(ledger: Ledger) -> None:
    (command_id,) = ledger.record("web", [event("e1", upsert())])[0].command_ids
    assert ledger.claim(command_id, lease_s=1) is not None
    ledger.clock.now += 2  # type: ignore[attr-defined]
    assert ledger.reclaim_expired(max_attempts=1) == []
    row = ledger.command(command_id)
    assert row is not None and row["state"] == "dead" and row["reason"] == "worker_lost"


def test_reschedule_waits_until_not_before(ledger: Ledger) -> None:
    (command_id,) = ledger.record("web", [event("e1", upsert())])[0].command_ids
    claimed = ledger.claim(command_id, lease_s=30)
    assert claimed is not None
    now = ledger.clock()
    ledger.reschedule(claimed, not_before=now + 60, spend_attempt=False, reason="rate_limited")
    assert ledger.claim(command_id, lease_s=30) is None
    assert ledger.due(republish_after_s=0) == []
    ledger.clock.now += 61  # type: ignore[attr-defined]
    assert ledger.due(republish_after_s=0) == [(command_id, "upsert", "main")]
    again = ledger.claim(command_id, lease_s=30)
    assert again is not None and again.attempts == 0


def test_due_republishes_only_heads_and_only_after_the_quiet_period(ledger: Ledger) -> None:
    first, _second = ledger.record("web", [event("e1", upsert(), tag())])[0].command_ids
    assert ledger.due(republish_after_s=30) == []  # just published by the receiver
    ledger.clock.now += 31  # type: ignore[attr-defined]
    assert ledger.due(republish_after_s=30) == [(first, "upsert", "main")]
    assert ledger.due(republish_after_s=30) == []


def test_kill_keeps_reason_status_and_message(ledger: Ledger) -> None:
    (command_id,) = ledger.record("web", [event("e1", upsert())])[0].command_ids
    claimed = ledger.claim(command_id, lease_s=30)
    assert claimed is not None
    ledger.kill(claimed, reason="forbidden", status=403, error="PUT /contact/{id}: nope")
    row = ledger.command(command_id)
    assert row is not None
    assert (row["state"], row["reason"], row["last_status"]) == ("dead", "forbidden", 403)
    assert row["payload"] == {"fields": {"firstName": "Ann"}, "tags": []}


def test_unreachable_database_is_ledger_unavailable() -> None:
    engine = connect("postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(LedgerUnavailable):
        Ledger(engine).record("web", [event("e1", upsert())])


def test_an_old_command_is_republished_less_and_less_often(ledger: Ledger) -> None:
    (command_id,) = ledger.record("web", [event("e1", upsert())])[0].command_ids
    ledger.clock.now += 1000  # type: ignore[attr-defined]
    assert [due.id for due in ledger.due(republish_after_s=30)] == [command_id]
    ledger.clock.now += 31  # type: ignore[attr-defined]
    assert ledger.due(republish_after_s=30) == []  # it waits half its age (500 s) more
    ledger.clock.now += 500  # type: ignore[attr-defined]
    assert [due.id for due in ledger.due(republish_after_s=30)] == [command_id]
