"""What recording one event costs, on each path, without HTTP: the client's CPU (this
process) and PostgreSQL's (the backend serving it) per event, one thread, one connection.

    .venv/bin/python -m ops.bench.recording [--events 3000] [--json out.json]

Rows:

- ``select 1``: a prepared ``SELECT`` and its answer, the floor of one round trip;
- ``insert, autocommit``: one prepared single-row ``INSERT`` into ``events``, committed;
- ``transaction path``: ``Ledger``'s SQLAlchemy path (BEGIN, four statements, COMMIT), what
  batches and SQLite take;
- ``groups of 1 through psycopg's cursor``: the group intake's statement for one event run
  with ``cursor.execute(..., prepare=True)``, as the intake ran it before it went through
  libpq (the row below it is the same statement through libpq);
- ``group intake, groups of N``: the group intake's one statement for N events
  (worker/ledger/intake.py), as the web process writes when N requests record at once.

The group intake is driven with fixed group sizes here; under load its groups are what
concurrency makes them (``contactsync_ledger_record_group_size``, and the ingest benchmark's
*events/commit*). Needs PostgreSQL on 127.0.0.1:5432 (``CONTACTSYNC_BENCH_PG``).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg

from ops.bench.common import PG_ADMIN, Database, cpu_s, throwaway_postgres
from worker.commands import ContactRef, make_command
from worker.ledger import Ledger, connect, migrate
from worker.ledger.intake import RECORD_ONE, GroupIntake, row
from worker.ledger.store import NewEvent

CONTACTS = 5000


@dataclass
class Row:
    path: str
    events: int
    events_s: float
    client_ms: float
    """This process's CPU per event."""
    db_ms: float
    """The PostgreSQL backend's CPU per event."""


def new_event(number: int, run: str) -> NewEvent:
    email = f"u{number % CONTACTS}@example.com"
    command = make_command(
        "upsert",
        "main",
        ContactRef(match_field="email", match_value=email),
        fields={"firstName": f"User {number}", "email": email},
        tags=["lead"],
    )
    payload = {"id": f"{run}-{number}", "data": {"email": email, "tags": ["lead"]}}
    return NewEvent(f"{run}-{number}", "contact.upsert", payload, [command])


def as_row(new: NewEvent) -> dict[str, object]:
    return row("bench", new.key, new.type, new.payload, new.commands[0])


def measure(path: str, work: Callable[[int], int], count: int, database: Database) -> Row:
    work(50)  # warm: connections made, statements prepared
    pids = database.backends()
    cpu, wall, db = time.process_time(), time.perf_counter(), cpu_s(pids)
    done = work(count)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    db = cpu_s(pids) - db
    return Row(
        path, done, round(done / wall), round(1000 * cpu / done, 3), round(1000 * db / done, 3)
    )


def run(count: int) -> list[Row]:
    results: list[Row] = []
    with (
        throwaway_postgres("contactsync_recording") as url,
        closing(Database(PG_ADMIN, url)) as database,
    ):
        engine = connect(url, pool_size=2)
        migrate(engine)
        ledger = Ledger(engine)
        intake = GroupIntake(engine)
        numbers = iter(range(10**9))
        run_id = uuid.uuid4().hex[:8]
        plain = psycopg.connect(
            url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
        )

        def select_one(n: int) -> int:
            for _ in range(n):
                plain.execute("SELECT %s::text", (run_id,), prepare=True).fetchone()
            return n

        def insert(n: int) -> int:
            for _ in range(n):
                key = f"plain-{run_id}-{next(numbers)}"
                plain.execute(
                    "INSERT INTO events (source, key, type, received_at, payload) "
                    "VALUES ('plain', %s, 't', 0, '{}') RETURNING id",
                    (key,),
                    prepare=True,
                ).fetchone()
            return n

        def transaction(n: int) -> int:
            for _ in range(n):
                ledger._record_batch("bench", [new_event(next(numbers), run_id)])
            return n

        def groups_of(size: int) -> Callable[[int], int]:
            def work(n: int) -> int:
                for _ in range(n // size):
                    rows = [as_row(new_event(next(numbers), run_id)) for _ in range(size)]
                    outcomes = intake._write_group(rows)
                    if any(isinstance(outcome, BaseException) for outcome in outcomes):
                        raise RuntimeError(f"the intake refused: {outcomes}")
                return n // size * size

            return work

        def through_cursor(n: int) -> int:
            """The group-of-one statement through psycopg's cursor, as the intake ran it
            before it went through libpq."""
            for _ in range(n):
                values = {**as_row(new_event(next(numbers), run_id)), "now": time.time()}
                values["state"] = "pending"
                plain.execute(RECORD_ONE, values, prepare=True).fetchall()
            return n

        try:
            results.append(measure("select 1", select_one, count, database))
            results.append(measure("insert, autocommit", insert, count, database))
            results.append(measure("transaction path", transaction, count, database))
            results.append(
                measure("groups of 1 through psycopg's cursor", through_cursor, count, database)
            )
            for size in (1, 2, 4, 8, 16):
                work = groups_of(size)
                results.append(measure(f"group intake, groups of {size}", work, count, database))
        finally:
            plain.close()
            engine.dispose()
    return results


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| path | events/s | client CPU ms/event | PostgreSQL CPU ms/event |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {r.path} | {r.events_s} | {r.client_ms:.3f} | {r.db_ms:.3f} |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.recording", description=__doc__)
    parser.add_argument("--events", type=int, default=3000, help="events per row (3000)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = run(args.events)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
