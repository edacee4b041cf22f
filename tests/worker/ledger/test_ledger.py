"""The ledger on SQLite and on PostgreSQL: recording, claiming, settling, reconciling."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import empty_ledger
from sqlalchemy import text

from worker.commands import ContactRef, make_command
from worker.ledger import CommandState, Ledger, LedgerUnavailable, connect, migrate
from worker.ledger.db import current_revision, head_revision
from worker.ledger.store import Due, NewEvent


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
    empty_ledger(engine)
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


def test_found_absent_holds_for_the_next_claim_not_after_a_reclaim(ledger: Ledger) -> None:
    """A deferred pass's "no such contact" is kept for the claim that resumes it; a claim
    whose worker died may have created the contact, so a reclaim forgets it."""
    (command_id,) = ledger.record("web", [event("e1", upsert())])[0].command_ids
    first = ledger.claim(command_id, lease_s=10)
    assert first is not None and first.absent_at is None
    now = ledger.clock.now  # type: ignore[attr-defined]
    ledger.reschedule(first, not_before=now, spend_attempt=False, absent_at=now - 1)
    resumed = ledger.claim(command_id, lease_s=10)
    assert resumed is not None and resumed.absent_at == now - 1
    ledger.clock.now += 11  # type: ignore[attr-defined]  # its worker died mid-pass
    assert ledger.reclaim_expired(max_attempts=5) == [(command_id, "upsert", "main")]
    after_reclaim = ledger.claim(command_id, lease_s=10)
    assert after_reclaim is not None and after_reclaim.absent_at is None
    # A failure that spends an attempt keeps it for the next claim only when given again.
    ledger.reschedule(after_reclaim, not_before=now, spend_attempt=True, absent_at=now)
    again = ledger.claim(command_id, lease_s=10)
    assert again is not None and again.attempts == 2 and again.absent_at == now
    ledger.reschedule(again, not_before=now, spend_attempt=True)
    last = ledger.claim(command_id, lease_s=10)
    assert last is not None and last.absent_at is None


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


def outbox(ledger: Ledger) -> list[int]:
    with ledger.engine.connect() as connection:
        return list(connection.execute(text("SELECT command_id FROM outbox ORDER BY 1")).scalars())


def test_recording_puts_each_new_command_in_the_outbox_once(ledger: Ledger) -> None:
    [one] = ledger.record("web", [event("e1", upsert())])  # the one-statement path
    [two] = ledger.record("web", [event("e2", upsert(), tag())])  # the transaction path
    ledger.record("web", [event("e1", upsert()), event("e2", upsert())])  # duplicates
    assert outbox(ledger) == [*one.command_ids, *two.command_ids]
    assert ledger.outbox_size() == 3


def test_relay_publishes_in_order_and_removes_only_what_was_sent(ledger: Ledger) -> None:
    ids = [ledger.record("web", [event(f"e{i}", tag())])[0].command_ids[0] for i in range(5)]
    offered: list[list[Due]] = []

    def broker_takes_two(due: object) -> int:
        offered.append(list(due))  # type: ignore[call-overload]
        return 2  # then fails, as a broker that went down mid-batch

    assert ledger.relay(broker_takes_two, limit=4) == 2
    assert offered == [[Due(i, "tag", "main") for i in ids[:4]]]
    assert outbox(ledger) == ids[2:]
    assert ledger.relay(lambda due: len(list(due)), limit=10) == 3  # type: ignore[call-overload]
    assert outbox(ledger) == []
    nothing_to_send = ledger.relay(lambda due: 1 / 0, limit=10)  # type: ignore[arg-type,return-value]
    assert nothing_to_send == 0  # an empty outbox never calls send


def test_a_failing_send_rolls_back_and_keeps_every_row(ledger: Ledger) -> None:
    ids = [ledger.record("web", [event(f"e{i}", tag())])[0].command_ids[0] for i in range(3)]

    def broker_gone(_due: object) -> int:
        raise ConnectionError("broker gone")

    with pytest.raises(ConnectionError):
        ledger.relay(broker_gone)
    assert outbox(ledger) == ids


def test_concurrent_relays_never_publish_a_row_twice(postgres_url: str) -> None:
    engine = connect(postgres_url)
    migrate(engine)
    empty_ledger(engine)
    ledger = Ledger(engine)
    for batch in range(20):
        ledger.record("web", [event(f"e{batch}-{i}", tag()) for i in range(10)])
    published: list[int] = []
    lock = threading.Lock()

    def slow_send(due: object) -> int:
        rows = list(due)  # type: ignore[call-overload]
        threading.Event().wait(0.01)  # hold the rows while others look
        with lock:
            published.extend(row.id for row in rows)
        return len(rows)

    def relay_until_empty() -> None:
        while ledger.outbox_size():
            ledger.relay(slow_send, limit=7)

    threads = [threading.Thread(target=relay_until_empty) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(published) == 200
    assert len(set(published)) == 200
    engine.dispose()


def test_a_restart_of_the_database_costs_no_refusal(postgres_url: str) -> None:
    """Pooled connections cut by a restart, used again within the second (no idle test):
    the recording is tried once more on a new connection, and answers."""
    import psycopg
    from services import PG_ADMIN

    engine = connect(postgres_url)
    migrate(engine)
    ledger = Ledger(engine)
    first = ledger.record("web", [event("before-cut", upsert())])
    database = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        cut = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
            (database,),
        ).fetchone()
    assert cut is not None and cut[0] >= 1  # the pool's connection, as a restart would
    [after] = ledger.record("web", [event("after-cut", upsert())])
    assert not after.duplicate and after.command_ids[0] > first[0].command_ids[0]
    [again] = ledger.record("web", [event("after-cut", upsert())])
    assert again.duplicate and again.command_ids == after.command_ids
    engine.dispose()
