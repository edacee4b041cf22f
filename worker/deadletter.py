"""Dead letters: the ledger's ``commands`` rows in state ``dead``, and what an operator
does with them: list, count, show, replay, purge. The CLI (``contactsync dlq``) and the
admin API are thin shells around this module; it must not know about either.

SQLAlchemy Core over the ledger's engine, the same on SQLite and PostgreSQL. Every write
is conditional on ``state = 'dead'``, so a command that is not (or no longer) a dead
letter is never touched. Bulk work reads ids a batch at a time (keyset pagination) and
changes each batch in its own transaction: 100k dead letters are never loaded at once.

A replay puts the command back as accepted: ``pending``, attempts 0, no ``not_before``,
``reason`` or ``finished_at``. ``last_status`` and ``last_error`` stay: as for a command
that succeeds after retries, they are the last failure seen, and the next one overwrites
them. It then goes through the same claim, per-contact order and rate limiter as any other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, and_, delete, func, select, update

from worker.contacts_api.limits import chunks
from worker.ledger.schema import CommandState, commands, events, outbox
from worker.ledger.store import Due
from worker.runtime import Runtime
from worker.submit import publish

BATCH_SIZE = 500
_JOINED = commands.join(events, events.c.id == commands.c.event_id)


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters: every given criterion must hold; none given means all."""

    channel: str | None = None
    reason: str | None = None
    source: str | None = None
    since: float | None = None
    """Epoch seconds: dead letters that died at or after this time."""
    ids: Sequence[int] | None = None

    def is_empty(self) -> bool:
        """Whether no criterion is given (the filter selects every dead letter)."""
        return all(value is None for value in asdict(self).values())


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter with its command, contact, source event and last failure."""

    id: int
    event_id: int
    source: str
    event_key: str
    event_type: str
    channel: str
    kind: str
    seq: int
    contact_key: str
    contact_id: str | None
    match_field: str | None
    match_value: str | None
    payload: dict[str, Any]
    reason: str | None
    last_status: int | None
    last_error: str | None
    attempts: int
    created_at: float
    updated_at: float
    finished_at: float | None

    @property
    def contact(self) -> str:
        """The contact as a person reads it: its API id, else ``field=value``."""
        if self.contact_id is not None:
            return self.contact_id
        return f"{self.match_field}={self.match_value}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; times as ISO 8601 UTC, with the epoch in ``*_epoch``."""
        data = asdict(self)
        for name in ("created_at", "updated_at", "finished_at"):
            data[f"{name}_epoch"] = data[name]
            data[name] = iso_utc(data[name])
        return data


@dataclass(frozen=True)
class Replayed:
    """One batch of a bulk replay: the ids put back to pending, and how many messages
    were published (the reconciler publishes the rest if the broker failed)."""

    ids: list[int]
    published: int


def iso_utc(epoch: float | None) -> str | None:
    """``2024-06-01T12:00:00.000Z`` for an epoch time."""
    if epoch is None:
        return None
    moment = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", "Z")


def _where(filter: DeadLetterFilter | None) -> list[ColumnElement[bool]]:
    filter = filter or DeadLetterFilter()
    conditions = [commands.c.state == CommandState.DEAD]
    for column, value in (
        (commands.c.channel, filter.channel),
        (commands.c.reason, filter.reason),
        (events.c.source, filter.source),
    ):
        if value is not None:
            conditions.append(column == value)
    if filter.since is not None:
        conditions.append(commands.c.finished_at >= filter.since)
    if filter.ids is not None:
        conditions.append(commands.c.id.in_(list(filter.ids)))
    return conditions


def _select(filter: DeadLetterFilter | None, *columns: Any) -> Select[Any]:
    return select(*columns).select_from(_JOINED).where(*_where(filter))


_COLUMNS = (
    *(commands.c[name] for name in DeadLetter.__dataclass_fields__ if name in commands.c),
    events.c.source,
    events.c.key.label("event_key"),
    events.c.type.label("event_type"),
)


def list_dead(
    engine: Engine, filter: DeadLetterFilter | None = None, *, limit: int = 50, offset: int = 0
) -> list[DeadLetter]:
    """A page of dead letters, newest first (by ``finished_at``, then id)."""
    statement = (
        _select(filter, *_COLUMNS)
        .order_by(commands.c.finished_at.desc().nulls_last(), commands.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    with engine.connect() as connection:
        rows = connection.execute(statement).mappings().all()
    return [DeadLetter(**{**row, "payload": dict(row["payload"] or {})}) for row in rows]


def get_dead(engine: Engine, command_id: int) -> DeadLetter | None:
    """One dead letter, or None when that command is not a dead letter."""
    found = list_dead(engine, DeadLetterFilter(ids=[command_id]), limit=1)
    return found[0] if found else None


def count_dead(engine: Engine, filter: DeadLetterFilter | None = None) -> int:
    """How many dead letters match."""
    with engine.connect() as connection:
        return int(connection.execute(_select(filter, func.count())).scalar_one())


def newest_dead_id(engine: Engine, filter: DeadLetterFilter | None = None) -> int | None:
    """The highest matching id: pass it as ``up_to_id`` to leave out what dies later."""
    with engine.connect() as connection:
        newest = connection.execute(_select(filter, func.max(commands.c.id))).scalar()
    return None if newest is None else int(newest)


def counts_by_reason(engine: Engine) -> dict[str, int]:
    """Dead letters per reason, most frequent first (``unknown`` for no reason)."""
    statement = (
        select(commands.c.reason, func.count())
        .where(commands.c.state == CommandState.DEAD)
        .group_by(commands.c.reason)
        .order_by(func.count().desc(), commands.c.reason)
    )
    with engine.connect() as connection:
        rows = connection.execute(statement).all()
    return {str(reason or "unknown"): int(count) for reason, count in rows}


def dead_id_batches(
    engine: Engine,
    filter: DeadLetterFilter | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    up_to_id: int | None = None,
) -> Iterator[list[int]]:
    """The matching ids in ascending batches, each read only when the previous one was
    handed over (no transaction is held in between), so the caller may change it first."""
    filter = filter or DeadLetterFilter()
    id_groups: list[list[int] | None] = [None]
    if filter.ids is not None:
        id_groups = list(chunks(sorted(set(filter.ids)), batch_size))
    for chunk in id_groups:
        after = 0  # ids start at 1 on both backends
        while True:
            statement = _select(replace(filter, ids=chunk), commands.c.id).where(
                commands.c.id > after
            )
            if up_to_id is not None:
                statement = statement.where(commands.c.id <= up_to_id)
            with engine.connect() as connection:
                rows = connection.execute(statement.order_by(commands.c.id).limit(batch_size))
                ids = [int(command_id) for command_id in rows.scalars()]
            if ids:
                yield ids
            if len(ids) < batch_size:
                break
            after = ids[-1]


_RESET = {
    "state": CommandState.PENDING,
    "attempts": 0,
    **dict.fromkeys(("not_before", "reason", "finished_at", "lease_until", "lease_token"), None),
    # The rate limiter's per-command state, where the schema has it: a replay starts afresh.
    **{name: None for name in ("slots", "rate_limited_since") if name in commands.c},
}


def replay(engine: Engine, ids: Sequence[int], *, now: float | None = None) -> list[Due]:
    """Put these dead letters back to pending; returns those changed (ids that are not
    dead letters are left alone). The caller publishes them."""
    now = time.time() if now is None else now
    changed: list[Due] = []
    with engine.begin() as connection:
        for chunk in chunks(ids, BATCH_SIZE):
            statement = (
                update(commands)
                .where(commands.c.state == CommandState.DEAD, commands.c.id.in_(chunk))
                .values(**_RESET, published_at=now, updated_at=now)
                .returning(commands.c.id, commands.c.kind, commands.c.channel)
            )
            changed += [
                Due(int(row[0]), str(row[1]), str(row[2])) for row in connection.execute(statement)
            ]
    return sorted(changed)


def purge(engine: Engine, ids: Sequence[int]) -> int:
    """Delete these dead letters (their events stay, so a resent event is still a
    duplicate); returns how many were deleted."""
    deleted = 0
    with engine.begin() as connection:
        for chunk in chunks(ids, BATCH_SIZE):
            dead = and_(commands.c.state == CommandState.DEAD, commands.c.id.in_(chunk))
            # An outbox row not yet relayed goes with its command: SQLite hands a deleted
            # command's id to the next new one, whose own outbox row would collide.
            unsent = outbox.c.command_id.in_(select(commands.c.id).where(dead))
            connection.execute(delete(outbox).where(unsent))
            deleted += connection.execute(delete(commands).where(dead)).rowcount
    return deleted


def replay_batches(
    runtime: Runtime,
    filter: DeadLetterFilter | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    up_to_id: int | None = None,
) -> Iterator[Replayed]:
    """Replay the matching dead letters batch by batch, publishing each batch's tasks."""
    engine = runtime.ledger.engine
    for ids in dead_id_batches(engine, filter, batch_size=batch_size, up_to_id=up_to_id):
        changed = replay(engine, ids)
        yield Replayed([due.id for due in changed], publish(runtime.celery, changed))


def purge_batches(
    engine: Engine,
    filter: DeadLetterFilter | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    up_to_id: int | None = None,
) -> Iterator[int]:
    """Purge the matching dead letters batch by batch; yields how many each deleted."""
    for ids in dead_id_batches(engine, filter, batch_size=batch_size, up_to_id=up_to_id):
        yield purge(engine, ids)


def replay_and_publish(runtime: Runtime, ids: Sequence[int]) -> int:
    """Replay these dead letters and publish their tasks; returns how many were replayed."""
    batches = replay_batches(runtime, DeadLetterFilter(ids=list(ids)))
    return sum(len(batch.ids) for batch in batches)
