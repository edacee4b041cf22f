"""Recording on PostgreSQL the common delivery, one event with one command, in groups.

Every generic event and every vendor record is one event with one command. The requests
that a process answers at the same moment are recorded together (:class:`GroupCommit`):
one statement (:data:`RECORD`) for the group, with its rows as one JSON parameter, run in
autocommit, so one round trip and one commit for the group; through libpq itself (psycopg's
``pgconn``), on a connection the process keeps for it, the statement prepared once per
connection. What that saves, per event, is measured in docs/benchmarks.md ("Ingest").

The statement takes the contacts' rows in (channel, contact key) order, so that two
processes' groups never wait on each other in a cycle; a contact's events are numbered in
their arrival order. When the database refuses the statement, each event of the group is
recorded alone, so that only the event at fault is refused. A connection found cut (the
database restarted) is dropped and the group tried again on another: recording is
idempotent by event key.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import psycopg
from psycopg import pq
from psycopg.errors import error_from_result
from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError

from worker.commands import Command
from worker.ledger.errors import LedgerUnavailable, UnstorableValue, first_line
from worker.ledger.group import GroupCommit
from worker.ledger.schema import CommandState

RECORD = """
    WITH input AS (
        SELECT * FROM json_to_recordset(%(rows)s::json) AS t(
            ord int, source text, "key" text, "type" text, event_payload text, channel text,
            contact_key text, kind text, contact_id text, match_field text, match_value text,
            command_payload text
        )
    ), new_event AS (
        INSERT INTO events (source, "key", "type", received_at, payload)
        SELECT source, "key", "type", %(now)s, event_payload::json FROM input ORDER BY ord
        ON CONFLICT (source, "key") DO NOTHING
        RETURNING id, source, "key"
    ), fresh AS (
        SELECT input.*, new_event.id AS event_id
        FROM input JOIN new_event USING (source, "key")
    ), seq AS (
        INSERT INTO contacts (channel, contact_key, next_seq)
        SELECT channel, contact_key, count(*) FROM fresh
        GROUP BY channel, contact_key ORDER BY channel, contact_key
        ON CONFLICT (channel, contact_key)
        DO UPDATE SET next_seq = contacts.next_seq + excluded.next_seq
        RETURNING channel, contact_key, next_seq
    ), numbered AS (
        SELECT fresh.*,
            seq.next_seq - count(*) OVER same + row_number() OVER (same ORDER BY fresh.ord) AS seq
        FROM fresh JOIN seq USING (channel, contact_key)
        WINDOW same AS (PARTITION BY fresh.channel, fresh.contact_key)
    ), command AS (
        INSERT INTO commands (
            event_id, channel, kind, contact_key, seq, contact_id, match_field, match_value,
            payload, state, attempts, published_at, created_at, updated_at
        )
        SELECT event_id, channel, kind, contact_key, seq, contact_id, match_field, match_value,
            command_payload::json, %(state)s, 0, %(now)s, %(now)s, %(now)s
        FROM numbered ORDER BY ord
        RETURNING event_id, id, kind, channel
    ), queued AS (
        INSERT INTO outbox (command_id, kind, channel) SELECT id, kind, channel FROM command
    )
    SELECT numbered.ord, command.event_id, command.id
    FROM command JOIN numbered USING (event_id)
"""
"""Events with one command each, as one statement (what the ledger's transaction path does
in four per event), from a JSON array of rows: the events; their contacts' sequence
numbers, one upsert per contact (in (channel, contact key) order, so that concurrent
groups lock contact rows in the same order), numbered in arrival order within the group;
the commands and their outbox rows. An event whose key is known gets no row back.

The payloads travel as JSON strings inside the rows' JSON, cast back to ``json`` on insert:
PostgreSQL refuses a ``\\u0000`` anywhere in a document it takes apart, while the ``json``
type keeps it (a NUL in a field of the payload is stored, as on the transaction path)."""

RECORD_ONE = """
    WITH new_event AS (
        INSERT INTO events (source, "key", "type", received_at, payload)
        VALUES (%(source)s, %(key)s, %(type)s, %(now)s, %(event_payload)s::json)
        ON CONFLICT (source, "key") DO NOTHING
        RETURNING id
    ), seq AS (
        INSERT INTO contacts (channel, contact_key, next_seq)
        SELECT %(channel)s, %(contact_key)s, 1 FROM new_event
        ON CONFLICT (channel, contact_key) DO UPDATE SET next_seq = contacts.next_seq + 1
        RETURNING next_seq
    ), command AS (
        INSERT INTO commands (
            event_id, channel, kind, contact_key, seq, contact_id, match_field, match_value,
            payload, state, attempts, published_at, created_at, updated_at
        )
        SELECT new_event.id, %(channel)s, %(kind)s, %(contact_key)s, seq.next_seq,
            %(contact_id)s, %(match_field)s, %(match_value)s, %(command_payload)s::json,
            %(state)s, 0, %(now)s, %(now)s, %(now)s
        FROM new_event, seq
        RETURNING event_id, id
    ), queued AS (
        INSERT INTO outbox (command_id, kind, channel) SELECT id, %(kind)s, %(channel)s FROM command
    )
    SELECT 0, event_id, id FROM command
"""
"""A group of one: what :data:`RECORD` does, for one event, with its values as parameters.
A request alone (most of them when the receiver is not saturated) is the common group, and
for it this costs PostgreSQL about a third less CPU than taking one row apart from JSON
(``ops/bench/recording.py``)."""

TEXT, FLOAT8 = 25, 701
"""The parameters' type OIDs, given when the statements are prepared: PostgreSQL cannot
infer a type for a parameter in a select list (``now`` in the commands' ``SELECT``)."""


class Prepared(NamedTuple):
    """A statement as libpq prepares it: ``$n`` placeholders, its parameters' names in
    that order, and their types."""

    name: bytes
    sql: bytes
    params: tuple[str, ...]
    types: tuple[int, ...]

    @classmethod
    def of(cls, name: str, query: str, floats: frozenset[str] = frozenset({"now"})) -> Prepared:
        """``query``'s ``%(name)s`` placeholders numbered in order of first use."""
        params = tuple(dict.fromkeys(re.findall(r"%\((\w+)\)s", query)))
        for number, param in enumerate(params, 1):
            query = query.replace(f"%({param})s", f"${number}")
        types = tuple(FLOAT8 if param in floats else TEXT for param in params)
        return cls(name.encode(), query.encode(), params, types)


PREPARED_ONE = Prepared.of("contactsync_record_one", RECORD_ONE)
PREPARED_GROUP = Prepared.of("contactsync_record", RECORD)

KNOWN = """
    SELECT events.id, commands.id FROM events
    LEFT JOIN commands ON commands.event_id = events.id
    WHERE events.source = %(source)s AND events."key" = %(key)s
    ORDER BY commands.id
"""
"""What the ledger holds for a known event key: its id and its commands' ids."""

Outcome = tuple[int, list[int], bool]
"""What was kept for one event: its id, its commands' ids, whether its key was known."""


class GroupIntake:
    """Records one-command events for the threads of one process, in groups.

    Each item is a row of :data:`RECORD` (:func:`row` builds it); its outcome an
    :data:`Outcome`, or :class:`LedgerUnavailable`, :class:`UnstorableValue` or the
    driver's own error for anything else the database refuses.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.time,
        max_group: int = 64,
        on_group: Callable[[int], None] | None = None,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._on_group = on_group
        """Told each group's size (the metrics' histogram)."""
        self.groups: GroupCommit[dict[str, Any], Outcome] = GroupCommit(
            self._write_group, max_group=max_group
        )
        """The group-commit coordinator (its counters tell the mean group size)."""
        self._held: _Held | None = None
        event.listen(engine, "engine_disposed", lambda _engine: self.close())

    def record(self, row: dict[str, Any]) -> Outcome:
        """Record one event (with whatever else is being recorded at this moment)."""
        return self.groups.submit(row)

    def _write_group(self, rows: Sequence[dict[str, Any]]) -> list[Outcome | BaseException]:
        if self._on_group is not None:
            self._on_group(len(rows))
        return self._write(rows)

    def _write(self, rows: Sequence[dict[str, Any]]) -> list[Outcome | BaseException]:
        try:
            return list(self._with_connection(rows))
        except _Refused as refused:
            if len(rows) > 1:  # one row at fault: each event alone, so that only it is refused
                return [self._write([row])[0] for row in rows]
            return [_as_ledger_error(refused.error)]
        except LedgerUnavailable as error:
            return [LedgerUnavailable(str(error)) for _ in rows]

    def _with_connection(self, rows: Sequence[dict[str, Any]]) -> list[Outcome]:
        """Run the group on the intake's own connection, in autocommit: the one statement is
        its own transaction. A connection found cut (the database restarted since it was
        last used) is closed and the group tried again on the next one the pool gives, up
        to as many as the pool holds idle (they were cut too, most likely), then on a new
        one."""
        attempts = 1
        for attempt in itertools.count(1):
            held = self._held
            cursor = self._cursor()
            unprepared = self._held is not held  # a new connection: its statements first
            try:
                if unprepared:
                    _prepare(cursor.connection)
                    unprepared = False
                return _run(cursor, rows, self._clock())
            except psycopg.Error as error:
                connection = cursor.connection
                if not (connection.closed or connection.broken or connection_cut(error)):
                    if unprepared:  # not to be used without them: the next group opens another
                        self.close()
                    raise _Refused(error) from error
                self.close()
                if attempt == 1:
                    attempts = _idle_connections(self._engine) + 2
                if attempt >= attempts:
                    raise LedgerUnavailable(first_line(error)) from error
        raise AssertionError("unreachable")

    def _cursor(self) -> psycopg.Cursor[Any]:
        """The cursor of this process's intake connection, opened on first use.

        One connection is enough: only the group's leader writes, one group at a time. It is
        taken from the ledger's pool and detached from it (the same settings, and no
        checkout and return per group), and closed when the engine is disposed. A
        connection inherited across a fork is left alone (closing it would end the parent's
        session) and a new one opened."""
        held = self._held
        if held is not None:
            if held.pid == os.getpid():
                return held.cursor
            _inherited.append(held)
            self._held = None
        try:
            fairy = self._engine.raw_connection()
        except (DBAPIError, psycopg.Error) as error:  # cannot connect
            raise LedgerUnavailable(first_line(error)) from error
        connection: psycopg.Connection[Any] = fairy.driver_connection  # type: ignore[assignment]
        fairy.detach()  # ours now: the pool forgets it and will not close it
        connection.autocommit = True
        self._held = _Held(os.getpid(), connection.cursor())
        return self._held.cursor

    def close(self) -> None:
        """Close this process's intake connection (the next record opens another); one
        inherited across a fork is only forgotten."""
        held, self._held = self._held, None
        if held is not None and held.pid == os.getpid():
            held.cursor.connection.close()


_CUT_STATES = ("08", "57P01", "57P02", "57P03")
"""SQLSTATEs of a session the server ended or cannot serve: connection exceptions, and
operator intervention (an administrator's or a crash's shutdown, a server starting)."""


def connection_cut(error: psycopg.Error) -> bool:
    """Whether ``error`` says the connection is gone, even before the driver has marked it
    broken: the server's own "terminating connection" message arrives ahead of the end of
    the stream, and an error the driver raised itself about the connection has no
    SQLSTATE. A query cancelled or a deadlock (also operational errors) leave the session
    usable and are not cuts."""
    if not isinstance(error, psycopg.OperationalError):
        return False
    state = error.sqlstate
    return state is None or state.startswith(_CUT_STATES)


def _idle_connections(engine: Engine) -> int:
    checkedin = getattr(engine.pool, "checkedin", None)
    return int(checkedin()) if callable(checkedin) else 1


class _Held(NamedTuple):
    pid: int
    cursor: psycopg.Cursor[Any]


_inherited: list[_Held] = []
"""Intake connections a forked process inherited: kept, never used nor closed."""


class _Refused(Exception):
    """The database refused a statement of a live connection."""

    def __init__(self, error: psycopg.Error) -> None:
        super().__init__(str(error))
        self.error = error


def _as_ledger_error(error: psycopg.Error) -> BaseException:
    if isinstance(error, psycopg.DataError):
        return UnstorableValue(first_line(error))
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return LedgerUnavailable(first_line(error))  # a deadlock, a cancelled statement
    return error


def _run(cursor: psycopg.Cursor[Any], rows: Sequence[dict[str, Any]], now: float) -> list[Outcome]:
    """The group's statement; then what is kept for the keys that were known (or sent
    twice in the group: the first is recorded, the others find it)."""
    first: dict[tuple[str, str], int] = {}
    for index, row in enumerate(rows):
        first.setdefault((row["source"], row["key"]), index)
    state = CommandState.PENDING.value
    if len(first) == 1:
        written = _execute(cursor.connection, PREPARED_ONE, {**rows[0], "now": now, "state": state})
    else:
        sent = [dict(rows[index], ord=index) for index in first.values()]
        values = {"rows": json.dumps(sent), "now": now, "state": state}
        written = _execute(cursor.connection, PREPARED_GROUP, values)
    outcomes: list[Outcome | None] = [None] * len(rows)
    for index, event_id, command_id in written:
        outcomes[index] = (event_id, [command_id], False)
    for index, row in enumerate(rows):
        if outcomes[index] is None:
            known = cursor.execute(
                KNOWN, {"source": row["source"], "key": row["key"]}, prepare=True
            ).fetchall()
            ids = [int(r[1]) for r in known if r[1] is not None]
            outcomes[index] = (int(known[0][0]), ids, True)
    return [outcome for outcome in outcomes if outcome is not None]


def _execute(
    connection: psycopg.Connection[Any], statement: Prepared, values: dict[str, Any]
) -> list[tuple[int, int, int]]:
    """Run a prepared statement through libpq, its parameters sent as text: its rows of
    three integers. psycopg's cursor does the same with more steps in Python (adapting each
    value, its prepared-statement cache, the result's loaders): through libpq the client
    spends about a fifth less CPU per group (ops/bench/recording.py). libpq releases the GIL
    while it waits, as the cursor does; a failure is raised as psycopg raises it, and a NUL
    in a value (which libpq would take for the end of the text) or a value the connection's
    encoding cannot write as a :class:`psycopg.DataError`, as psycopg's dumper does."""
    encoding = connection.info.encoding
    params: list[bytes | None] = []
    for name in statement.params:
        value = values[name]
        if value is None:
            params.append(None)
            continue
        text = str(value)
        if "\x00" in text:  # libpq would cut the text at the NUL
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        try:
            params.append(text.encode(encoding))
        except UnicodeEncodeError as error:  # a lone surrogate, or outside the database's
            raise psycopg.DataError(f"{name}: {error.reason}") from None
    result = connection.pgconn.exec_prepared(statement.name, cast(Any, params))  # None: NULL
    _check(connection, result, pq.ExecStatus.TUPLES_OK)
    field = result.get_value
    return [
        (int(field(n, 0) or b""), int(field(n, 1) or b""), int(field(n, 2) or b""))
        for n in range(result.ntuples)
    ]


def _prepare(connection: psycopg.Connection[Any]) -> None:
    """Prepare the intake's statements on a connection it has just opened."""
    for statement in (PREPARED_ONE, PREPARED_GROUP):
        result = connection.pgconn.prepare(statement.name, statement.sql, statement.types)
        _check(connection, result, pq.ExecStatus.COMMAND_OK)


def _check(connection: psycopg.Connection[Any], result: pq.abc.PGresult, status: int) -> None:
    """Raise what psycopg would for a result that is not ``status``: the server's error, or
    an :class:`psycopg.OperationalError` when the connection itself was lost."""
    if result.status == status:
        return
    if connection.pgconn.status == pq.ConnStatus.BAD:
        message = (result.error_message or connection.pgconn.error_message).decode(errors="replace")
        raise psycopg.OperationalError(message.strip() or "the connection was lost")
    raise error_from_result(result, encoding=connection.info.encoding)


def row(source: str, key: str, type_: str, event_payload: Any, command: Command) -> dict[str, Any]:
    """One event with its one command, as a row of :data:`RECORD`: the payloads as JSON
    text, made here in the caller's thread (a payload that cannot be written as JSON fails
    its own caller, not the group)."""
    contact = command.contact
    return {
        "source": source,
        "key": key,
        "type": type_,
        "event_payload": json.dumps(event_payload),
        "channel": command.channel,
        "contact_key": contact.key,
        "kind": command.kind,
        "contact_id": contact.contact_id,
        "match_field": contact.match_field,
        "match_value": contact.match_value,
        "command_payload": json.dumps(command.payload()),
    }
