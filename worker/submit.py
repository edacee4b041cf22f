"""Submitting work: record events and their commands in the ledger, then publish a task
per new command. The receiver uses this, and so can any other Python code::

    from worker.submit import submit
    submit(runtime, "crm-import", [NewEvent(key="row-7", type="contact.upsert",
                                            payload=row, commands=[command])])

A failed publish is logged and left to the reconciler: the ledger already holds the
command, so the caller's answer need not wait for the broker.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from celery import Celery

from worker.celery_app import TASK_FOR_KIND
from worker.ledger.store import Due, Ledger, NewEvent, Recorded
from worker.runtime import Runtime

log = logging.getLogger(__name__)


def queue_for(channel: str) -> str:
    """The broker queue of a channel's commands: one per channel, so that a backlog on one
    channel never sits in front of another channel's messages."""
    return f"contactsync.{channel}"


def publish(celery: Celery, commands: Iterable[Due], *, countdown: float | None = None) -> int:
    """Send one task message per command, on its channel's queue; returns how many were sent.

    Stops at the first failure: the broker is down, and the reconciler will publish the
    rest from the ledger once it is back.
    """
    sent = 0
    for command_id, kind, channel in commands:
        try:
            celery.send_task(
                TASK_FOR_KIND[kind],
                args=[command_id],
                queue=queue_for(channel),
                retry=False,
                countdown=countdown,
            )
        except Exception as error:  # any broker failure: the ledger has the command
            log.warning(
                "publish failed, the reconciler will retry: %s",
                type(error).__name__,
                extra={"command_id": command_id},
            )
            break
        sent += 1
    return sent


class BackgroundPublisher:
    """Publishes from a thread of its own, so that a request's answer waits for the
    ledger's commit and not for the broker. What it has not sent when its process dies is
    in the ledger: the reconciler publishes it after ``worker.republish_after_s``."""

    def __init__(self, celery: Celery, *, max_waiting: int = 100_000) -> None:
        self.celery = celery
        self._queue: queue.Queue[list[Due]] = queue.Queue(max_waiting)
        self._pid = -1
        self._lock = threading.Lock()

    def __call__(self, celery: Celery, commands: Sequence[Due]) -> int:
        """Queue ``commands`` for publishing; returns how many were queued."""
        self._ensure_thread()
        try:
            self._queue.put_nowait(list(commands))
        except queue.Full:
            log.warning("publisher queue full: %d commands left to the reconciler", len(commands))
            return 0
        return len(commands)

    def _ensure_thread(self) -> None:
        # Threads do not survive a fork (gunicorn workers): start one per process.
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="publisher", daemon=True).start()
                atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                publish(self.celery, batch)
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float = 2.0) -> None:
        """Wait (a little) for what is queued to be sent."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)


Publish = Callable[[Celery, Sequence[Due]], int]


def record_and_publish(
    ledger: Ledger,
    celery: Celery,
    source: str,
    events: Sequence[NewEvent],
    *,
    publisher: Publish | None = None,
) -> list[Recorded]:
    """Record events in one transaction, then publish their new commands (with
    ``publisher``, e.g. a :class:`BackgroundPublisher`, else right away)."""
    recorded = ledger.record(source, events)
    fresh = [
        Due(command_id, command.kind, command.channel)
        for event, result in zip(events, recorded, strict=True)
        if not result.duplicate
        for command_id, command in zip(result.command_ids, event.commands, strict=True)
    ]
    if fresh:
        (publisher or publish)(celery, fresh)
    return recorded


def submit(runtime: Runtime, source: str, events: Sequence[NewEvent]) -> list[Recorded]:
    """The one way in for other Python code: record and publish on ``runtime``."""
    return record_and_publish(runtime.ledger, runtime.celery, source, events)
