"""The ledger's operations: record accepted events, claim and settle commands, and find
the commands the reconciler must republish or reclaim.

Every state change is one conditional UPDATE, so two workers, a redelivered message and
the reconciler can race freely: whoever's condition still holds wins, the rest find
nothing to do. A claim hands out a lease token; settling a command requires the token,
so a worker that lost its lease (it stalled, the reconciler reclaimed the command)
cannot settle it a second time.

A contact's commands carry a sequence number from the ``contacts`` row, taken under that
row's lock in the transaction that records the event, so sequence order is commit order.
A command is claimable only when no earlier command of the same contact is still open.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import (
    Engine,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError

from worker import metrics
from worker.commands import Command
from worker.ledger import intake
from worker.ledger.db import dialect_insert
from worker.ledger.errors import LedgerUnavailable, UnstorableValue, first_line
from worker.ledger.schema import OPEN_STATES, CommandState, commands, contacts, events, outbox

CLAIMABLE = (CommandState.PENDING, CommandState.SCHEDULED)


class Due(NamedTuple):
    """A command to publish: its id, kind and channel (the channel picks the queue)."""

    id: int
    kind: str
    channel: str


@dataclass(frozen=True)
class NewEvent:
    """An accepted event, as the receiver hands it to the ledger."""

    key: str
    type: str
    payload: Any
    commands: Sequence[Command]


@dataclass(frozen=True)
class Recorded:
    """What the ledger kept for one event (or found, for a duplicate)."""

    event_id: int
    key: str
    command_ids: list[int]
    duplicate: bool


@dataclass(frozen=True)
class Claimed:
    """A command a worker holds the lease on."""

    id: int
    event_id: int
    channel: str
    kind: str
    contact_key: str
    seq: int
    contact_id: str | None
    match_field: str | None
    match_value: str | None
    payload: dict[str, Any]
    attempts: int
    lease_token: str
    slots: list[float]
    """Rate-limit starts the command holds from an earlier claim (the limiter's clock)."""
    slots_epoch: int | None
    """The channel's limiter epoch those starts belong to."""
    done_steps: list[str]
    """Steps of an interrupted pass already applied (``fields``, ``adds``, ``removes``)."""
    absent_at: float | None
    """When the pass deferred last looked the contact up and found none (the ledger's
    clock); None once the command has been reclaimed since (that claim may have created
    it before its worker died)."""
    rate_limited_since: float | None

    @classmethod
    def from_row(cls, row: RowMapping) -> Claimed:
        """Build from a ``commands`` row."""
        return cls(
            id=row["id"],
            event_id=row["event_id"],
            channel=row["channel"],
            kind=row["kind"],
            contact_key=row["contact_key"],
            seq=row["seq"],
            contact_id=row["contact_id"],
            match_field=row["match_field"],
            match_value=row["match_value"],
            payload=dict(row["payload"] or {}),
            attempts=row["attempts"],
            lease_token=row["lease_token"],
            slots=[float(t) for t in (row["slots"] or {}).get("starts", [])],
            slots_epoch=(row["slots"] or {}).get("epoch"),
            done_steps=list((row["slots"] or {}).get("done", [])),
            absent_at=_absent_at(row),
            rate_limited_since=row["rate_limited_since"],
        )


def _absent_at(row: RowMapping) -> float | None:
    """The deferred pass's "found no contact", while no reclaim has spent an attempt since."""
    kept = row["slots"] or {}
    absent_at = kept.get("absent_at")
    if absent_at is None or kept.get("absent_attempts") != row["attempts"]:
        return None
    return float(absent_at)


_EARLIER = commands.alias("earlier")
_NO_EARLIER_OPEN = ~exists().where(
    _EARLIER.c.channel == commands.c.channel,
    _EARLIER.c.contact_key == commands.c.contact_key,
    _EARLIER.c.seq < commands.c.seq,
    _EARLIER.c.state.in_(OPEN_STATES),
)
"""No earlier command of the same contact is open. Built once: an alias built per claim was
garbage (reference cycles) and CPU each time."""


class Ledger:
    """The ledger on one database."""

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._insert = dialect_insert(engine)
        # The recording statements, built once: values are bound at execution, so each
        # request skips building a statement and its cache key (most of its CPU before).
        self._insert_event = (
            self._insert(events)
            .on_conflict_do_nothing(index_elements=["source", "key"])
            .returning(events.c.id)
        )
        bump = self._insert(contacts)
        # One statement takes the next sequence numbers under the contact row's lock: a
        # new contact starts at ``next_seq``, a known one adds ``next_seq`` to its own.
        self._bump_seq = bump.on_conflict_do_update(
            index_elements=["channel", "contact_key"],
            set_={"next_seq": contacts.c.next_seq + bump.excluded.next_seq},
        ).returning(contacts.c.next_seq)
        self._insert_command_row = commands.insert().returning(commands.c.id)
        # On PostgreSQL, one-command events are recorded in groups through the driver.
        self._intake = (
            intake.GroupIntake(engine, clock=lambda: self.clock(), on_group=metrics.record_group)
            if engine.dialect.name == "postgresql"
            else None
        )
        head = (
            select(outbox.c.command_id)
            .order_by(outbox.c.command_id)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        self._outbox_take = (
            delete(outbox)
            .where(outbox.c.command_id.in_(head))
            .returning(outbox.c.command_id, outbox.c.kind, outbox.c.channel)
        )
        """The outbox's oldest rows, taken out (``FOR UPDATE SKIP LOCKED`` on PostgreSQL):
        one statement that locks and deletes, rather than a lock and then a delete."""

    def __repr__(self) -> str:
        return f"Ledger({self.engine.url.render_as_string(hide_password=True)!r})"

    def _write(self, work: Callable[[Connection], Any]) -> Any:
        """Run ``work`` in one transaction; an unreachable database is LedgerUnavailable."""
        try:
            with self.engine.begin() as connection:
                return work(connection)
        except DBAPIError as error:
            if isinstance(error, OperationalError | InterfaceError) or error.connection_invalidated:
                raise LedgerUnavailable(first_line(error)) from error
            raise

    # -- recording --------------------------------------------------------------------

    def record(self, source: str, batch: Sequence[NewEvent]) -> list[Recorded]:
        """Keep events and their commands in one transaction; known keys are duplicates.

        Raises :class:`LedgerUnavailable` when the database cannot be written (nothing was
        kept: send again later) and :class:`UnstorableValue` when it refuses a value.

        On PostgreSQL an event with one command goes to the group intake
        (worker/ledger/intake.py). Otherwise a connection found dead on use (the database
        restarted since the pool last used it: the pool tests only idle connections) is
        tried once more on a new one. That is safe because recording is idempotent by event
        key: if the first attempt did commit before its connection died, the second finds
        the events known."""
        if self._intake is not None and len(batch) == 1 and len(batch[0].commands) == 1:
            return [self._record_one(self._intake, source, batch[0])]
        try:
            return self._record_batch(source, batch)
        except LedgerUnavailable as error:
            cause = error.__cause__
            if not (isinstance(cause, DBAPIError) and cause.connection_invalidated):
                raise
            return self._record_batch(source, batch)

    def _record_batch(self, source: str, batch: Sequence[NewEvent]) -> list[Recorded]:
        try:
            return list(self._write(lambda c: list(self._record(c, source, batch))))
        except DataError as error:
            raise UnstorableValue(first_line(error)) from error

    @staticmethod
    def _record_one(group: intake.GroupIntake, source: str, new: NewEvent) -> Recorded:
        row = intake.row(source, new.key, new.type, new.payload, new.commands[0])
        event_id, command_ids, duplicate = group.record(row)
        return Recorded(event_id, new.key, command_ids, duplicate=duplicate)

    def _known(self, connection: Connection, source: str, key: str) -> Recorded:
        """What the ledger holds for an event key it already knows."""
        event_id = connection.execute(
            select(events.c.id).where(events.c.source == source, events.c.key == key)
        ).scalar_one()
        known = connection.execute(
            select(commands.c.id).where(commands.c.event_id == event_id).order_by(commands.c.id)
        ).scalars()
        return Recorded(event_id, key, list(known), duplicate=True)

    def _record(
        self, connection: Connection, source: str, batch: Sequence[NewEvent]
    ) -> Iterator[Recorded]:
        now = self.clock()
        for new in batch:
            inserted = connection.execute(
                self._insert_event,
                {
                    "source": source,
                    "key": new.key,
                    "type": new.type,
                    "received_at": now,
                    "payload": new.payload,
                },
            ).first()
            if inserted is None:
                yield self._known(connection, source, new.key)
                continue
            event_id = inserted[0]
            seqs = self._next_seqs(connection, new.commands)
            ids = [
                self._insert_command(connection, event_id, command, seq, now)
                for command, seq in zip(new.commands, seqs, strict=True)
            ]
            if ids:
                connection.execute(
                    outbox.insert(),
                    [
                        {"command_id": id_, "kind": command.kind, "channel": command.channel}
                        for id_, command in zip(ids, new.commands, strict=True)
                    ],
                )
            yield Recorded(event_id, new.key, ids, duplicate=False)

    def _next_seqs(self, connection: Connection, batch: Sequence[Command]) -> list[int]:
        """The sequence number of each command, taken from its contact's row: one
        statement per contact (in the order contacts first appear, so the rows are locked
        in that order), numbers consecutive in command order, the first of a new contact 1."""
        wanted: dict[tuple[str, str], int] = {}
        for command in batch:
            contact = (command.channel, command.contact.key)
            wanted[contact] = wanted.get(contact, 0) + 1
        before: dict[tuple[str, str], int] = {}
        for (channel, key), count in wanted.items():
            last = connection.execute(
                self._bump_seq, {"channel": channel, "contact_key": key, "next_seq": count}
            ).scalar_one()
            before[(channel, key)] = int(last) - count
        seqs = []
        for command in batch:
            contact = (command.channel, command.contact.key)
            before[contact] += 1
            seqs.append(before[contact])
        return seqs

    def _insert_command(
        self, connection: Connection, event_id: int, command: Command, seq: int, now: float
    ) -> int:
        contact = command.contact
        return int(
            connection.execute(
                self._insert_command_row,
                {
                    "event_id": event_id,
                    "channel": command.channel,
                    "kind": command.kind,
                    "contact_key": contact.key,
                    "seq": seq,
                    "contact_id": contact.contact_id,
                    "match_field": contact.match_field,
                    "match_value": contact.match_value,
                    "payload": command.payload(),
                    "state": CommandState.PENDING,
                    "attempts": 0,
                    "published_at": now,
                    "created_at": now,
                    "updated_at": now,
                },
            ).scalar_one()
        )

    # -- claiming and settling -----------------------------------------------------------

    def claim(self, command_id: int, *, lease_s: float) -> Claimed | None:
        """Take the lease on a command that is due and next in its contact's order."""
        now = self.clock()
        token = uuid.uuid4().hex
        statement = (
            update(commands)
            .where(
                commands.c.id == command_id,
                commands.c.state.in_(CLAIMABLE),
                or_(commands.c.not_before.is_(None), commands.c.not_before <= now),
                _NO_EARLIER_OPEN,
            )
            .values(
                state=CommandState.RUNNING,
                lease_until=now + lease_s,
                lease_token=token,
                updated_at=now,
            )
            .returning(*commands.c)
        )
        row = self._write(lambda connection: connection.execute(statement).mappings().first())
        return None if row is None else Claimed.from_row(row)

    def _settle(self, claims: Claimed | Sequence[Claimed], **values: Any) -> bool:
        """Apply ``values`` to commands still held under their lease; True if all were."""
        group = [claims] if isinstance(claims, Claimed) else list(claims)
        values.setdefault("updated_at", self.clock())
        statement = (
            update(commands)
            .where(
                commands.c.id.in_([claimed.id for claimed in group]),
                commands.c.state == CommandState.RUNNING,
                commands.c.lease_token == group[0].lease_token,
            )
            .values(**values)
        )
        changed = self._write(lambda connection: connection.execute(statement).rowcount)
        return bool(changed == len(group))

    def complete(self, claims: Claimed | Sequence[Claimed], *, contact_id: str | None) -> bool:
        """Mark done; False when the lease was lost (someone else holds the command now)."""
        claimed = claims if isinstance(claims, Claimed) else claims[0]
        now = self.clock()
        done = self._settle(
            claims,
            state=CommandState.DONE,
            contact_id=contact_id,
            finished_at=now,
            lease_until=None,
            lease_token=None,
            reason=None,
            slots=None,
            rate_limited_since=None,
        )
        if done and contact_id is not None:
            self.remember_contact(claimed.channel, claimed.contact_key, contact_id)
        return done

    def reschedule(
        self,
        claims: Claimed | Sequence[Claimed],
        *,
        not_before: float,
        spend_attempt: bool,
        reason: str | None = None,
        status: int | None = None,
        error: str | None = None,
        contact_id: str | None = None,
        slots: list[float] | None = None,
        slots_epoch: int | None = None,
        done_steps: Sequence[str] = (),
        absent_at: float | None = None,
        published_at: float | None = None,
        rate_limited_since: float | None = None,
    ) -> bool:
        """Put the command back to wait until ``not_before``.

        ``slots`` are rate-limit starts it keeps for its next claim, ``done_steps`` the
        steps its pass applied and ``absent_at`` when that pass found no contact (one
        command: it holds for its next claim, not after a reclaim); ``published_at`` is
        when a message already sent (with a countdown) will be delivered, so that the
        reconciler does not send another before then."""
        kept: dict[str, Any] = {
            "epoch": slots_epoch,
            "starts": slots or [],
            "done": list(done_steps),
        }
        if absent_at is not None:
            if not isinstance(claims, Claimed):
                raise TypeError("absent_at is one command's: reschedule it alone")
            kept["absent_at"] = absent_at
            kept["absent_attempts"] = claims.attempts + (1 if spend_attempt else 0)
        return self._settle(
            claims,
            state=CommandState.SCHEDULED,
            not_before=not_before,
            attempts=commands.c.attempts + (1 if spend_attempt else 0),
            lease_until=None,
            lease_token=None,
            published_at=published_at,
            reason=reason,
            last_status=status,
            last_error=error,
            contact_id=func.coalesce(contact_id, commands.c.contact_id),
            slots=kept if slots or done_steps or absent_at is not None else None,
            rate_limited_since=rate_limited_since,
        )

    def kill(
        self,
        claims: Claimed | Sequence[Claimed],
        *,
        reason: str,
        status: int | None = None,
        error: str | None = None,
        spend_attempt: bool = True,
        contact_id: str | None = None,
    ) -> bool:
        """Make the command a dead letter with its reason, status and the API's message."""
        return self._settle(
            claims,
            state=CommandState.DEAD,
            attempts=commands.c.attempts + (1 if spend_attempt else 0),
            finished_at=self.clock(),
            lease_until=None,
            lease_token=None,
            reason=reason,
            last_status=status,
            last_error=error,
            contact_id=func.coalesce(contact_id, commands.c.contact_id),
            slots=None,
        )

    def renew(self, claims: Sequence[Claimed], *, lease_s: float) -> bool:
        """Extend the lease of commands still held; False when it was lost meanwhile (the
        reconciler gave the commands to another worker): stop working on them."""
        return self._settle(claims, lease_until=self.clock() + lease_s)

    def release(self, claims: Sequence[Claimed]) -> bool:
        """Give commands back untouched: pending again, no attempt spent."""
        if not claims:
            return True
        return self._settle(
            claims, state=CommandState.PENDING, lease_until=None, lease_token=None, slots=None
        )

    def claim_followers(
        self, head: Claimed, kinds_allowed: Callable[[list[str]], int], *, lease_s: float
    ) -> list[Claimed]:
        """Take, under the head's lease, the contact's commands waiting right behind it
        (due, in sequence order, without a gap), as many as ``kinds_allowed`` accepts of
        their kinds (head first)."""
        now = self.clock()
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(commands.c.id, commands.c.kind, commands.c.state, commands.c.not_before)
                .where(
                    commands.c.channel == head.channel,
                    commands.c.contact_key == head.contact_key,
                    commands.c.seq > head.seq,
                    commands.c.state.in_(OPEN_STATES),
                )
                .order_by(commands.c.seq)
                .limit(100)
            ).all()
        ready = []
        for row in rows:
            if row.state not in CLAIMABLE or (row.not_before is not None and row.not_before > now):
                break
            ready.append(row)
        count = kinds_allowed([head.kind, *(row.kind for row in ready)]) - 1
        ids = [row.id for row in ready[: max(count, 0)]]
        if not ids:
            return []
        statement = (
            update(commands)
            .where(commands.c.id.in_(ids), commands.c.state.in_(CLAIMABLE))
            .values(
                state=CommandState.RUNNING,
                lease_until=now + lease_s,
                lease_token=head.lease_token,
                updated_at=now,
            )
            .returning(*commands.c)
        )
        claimed = self._write(lambda connection: connection.execute(statement).mappings().all())
        return sorted((Claimed.from_row(row) for row in claimed), key=lambda c: c.seq)

    def later_done(self, head: Claimed) -> list[tuple[int, str, dict[str, Any]]]:
        """``(seq, kind, payload)`` of the contact's commands after the head that are done
        already: what a replayed command must not undo."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(commands.c.seq, commands.c.kind, commands.c.payload)
                .where(
                    commands.c.channel == head.channel,
                    commands.c.contact_key == head.contact_key,
                    commands.c.seq > head.seq,
                    commands.c.state == CommandState.DONE,
                )
                .order_by(commands.c.seq)
            ).all()
        return [(row.seq, row.kind, dict(row.payload or {})) for row in rows]

    def cached_contact_id(self, channel: str, contact_key: str) -> str | None:
        """The contact id this contact key last resolved to on the channel."""
        with self.engine.connect() as connection:
            value = connection.execute(
                select(contacts.c.contact_id).where(
                    contacts.c.channel == channel, contacts.c.contact_key == contact_key
                )
            ).scalar()
        return None if value is None else str(value)

    def forget_contact(self, channel: str, contact_key: str, contact_id: str) -> None:
        """Drop a cached contact id the API no longer knows."""
        statement = (
            update(contacts)
            .where(
                contacts.c.channel == channel,
                contacts.c.contact_key == contact_key,
                contacts.c.contact_id == contact_id,
            )
            .values(contact_id=None, resolved_at=None)
        )
        self._write(lambda connection: connection.execute(statement))

    def remember_contact(self, channel: str, contact_key: str, contact_id: str) -> None:
        """Note which contact id a contact key resolved to."""
        statement = (
            update(contacts)
            .where(contacts.c.channel == channel, contacts.c.contact_key == contact_key)
            .values(contact_id=contact_id, resolved_at=self.clock())
        )
        self._write(lambda connection: connection.execute(statement))

    # -- reconciling ----------------------------------------------------------------------

    def next_for_contact(self, channel: str, contact_key: str) -> int | None:
        """The id of the contact's next open command that is due, if any."""
        now = self.clock()
        with self.engine.connect() as connection:
            return connection.execute(
                select(commands.c.id)
                .where(
                    commands.c.channel == channel,
                    commands.c.contact_key == contact_key,
                    commands.c.state.in_(CLAIMABLE),
                    or_(commands.c.not_before.is_(None), commands.c.not_before <= now),
                )
                .order_by(commands.c.seq)
                .limit(1)
            ).scalar()

    def due(self, *, republish_after_s: float, limit: int = 500) -> list[Due]:
        """Claimable commands at the head of their contact's order whose message may be
        lost: never published, or published more than ``republish_after_s`` ago. They are
        marked published now; the caller publishes them."""
        now = self.clock()

        def work(connection: Connection) -> list[Due]:
            rows = connection.execute(
                select(commands.c.id, commands.c.kind, commands.c.channel)
                .where(
                    commands.c.state.in_(CLAIMABLE),
                    or_(commands.c.not_before.is_(None), commands.c.not_before <= now),
                    or_(
                        commands.c.published_at.is_(None),
                        commands.c.published_at <= now - republish_after_s,
                    ),
                    _NO_EARLIER_OPEN,
                )
                .order_by(commands.c.id)
                .limit(limit)
            ).all()
            ids = [row[0] for row in rows]
            if ids:
                # A command that has waited long is most likely queued behind a backlog, not
                # lost: the older it is, the longer until it is published again (half its
                # age, at most an hour), so a backlog is not republished over and over.
                half_age = (now - commands.c.created_at) / 2
                backoff = case((half_age > 3600, 3600.0), else_=half_age)
                connection.execute(
                    update(commands)
                    .where(commands.c.id.in_(ids))
                    .values(published_at=now + backoff)
                )
            return [Due(*row) for row in rows]

        return list(self._write(work))

    def mark_published(self, command_ids: Sequence[int]) -> None:
        """Note that messages for these commands were just published."""
        if command_ids:
            statement = (
                update(commands)
                .where(commands.c.id.in_(list(command_ids)))
                .values(published_at=self.clock())
            )
            self._write(lambda connection: connection.execute(statement))

    def relay(self, send: Callable[[Sequence[Due]], int], *, limit: int = 500) -> int:
        """Hand the outbox's oldest rows to ``send``, which publishes their messages in
        order and returns how many it sent, in one transaction that takes those rows out of
        the outbox and puts back any it did not send; returns that count. If ``send`` raises,
        the transaction rolls back and every row stays.

        On PostgreSQL the rows are taken ``FOR UPDATE SKIP LOCKED``: relays in several
        workers share the outbox without publishing a row twice. A relay that dies between
        ``send`` and its commit leaves its rows to the next one: a message sent twice,
        which the claim makes harmless, and never one not sent."""

        def work(connection: Connection) -> int:
            rows = sorted(connection.execute(self._outbox_take, {"limit": limit}).all())
            if not rows:
                return 0
            sent = send([Due(*row) for row in rows])
            if sent < len(rows):  # the broker stopped taking: the rest stay for the next try
                connection.execute(
                    outbox.insert(),
                    [
                        {"command_id": command_id, "kind": kind, "channel": channel}
                        for command_id, kind, channel in rows[sent:]
                    ],
                )
            return sent

        return int(self._write(work))

    def outbox_size(self) -> int:
        """How many recorded commands wait for the relay to publish them."""
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(outbox)).scalar_one())

    def reclaim_expired(self, *, max_attempts: int) -> list[Due]:
        """Commands whose worker's lease ran out: back to pending (an attempt spent), or dead
        once the attempts are used up. Returns the ones to publish again."""
        now = self.clock()
        expired = and_(commands.c.state == CommandState.RUNNING, commands.c.lease_until < now)
        lost = "lease expired: the worker died or stalled while running the command"

        def work(connection: Connection) -> list[Due]:
            connection.execute(
                update(commands)
                .where(expired, commands.c.attempts + 1 >= max_attempts)
                .values(
                    state=CommandState.DEAD,
                    attempts=commands.c.attempts + 1,
                    reason="worker_lost",
                    last_error=lost,
                    finished_at=now,
                    updated_at=now,
                    lease_token=None,
                    lease_until=None,
                )
            )
            rows = connection.execute(
                update(commands)
                .where(expired)
                .values(
                    state=CommandState.PENDING,
                    attempts=commands.c.attempts + 1,
                    last_error=lost,
                    updated_at=now,
                    published_at=now,
                    lease_token=None,
                    lease_until=None,
                )
                .returning(commands.c.id, commands.c.kind, commands.c.channel)
            ).all()
            return [Due(*row) for row in rows]

        return list(self._write(work))

    # -- reading --------------------------------------------------------------------------

    def command(self, command_id: int) -> dict[str, Any] | None:
        """One command row, as a dict."""
        with self.engine.connect() as connection:
            row = (
                connection.execute(select(commands).where(commands.c.id == command_id))
                .mappings()
                .first()
            )
            return None if row is None else dict(row)

    def counts(self) -> dict[str, int]:
        """How many commands are in each state."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(commands.c.state, func.count()).group_by(commands.c.state)
            ).all()
        found = {str(state): int(count) for state, count in rows}
        return {state.value: found.get(state.value, 0) for state in CommandState}
