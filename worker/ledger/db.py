"""Engines and migrations for the ledger (SQLite by default, PostgreSQL in production).

SQLite runs in WAL mode with a busy timeout, and every transaction takes the write lock
at ``BEGIN IMMEDIATE``: several processes (receiver, workers, beat) share the file, and a
deferred transaction that upgrades to a write could fail with "database is locked"
instead of waiting. Migrations are Alembic's, run under a lock so that processes that
start together do not race.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).with_name("migrations")
_PG_MIGRATION_LOCK = 0x636F6E74  # "cont": the advisory lock id for migrations


def connect(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for the ledger at ``url``, tuned for its backend."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed, connect_args={"timeout": 30, "check_same_thread": False}, poolclass=NullPool
        )
        _tune_sqlite(engine)
        return engine
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size // 2,
        pool_recycle=1800,
        connect_args={"connect_timeout": 5} if parsed.get_backend_name() == "postgresql" else {},
    )
    _ping_when_idle(engine)
    return engine


IDLE_PING_S = 1.0
"""A pooled connection idle for longer than this is tested before use."""


def _ping_when_idle(engine: Engine) -> None:
    """Test a pooled connection on checkout only when it has sat idle: SQLAlchemy's
    ``pool_pre_ping`` spends a round trip on every checkout (a tenth of a request's CPU in
    the ingest profile), while a connection in steady use has just proved itself. A
    connection that fails the test is replaced before the caller sees it (the pool's
    ``DisconnectionError`` protocol); one that dies while in use fails that use, which the
    ledger reports as unavailable."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_S:
            return
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            dbapi_connection.rollback()  # end the transaction the driver opened for it
        except Exception as error:
            raise DisconnectionError("the connection failed its test") from error


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def dialect_insert(engine: Engine) -> Callable[..., Any]:
    """The INSERT construct with ``on_conflict_do_*`` for the engine's backend."""
    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    """The newest migration this code knows."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at (``None`` when it has no schema yet)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                connection.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def migrate(engine: Engine) -> bool:
    """Bring the schema up to the newest migration; returns whether anything ran."""
    with _migration_lock(engine):
        if current_revision(engine) == head_revision():
            return False
        with engine.begin() as connection:
            command.upgrade(_alembic_config(connection), "head")
        return True


def ping(engine: Engine) -> None:
    """Raise when the database cannot be reached."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
