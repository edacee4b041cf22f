"""What operators watch, written as work happens: API calls per channel and minute, and
each worker's heartbeat. Small upserts into the ledger; the dashboard and
``contactsync status`` read them (:mod:`worker.stats`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from sqlalchemy import Engine, delete

from worker.ledger.db import dialect_insert as _insert
from worker.ledger.schema import channel_minutes, workers

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
KEEP_MINUTES_S = 86400.0


def record_calls(
    engine: Engine,
    channel: str,
    *,
    calls: int,
    rate_limited: int = 0,
    failed: int = 0,
    now: float | None = None,
) -> None:
    """Add to the channel's counts for the current minute."""
    if not (calls or rate_limited or failed):
        return
    minute = int((time.time() if now is None else now) // 60)
    insert = _insert(engine)
    statement = insert(channel_minutes).values(
        channel=channel, minute=minute, calls=calls, rate_limited=rate_limited, failed=failed
    )
    statement = statement.on_conflict_do_update(
        index_elements=["channel", "minute"],
        set_={
            "calls": channel_minutes.c.calls + statement.excluded.calls,
            "rate_limited": channel_minutes.c.rate_limited + statement.excluded.rate_limited,
            "failed": channel_minutes.c.failed + statement.excluded.failed,
        },
    )
    with engine.begin() as connection:
        connection.execute(statement)


def worker_name() -> str:
    """This process's name in the heartbeat table."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Writes this worker's heartbeat every few seconds from a daemon thread."""

    def __init__(self, engine: Engine, *, every_s: float = HEARTBEAT_S) -> None:
        self.engine = engine
        self.every_s = every_s
        self.name = worker_name()
        self.started_at = time.time()
        self.done = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        """Beat now, then every ``every_s``."""
        self.beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and remove this worker's row (a clean shutdown)."""
        self._stop.set()
        with self.engine.begin() as connection:
            connection.execute(delete(workers).where(workers.c.name == self.name))

    def count(self, commands: int = 1) -> None:
        """Note commands settled by this worker."""
        with self._lock:
            self.done += commands

    def beat(self) -> None:
        """Write the heartbeat row."""
        with self._lock:
            done = self.done
        insert = _insert(self.engine)
        statement = insert(workers).values(
            name=self.name, started_at=self.started_at, seen_at=time.time(), done=done
        )
        statement = statement.on_conflict_do_update(
            index_elements=["name"],
            set_={"seen_at": statement.excluded.seen_at, "done": statement.excluded.done},
        )
        with self.engine.begin() as connection:
            connection.execute(statement)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.beat()
            except Exception as error:  # the ledger may be down for a while: keep trying
                log.warning("heartbeat failed: %s", type(error).__name__)


def prune(engine: Engine, *, now: float | None = None) -> None:
    """Forget minute counts older than a day and workers silent for a day."""
    now = time.time() if now is None else now
    with engine.begin() as connection:
        connection.execute(
            delete(channel_minutes).where(
                channel_minutes.c.minute < int((now - KEEP_MINUTES_S) // 60)
            )
        )
        connection.execute(delete(workers).where(workers.c.seen_at < now - KEEP_MINUTES_S))
