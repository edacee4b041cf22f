"""The group intake (worker/ledger/intake.py) on a real PostgreSQL: one-command events of
concurrent threads recorded in groups by one statement, what each caller gets back, and
what the ledger holds afterwards."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from services import PG_ADMIN, empty_ledger
from sqlalchemy import Engine, select

from worker.commands import Command, ContactRef, make_command
from worker.ledger import Ledger, LedgerUnavailable, UnstorableValue, connect, migrate
from worker.ledger.intake import GroupIntake, Outcome, connection_cut, row
from worker.ledger.schema import commands, contacts, events, outbox
from worker.ledger.store import NewEvent, Recorded

pytestmark = pytest.mark.timeout(60)  # a lost wake-up or a lock cycle fails, never hangs

NOW = 1_700_000_000.25
JOIN_S = 30.0

ANN = ContactRef(match_field="email", match_value="ann@example.com")
BOB = ContactRef(match_field="email", match_value="bob@example.com")
ZED = ContactRef(contact_id="zed-1")


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    engine = connect(postgres_url)
    migrate(engine)
    empty_ledger(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def ledger(engine: Engine) -> Ledger:
    return Ledger(engine, clock=Clock())


@pytest.fixture
def intake(engine: Engine) -> GroupIntake:
    return GroupIntake(engine, clock=Clock())


def upsert(ref: ContactRef = ANN, channel: str = "main", **fields: Any) -> Command:
    return make_command("upsert", channel, ref, fields=fields or {"firstName": "Ann"})


def event(key: str, command: Command | None = None, payload: Any = None) -> NewEvent:
    return NewEvent(
        key, "contact.upsert", {"id": key} if payload is None else payload, [command or upsert()]
    )


def one(
    key: str,
    ref: ContactRef = ANN,
    /,
    *,
    source: str = "web",
    channel: str = "main",
    payload: Any = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A row of the intake's statement: event ``key`` with an upsert of ``ref``."""
    command = upsert(ref, channel)
    made = row(source, key, "contact.upsert", {"id": key} if payload is None else payload, command)
    made.update(overrides)
    return made


def recorded(outcome: Outcome | BaseException) -> Outcome:
    assert not isinstance(outcome, BaseException), f"refused: {outcome!r}"
    return outcome


def command_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(select(commands).order_by(commands.c.id)).mappings()
        return [dict(r) for r in rows]


def event_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(select(events).order_by(events.c.id)).mappings()
        return [dict(r) for r in rows]


def outbox_ids(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return list(
            connection.execute(select(outbox.c.command_id).order_by(outbox.c.command_id)).scalars()
        )


def seq_of(engine: Engine, command_id: int) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                select(commands.c.seq).where(commands.c.id == command_id)
            ).scalar_one()
        )


def run_threads(count: int, target: Any) -> None:
    threads = [threading.Thread(target=target, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_S)
    assert not any(thread.is_alive() for thread in threads), "a recording never answered"


# -- many threads at once -------------------------------------------------------------------


CROWD = [
    (ANN, "main"),
    (BOB, "main"),
    (ZED, "main"),
    (ANN, "viber"),  # the same contact on another channel is another sequence
]


def test_concurrent_threads_record_every_event_once_in_gapless_contact_order(
    ledger: Ledger, engine: Engine
) -> None:
    threads_n, per_thread = 8, 50
    answers: dict[int, list[tuple[NewEvent, Recorded]]] = defaultdict(list)
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def run(thread: int) -> None:
        start.wait(JOIN_S)
        for n in range(per_thread):
            ref, channel = CROWD[(thread + n) % len(CROWD)]
            new = event(f"t{thread}-e{n}", upsert(ref, channel, firstName=f"{thread}/{n}"))
            try:
                [answer] = ledger.record("web", [new])
            except BaseException as error:
                errors.append(error)
                return
            answers[thread].append((new, answer))

    run_threads(threads_n, run)
    assert errors == []
    everything = [answer for thread in answers.values() for _, answer in thread]
    total = threads_n * per_thread
    assert len(everything) == total
    assert not any(answer.duplicate for answer in everything)
    assert all(len(answer.command_ids) == 1 for answer in everything)
    assert len({answer.event_id for answer in everything}) == total
    command_ids = sorted(answer.command_ids[0] for answer in everything)
    assert len(set(command_ids)) == total

    stored_events = event_rows(engine)
    assert sorted(e["key"] for e in stored_events) == sorted(a.key for a in everything)
    rows = command_rows(engine)
    assert [r["id"] for r in rows] == command_ids
    by_id = {r["id"]: r for r in rows}
    for answer in everything:  # each answer names its own event's command
        assert by_id[answer.command_ids[0]]["event_id"] == answer.event_id

    per_contact: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in rows:
        per_contact[(r["channel"], r["contact_key"])].append(r["seq"])
    assert set(per_contact) == {(channel, ref.key) for ref, channel in CROWD}
    for contact, seqs in per_contact.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), f"gap or repeat for {contact}"
    with engine.connect() as connection:
        next_seq = dict(
            ((channel, key), value)
            for channel, key, value in connection.execute(
                select(contacts.c.channel, contacts.c.contact_key, contacts.c.next_seq)
            ).all()
        )
    assert next_seq == {contact: len(seqs) for contact, seqs in per_contact.items()}

    # Each thread's events of one contact are numbered in the order the thread sent them.
    for thread in answers.values():
        mine: dict[tuple[str, str], list[int]] = defaultdict(list)
        for new, answer in thread:
            command = new.commands[0]
            mine[(command.channel, command.contact.key)].append(by_id[answer.command_ids[0]]["seq"])
        for seqs in mine.values():
            assert seqs == sorted(seqs)

    assert outbox_ids(engine) == command_ids  # one outbox row per command, none else
    assert ledger._intake is not None
    groups = ledger._intake.groups
    assert groups.items == total
    assert groups.items > groups.groups  # at least one group held more than one event


def test_concurrent_deliveries_of_the_same_events_record_each_once(
    ledger: Ledger, engine: Engine
) -> None:
    keys = [f"again-{n}" for n in range(40)]
    answers: dict[str, list[Recorded]] = defaultdict(list)
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def run(thread: int) -> None:
        mine = list(keys)
        random.Random(thread).shuffle(mine)
        start.wait(JOIN_S)
        for key in mine:
            try:
                [answer] = ledger.record("web", [event(key)])
            except BaseException as error:
                errors.append(error)
                return
            with lock:
                answers[key].append(answer)

    run_threads(6, run)
    assert errors == []
    for key in keys:
        assert len(answers[key]) == 6
        assert sum(not answer.duplicate for answer in answers[key]) == 1, key
        assert len({(a.event_id, tuple(a.command_ids)) for a in answers[key]}) == 1, key
    rows = command_rows(engine)
    assert len(event_rows(engine)) == len(keys) == len(rows)
    assert sorted(r["seq"] for r in rows) == list(range(1, len(keys) + 1))
    assert outbox_ids(engine) == [r["id"] for r in rows]


# -- one group, driven directly -----------------------------------------------------------


def test_a_group_with_one_key_twice_records_it_once_and_the_second_is_known(
    intake: GroupIntake, engine: Engine
) -> None:
    first, second = intake._write(
        [
            one("twice", payload={"n": 1}),
            one("twice", payload={"n": 2}),
        ]
    )
    event_id, command_ids, duplicate = recorded(first)
    assert not duplicate and len(command_ids) == 1
    assert recorded(second) == (event_id, command_ids, True)
    [stored] = event_rows(engine)
    assert (stored["id"], stored["payload"]) == (event_id, {"n": 1})  # the first is kept
    assert [(r["id"], r["seq"]) for r in command_rows(engine)] == [(command_ids[0], 1)]
    assert outbox_ids(engine) == command_ids


def test_the_same_key_from_two_sources_in_one_group_is_two_events(
    intake: GroupIntake, engine: Engine
) -> None:
    web, crm = (recorded(o) for o in intake._write([one("k"), one("k", source="crm")]))
    assert not web[2] and not crm[2]
    assert web[0] != crm[0]
    assert [seq_of(engine, web[1][0]), seq_of(engine, crm[1][0])] == [1, 2]


def test_a_group_with_a_known_key_and_a_new_one(ledger: Ledger, engine: Engine) -> None:
    tag = make_command("tag", "main", ANN, tags=["vip"])
    # Recorded before by the transaction path: two commands, both on Ann (seq 1 and 2).
    [old] = ledger.record(
        "web", [NewEvent("old", "contact.upsert", {"id": "old"}, [upsert(), tag])]
    )
    assert ledger._intake is not None
    for order in (["old", "new-1"], ["new-2", "old"]):
        outcomes = dict(zip(order, ledger._intake._write([one(key) for key in order]), strict=True))
        assert recorded(outcomes["old"]) == (old.event_id, old.command_ids, True)
        new_key = order[1] if order[0] == "old" else order[0]
        event_id, command_ids, duplicate = recorded(outcomes[new_key])
        assert not duplicate and event_id != old.event_id and len(command_ids) == 1
    rows = command_rows(engine)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]  # the known key took no number
    assert outbox_ids(engine) == [r["id"] for r in rows]
    assert len(event_rows(engine)) == 3


def test_a_contacts_events_in_one_group_are_numbered_in_arrival_order(
    ledger: Ledger, engine: Engine
) -> None:
    ledger.record("web", [event("before")])  # Ann's seq 1
    assert ledger._intake is not None
    # Arrival order differs from key order and from the contacts' own (channel, key) order.
    given = [
        ("k-z", ZED, "main"),
        ("k-y", ANN, "main"),
        ("k-x", BOB, "main"),
        ("k-a", ANN, "main"),
        ("k-m", ZED, "main"),
        ("k-c", ANN, "viber"),
        ("k-b", ANN, "main"),
        ("k-0", ZED, "main"),
    ]
    outcomes = ledger._intake._write([one(key, ref, channel=ch) for key, ref, ch in given])
    seqs = {
        key: seq_of(engine, recorded(outcome)[1][0])
        for (key, _, _), outcome in zip(given, outcomes, strict=True)
    }
    assert seqs == {
        "k-z": 1,
        "k-y": 2,
        "k-x": 1,
        "k-a": 3,
        "k-m": 2,
        "k-c": 1,
        "k-b": 4,
        "k-0": 3,
    }
    assert ledger.record("web", [event("after")])[0].command_ids  # the next takes 5
    assert [r["seq"] for r in command_rows(engine) if r["contact_key"] == ANN.key][-1] == 5


UNSTORABLE = {
    "key longer than 300": {"key": "k" * 301},
    "NUL in the key": {"key": "bad\x00key"},
    "NUL in the match value": {"match_value": "ann\x00@example.com"},
    "lone surrogate in the key": {"key": "bad\ud800key"},
    "channel longer than 100": {"channel": "c" * 101},
    "NaN in the command": {"command_payload": json.dumps({"fields": {"score": float("nan")}})},
}


@pytest.mark.parametrize("bad", list(UNSTORABLE.values()), ids=list(UNSTORABLE))
def test_a_value_the_database_refuses_fails_only_its_own_event(
    intake: GroupIntake, engine: Engine, bad: dict[str, Any]
) -> None:
    good_1, refused, good_2 = intake._write([one("good-1"), one("bad", **bad), one("good-2")])
    assert isinstance(refused, UnstorableValue)
    assert not recorded(good_1)[2] and not recorded(good_2)[2]
    rows = command_rows(engine)
    assert [r["event_id"] for r in rows] == [recorded(good_1)[0], recorded(good_2)[0]]
    assert [r["seq"] for r in rows] == [1, 2]  # the refused one took no number
    assert outbox_ids(engine) == [r["id"] for r in rows]
    assert sorted(e["key"] for e in event_rows(engine)) == ["good-1", "good-2"]


def test_a_refused_value_is_unstorable_on_both_recording_paths(ledger: Ledger) -> None:
    long_key = "k" * 301
    with pytest.raises(UnstorableValue, match="too long"):
        ledger.record("web", [event(long_key)])  # the intake
    with pytest.raises(UnstorableValue, match="too long"):
        ledger.record("web", [event("fine"), event(long_key)])  # the transaction path
    assert ledger.record("web", [event("fine")])[0].duplicate is False  # nothing was kept


def test_a_nul_inside_a_payload_is_stored_as_the_transaction_path_stores_it(
    ledger: Ledger, engine: Engine
) -> None:
    """PostgreSQL text cannot hold a NUL, but a JSON document can (as ``\\u0000``): a NUL in
    a payload is no reason to refuse an event, on either path."""
    payload = {"note": "a\x00b", "deep": [{"x": "\x00"}]}
    command = upsert(ANN, note="x\x00y")
    pair = [event("pair-1", command, payload), event("pair-2", command, payload)]
    assert [answer.duplicate for answer in ledger.record("web", pair)] == [False, False]
    [alone] = ledger.record("web", [event("alone", command, payload)])  # the intake
    assert not alone.duplicate
    stored = ledger.command(alone.command_ids[0])
    assert stored is not None and stored["payload"] == command.payload()
    assert stored["payload"]["fields"]["note"] == "x\x00y"
    kept = {e["key"]: e["payload"] for e in event_rows(engine)}
    assert kept == {"pair-1": payload, "pair-2": payload, "alone": payload}


def test_an_unreachable_database_is_unavailable_for_every_event_of_the_group() -> None:
    engine = connect("postgresql://postgres@127.0.0.1:1/none")
    try:
        outcomes = GroupIntake(engine)._write([one("a"), one("b")])
    finally:
        engine.dispose()
    assert len(outcomes) == 2
    assert all(isinstance(outcome, LedgerUnavailable) for outcome in outcomes)


# -- connections the database cut --------------------------------------------------------


def backends_of(postgres_url: str) -> int:
    """Cut every session of the test database but the admin's own; how many were cut."""
    database = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        cut = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchone()
    assert cut is not None
    return int(cut[0])


def test_a_connection_cut_by_the_database_is_replaced_without_an_error(
    ledger: Ledger, engine: Engine, postgres_url: str
) -> None:
    [before] = ledger.record("web", [event("before-cut")])
    assert backends_of(postgres_url) >= 1  # the intake's own connection among them

    answers: list[Recorded] = []
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            answers.extend(ledger.record("web", [event(f"after-cut-{n}")]))
        except BaseException as error:
            errors.append(error)

    run_threads(4, run)
    assert errors == []
    assert sorted(a.key for a in answers) == [f"after-cut-{n}" for n in range(4)]
    assert not any(a.duplicate for a in answers)
    assert all(a.command_ids[0] > before.command_ids[0] for a in answers)
    rows = command_rows(engine)
    assert sorted(r["seq"] for r in rows) == [1, 2, 3, 4, 5]
    assert outbox_ids(engine) == [r["id"] for r in rows]
    [again] = ledger.record("web", [event("after-cut-0")])
    assert again.duplicate


def test_the_intake_s_own_session_ended_by_the_server_costs_no_refusal(
    ledger: Ledger, engine: Engine
) -> None:
    for n in range(5):
        ledger.record("web", [event(f"warm-{n}")])
        intake = ledger._intake
        assert intake is not None and intake._held is not None
        pid = intake._held.cursor.connection.info.backend_pid
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            deadline = time.monotonic() + JOIN_S
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                assert time.monotonic() < deadline, "the backend did not end"
                time.sleep(0.01)
        [after] = ledger.record("web", [event(f"after-{n}")])
        assert not after.duplicate
    assert len(command_rows(engine)) == 10


@pytest.mark.parametrize(
    ("error", "cut"),
    [
        (psycopg.errors.AdminShutdown("terminating connection"), True),
        (psycopg.errors.CrashShutdown("crash"), True),
        (psycopg.errors.CannotConnectNow("starting up"), True),
        (psycopg.errors.ConnectionFailure("lost"), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.errors.QueryCanceled("statement timeout"), False),
        (psycopg.errors.DeadlockDetected("deadlock"), False),
        (psycopg.errors.StringDataRightTruncation("too long"), False),
        (psycopg.errors.UniqueViolation("duplicate"), False),
    ],
)
def test_which_errors_mean_the_session_is_gone(error: psycopg.Error, cut: bool) -> None:
    assert connection_cut(error) is cut


def test_the_intake_keeps_one_connection_outside_the_pool_until_the_engine_is_disposed(
    postgres_url: str,
) -> None:
    engine = connect(postgres_url)
    intake = GroupIntake(engine, clock=Clock())
    intake.record(one("first"))
    connection = intake._held.cursor.connection if intake._held else None
    assert connection is not None and not connection.closed
    for n in range(20):
        intake.record(one(f"more-{n}"))
    assert intake._held is not None and intake._held.cursor.connection is connection
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    engine.dispose()
    assert connection.closed
    intake.record(one("after-dispose"))  # opens another
    assert intake._held is not None and intake._held.cursor.connection is not connection
    intake.close()
    engine.dispose()


def test_a_connection_inherited_across_a_fork_is_left_to_the_parent(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = connect(postgres_url)
    intake = GroupIntake(engine, clock=Clock())
    inherited: list[object] = []
    monkeypatch.setattr("worker.ledger.intake._inherited", inherited)
    try:
        intake.record(one("parent"))
        assert intake._held is not None
        parents = intake._held.cursor.connection
        monkeypatch.setattr("worker.ledger.intake.os.getpid", lambda: -1)  # as in a child
        intake.record(one("child"))
        childs = intake._held.cursor.connection
        assert childs is not parents
        assert not parents.closed  # the child did not end the parent's session
        assert [held.cursor.connection for held in inherited] == [parents]  # type: ignore[attr-defined]
        intake.close()  # in the child: closes the child's own
        assert childs.closed and not parents.closed
    finally:
        monkeypatch.undo()
        for held in inherited:
            held.cursor.connection.close()  # type: ignore[attr-defined]
        intake.close()
        engine.dispose()


def test_a_database_down_at_the_retry_is_unavailable(
    ledger: Ledger, engine: Engine, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.record("web", [event("warm")])
    assert backends_of(postgres_url) >= 1
    monkeypatch.setattr(
        engine, "raw_connection", lambda: (_ for _ in ()).throw(psycopg.OperationalError("down"))
    )
    with pytest.raises(LedgerUnavailable):
        ledger.record("web", [event("while-down")])
    monkeypatch.undo()
    [after] = ledger.record("web", [event("while-down")])
    assert not after.duplicate  # nothing was kept from the refused attempt


def test_a_connection_whose_statements_could_not_be_prepared_is_not_used_again(
    postgres_url: str,
) -> None:
    """The statements are prepared on a connection before its first group. When that fails
    for a reason other than a cut (here: the ledger's tables are not there yet), the group
    is refused and the connection dropped: the next group prepares them on another, rather
    than running statements that were never prepared."""
    name = f"{postgres_url.rsplit('/', 1)[1]}_unprepared"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    engine = connect(f"{postgres_url.rsplit('/', 1)[0]}/{name}")
    try:
        intake = GroupIntake(engine, clock=Clock())
        [refused] = intake._write_group([one("before-migrate")])
        assert isinstance(refused, psycopg.errors.UndefinedTable), refused
        migrate(engine)
        [kept] = intake._write_group([one("after-migrate")])
        assert recorded(kept)[2] is False
        assert [e["key"] for e in event_rows(engine)] == ["after-migrate"]
    finally:
        engine.dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


# -- what is stored ----------------------------------------------------------------------


PAYLOAD: dict[str, Any] = {
    "name": "Zoë Ærøskøbing 中文 😀",
    "quotes": 'it\'s "quoted" \\ back\\slash',
    "controls": "tab\tnew\nline\r\x01\x1f\u2028",
    "numbers": [0, -1, 2**70, 0.1, 1e-7, -2.5e300, 1.0],
    "flags": [True, False, None],
    "empty": {"list": [], "object": {}, "string": ""},
    "nested": {"z": {"y": [{"x": ["deep", {"w": "ŵ"}]}]}, "a": 1},
}


def test_payloads_round_trip_exactly_and_as_the_transaction_path_stores_them(
    ledger: Ledger, engine: Engine
) -> None:
    ref = ContactRef(match_field="email", match_value="zoë+😀@example.com")
    command = make_command(
        "upsert",
        "main",
        ref,
        fields={"firstName": "Zoë 😀", "lastName": 'O\'Brien "Q"', "score": 2.5, "vip": True},
        tags=["clé", "😀"],
    )
    key = "ключ/😀 'x' \"y\""
    [via_intake] = ledger.record("web", [NewEvent(key, "contact.upsert", PAYLOAD, [command])])
    transaction_key = "transaction path"
    [via_transaction] = ledger._record_batch(  # the same event, the other way
        "web", [NewEvent(transaction_key, "contact.upsert", PAYLOAD, [command])]
    )
    assert not via_intake.duplicate and not via_transaction.duplicate

    stored_events = {e["key"]: e for e in event_rows(engine)}
    assert set(stored_events) == {key, transaction_key}
    intake_event = stored_events[key]
    assert intake_event["payload"] == PAYLOAD
    assert json.dumps(intake_event["payload"]) == json.dumps(PAYLOAD)  # order and types too
    assert (intake_event["source"], intake_event["type"]) == ("web", "contact.upsert")
    assert intake_event["received_at"] == NOW

    rows = {r["event_id"]: r for r in command_rows(engine)}
    intake_command = rows[via_intake.event_id]
    assert intake_command["payload"] == command.payload()
    assert json.dumps(intake_command["payload"]) == json.dumps(command.payload())
    assert intake_command["contact_key"] == ref.key
    assert (intake_command["match_field"], intake_command["match_value"]) == (
        "email",
        "zoë+😀@example.com",
    )

    # Every column the same as the transaction path writes, but for ids, key and number.
    def comparable(record: dict[str, Any], *skip: str) -> dict[str, Any]:
        return {name: value for name, value in record.items() if name not in skip}

    transaction_event = stored_events[transaction_key]
    assert comparable(intake_event, "id", "key") == comparable(transaction_event, "id", "key")
    transaction_command = rows[via_transaction.event_id]
    assert (intake_command["seq"], transaction_command["seq"]) == (1, 2)
    assert comparable(intake_command, "id", "event_id", "seq") == comparable(
        transaction_command, "id", "event_id", "seq"
    )
    assert intake_command["state"] == "pending" and intake_command["attempts"] == 0
    assert intake_command["published_at"] == intake_command["created_at"] == NOW


def test_each_group_write_is_observed_with_its_size(engine: Engine) -> None:
    """The ledger hands each group's size to the metrics' histogram
    (``contactsync_ledger_record_group_size``); a fallback to one by one is not a group."""
    from worker import metrics

    histogram = metrics.series().record_groups

    def observed() -> tuple[float, float]:
        samples = {s.name: s.value for m in histogram.collect() for s in m.samples}
        name = "contactsync_ledger_record_group_size"
        return samples[f"{name}_count"], samples[f"{name}_sum"]

    sizes: list[int] = []
    watched = GroupIntake(engine, clock=Clock(), on_group=sizes.append)
    watched.groups.submit(one("alone"))
    watched._write_group([one("g-1"), one("g-2", **UNSTORABLE["NUL in the key"]), one("g-3")])
    assert sizes == [1, 3]

    count, total = observed()
    Ledger(engine, clock=Clock()).record("web", [event("counted")])
    assert observed() == (count + 1, total + 1)
