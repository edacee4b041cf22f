"""The ledger's tables. Times are UNIX epoch seconds (floats) on every backend."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()


class CommandState(StrEnum):
    """Where a command is in its life."""

    PENDING = "pending"
    """Ready to run as soon as a worker claims it."""
    RUNNING = "running"
    """Claimed by a worker, whose lease runs until ``lease_until``."""
    SCHEDULED = "scheduled"
    """Waiting for ``not_before`` (a backoff, a rate-limit pause)."""
    DONE = "done"
    DEAD = "dead"
    """A dead letter: it cannot succeed without an operator."""


OPEN_STATES = (CommandState.PENDING, CommandState.RUNNING, CommandState.SCHEDULED)

events = Table(
    "events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source", String(100), nullable=False),
    Column("key", String(300), nullable=False),
    Column("type", String(100), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("payload", JSON, nullable=False),
    UniqueConstraint("source", "key", name="uq_events_source_key"),
)

contacts = Table(
    "contacts",
    metadata,
    Column("channel", String(100), primary_key=True),
    Column("contact_key", String(600), primary_key=True),
    Column("next_seq", BigInteger, nullable=False, default=0),
    Column("contact_id", String(200), nullable=True),
    Column("resolved_at", Float, nullable=True),
)

commands = Table(
    "commands",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", Id, ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    Column("channel", String(100), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("contact_key", String(600), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("contact_id", String(200), nullable=True),
    Column("match_field", String(100), nullable=True),
    Column("match_value", String(500), nullable=True),
    Column("payload", JSON, nullable=False),
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("not_before", Float, nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("lease_token", String(64), nullable=True),
    Column("published_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("reason", String(100), nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("slots", JSON, nullable=True),
    Column("rate_limited_since", Float, nullable=True),
    Index("ix_commands_state_not_before", "state", "not_before"),
    Index("ix_commands_contact_seq", "channel", "contact_key", "seq"),
    Index("ix_commands_event", "event_id"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("command_id", Id, primary_key=True, autoincrement=False),
    Column("kind", String(20), nullable=False),
    Column("channel", String(100), nullable=False),
)
"""Commands recorded whose task message is not yet published: written in the transaction
that records the command, deleted by the relay once the message is with the broker (the
transactional outbox). No foreign key: a purged command's row is published, found gone by
the worker and dropped, which costs less than a cascade on every delete."""

channels = Table(
    "channels",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("schedule", JSON, nullable=False),
    Column("paused_until", Float, nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("bad_token_at", Float, nullable=True),
    Column("bad_token_detail", Text, nullable=True),
    Column("updated_at", Float, nullable=False),
)

channel_minutes = Table(
    "channel_minutes",
    metadata,
    Column("channel", String(100), primary_key=True),
    Column("minute", BigInteger, primary_key=True),
    Column("calls", Integer, nullable=False),
    Column("rate_limited", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
)

workers = Table(
    "workers",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("seen_at", Float, nullable=False),
    Column("done", BigInteger, nullable=False),
)
