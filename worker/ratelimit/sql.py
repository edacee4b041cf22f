"""Each channel's schedule of starts, kept in the ledger database.

Every operation is one short transaction that locks the channel's row (``SELECT … FOR
UPDATE`` on PostgreSQL; SQLite's write lock) and reads the database's clock, so workers on
several machines share one clock and one schedule. A reservation returns the exact start
times; nothing is refused.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select, text, update
from sqlalchemy.engine import Connection

from worker.ledger.db import dialect_insert
from worker.ledger.schema import channels
from worker.ratelimit import schedule
from worker.ratelimit.schedule import Limit


@dataclass(frozen=True)
class Reservation:
    """Starts on the limiter's clock, the channel's epoch they belong to, and the clock's
    reading when they were handed out."""

    starts: list[float]
    epoch: int
    now: float


@dataclass(frozen=True)
class _Row:
    schedule: list[float]
    paused_until: float
    epoch: int


@dataclass(frozen=True)
class ChannelStatus:
    """What the limiter knows of a channel, for operators."""

    name: str
    paused_until: float
    bad_token_at: float | None
    bad_token_detail: str | None
    reserved: int
    """Starts in the schedule (at most the limit's ``calls``)."""


class SqlLimiter:
    """The limiter on the ledger's database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = dialect_insert(engine)
        self._pg = engine.dialect.name == "postgresql"

    def _now(self, connection: Connection) -> float:
        if self._pg:
            return float(
                connection.execute(
                    text("SELECT extract(epoch FROM clock_timestamp())")
                ).scalar_one()
            )
        return time.time()  # SQLite lives on one machine: its clock is this one

    def _lock(self, connection: Connection, channel: str) -> tuple[_Row, float]:
        """Lock the channel's row, then read the clock: a reading taken before waiting for
        the lock would be stale by the wait (tens of ms when many workers confirm at a
        period's edge), and a late start would pass for a timely one."""
        query = (
            select(channels.c.schedule, channels.c.paused_until, channels.c.epoch)
            .where(channels.c.name == channel)
            .with_for_update()
        )
        row = connection.execute(query).first()
        if row is None:
            connection.execute(
                self._insert(channels)
                .values(name=channel, schedule=[], paused_until=0.0, epoch=0, updated_at=0.0)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            row = connection.execute(query).one()
        locked = _Row([float(t) for t in row[0] or []], float(row[1]), int(row[2]))
        return locked, self._now(connection)

    def _save(self, connection: Connection, channel: str, now: float, **values: Any) -> None:
        connection.execute(
            update(channels).where(channels.c.name == channel).values(updated_at=now, **values)
        )

    def now(self) -> float:
        """The shared clock."""
        with self.engine.connect() as connection:
            return self._now(connection)

    def reserve(
        self,
        channel: str,
        n: int,
        limit: Limit,
        *,
        spacing_s: float = 0.0,
        after: float | None = None,
    ) -> Reservation:
        """Reserve ``n`` starts, ``spacing_s`` apart (see :func:`schedule.reserve`)."""
        with self.engine.begin() as connection:
            row, now = self._lock(connection, channel)
            starts, kept = schedule.reserve(
                row.schedule,
                n,
                now=now,
                limit=limit,
                paused_until=row.paused_until,
                spacing_s=spacing_s,
                after=after,
            )
            self._save(connection, channel, now, schedule=kept)
            return Reservation(starts, row.epoch, now)

    def confirm(
        self, channel: str, start: float, epoch: int, limit: Limit, *, tolerance_s: float
    ) -> Reservation:
        """Check a held start before using it: reserved since the last pause, not inside
        a pause, not missed by more than ``tolerance_s``. Returns it, or a new start that
        replaces it."""
        with self.engine.begin() as connection:
            row, now = self._lock(connection, channel)
            if epoch == row.epoch and start >= row.paused_until and now <= start + tolerance_s:
                return Reservation([start], row.epoch, now)
            planned = (
                schedule.release(row.schedule, [start]) if epoch == row.epoch else row.schedule
            )
            (fresh,), kept = schedule.reserve(
                planned, 1, now=now, limit=limit, paused_until=row.paused_until
            )
            self._save(connection, channel, now, schedule=kept)
            return Reservation([fresh], row.epoch, now)

    def release(self, channel: str, starts: Sequence[float], epoch: int) -> None:
        """Give back starts that were reserved and never used (a no-op after a pause)."""
        if not starts:
            return
        with self.engine.begin() as connection:
            row, now = self._lock(connection, channel)
            if row.epoch == epoch:
                kept = schedule.release(row.schedule, starts)
                self._save(connection, channel, now, schedule=kept)

    def pause(self, channel: str, seconds: float) -> float:
        """Stop the whole channel for ``seconds`` (after a 429); returns when it resumes.

        Reserved future starts are dropped and the epoch moves on: their holders find them
        void when they confirm, and take new ones after the pause."""
        with self.engine.begin() as connection:
            row, now = self._lock(connection, channel)
            until = max(row.paused_until, now + seconds)
            past = [start for start in row.schedule if start < now]
            self._save(
                connection, channel, now, schedule=past, paused_until=until, epoch=row.epoch + 1
            )
            return until

    def flag_bad_token(self, channel: str, detail: str) -> None:
        """Note that the API refused the channel's token (401)."""
        with self.engine.begin() as connection:
            _, now = self._lock(connection, channel)
            self._save(connection, channel, now, bad_token_at=now, bad_token_detail=detail[:500])

    def clear_bad_token(self, channel: str) -> None:
        """The token works (again)."""
        with self.engine.begin() as connection:
            connection.execute(
                update(channels)
                .where(channels.c.name == channel, channels.c.bad_token_at.is_not(None))
                .values(bad_token_at=None, bad_token_detail=None)
            )

    def status(self) -> list[ChannelStatus]:
        """Every channel the limiter has seen."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(channels).order_by(channels.c.name)).mappings()
            return [
                ChannelStatus(
                    name=row["name"],
                    paused_until=row["paused_until"],
                    bad_token_at=row["bad_token_at"],
                    bad_token_detail=row["bad_token_detail"],
                    reserved=len(row["schedule"] or []),
                )
                for row in rows
            ]
