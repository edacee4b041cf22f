"""The relay: publishes the task message of every command the receiver records.

The receiver's answer waits for one thing, the ledger's commit. The command's row and an
``outbox`` row are written in that commit (the transactional outbox); the relay, a thread
in every worker process, takes outbox rows in order, publishes their messages on their
channels' queues and deletes the rows it published, in one transaction. So a publish is
never on a request's path, never lost (a row stays until its message is with the broker)
and never made for a command that was not kept.

On PostgreSQL, relays in several workers share the outbox (``FOR UPDATE SKIP LOCKED``).
When the broker is down, the rows wait and the relay backs off; the reconciler's
republishing after ``worker.republish_after_s`` stays as the net for messages the broker
itself loses. ``contactsync relay`` runs one on its own, for deployments whose workers
cannot reach the ledger's outbox promptly (or for benchmarks that measure it apart).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from celery.signals import worker_ready, worker_shutdown

from worker.ledger.store import Due
from worker.runtime import Runtime, get_runtime
from worker.submit import publish

log = logging.getLogger(__name__)

BACKOFF_MAX_S = 5.0
"""The longest wait between attempts while the ledger or the broker is failing."""


class RelayStalled(Exception):
    """The broker refused a message: the rest of the batch stays in the outbox."""


class Relay:
    """Drains the outbox of one ledger into one Celery app, from a daemon thread."""

    def __init__(
        self, runtime: Runtime, *, every_s: float | None = None, batch: int | None = None
    ) -> None:
        settings = runtime.config.worker
        self.runtime = runtime
        self.every_s = settings.relay_every_s if every_s is None else every_s
        self.batch = settings.relay_batch if batch is None else batch
        self.published = 0
        self._offered = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _send(self, due: Sequence[Due]) -> int:
        self._offered = len(due)
        return publish(self.runtime.celery, due)

    def run_once(self) -> int:
        """Publish one batch from the outbox; returns how many messages were sent.
        ``RelayStalled`` when the broker took fewer than it was offered."""
        self._offered = 0
        sent = self.runtime.ledger.relay(self._send, limit=self.batch)
        self.published += sent
        if sent < self._offered:
            raise RelayStalled(f"the broker took {sent} of {self._offered} messages")
        return sent

    def drain(self) -> int:
        """Publish until the outbox is empty (or a publish fails); returns the count."""
        total = 0
        while (sent := self.run_once()) > 0:
            total += sent
            if sent < self.batch:
                break
        return total

    def run(self) -> None:
        """Relay until :meth:`stop`: at once again after a full batch, else every
        ``every_s``; after a failure, with a doubling wait up to :data:`BACKOFF_MAX_S`."""
        failures = 0
        while not self._stop.is_set():
            try:
                sent = self.run_once()
            except Exception as error:  # the ledger or the broker is down: keep trying
                failures += 1
                if failures == 1 or failures % 100 == 0:
                    log.warning("relay: %s (%s), retrying", error, type(error).__name__)
                self._stop.wait(min(BACKOFF_MAX_S, self.every_s * 2 ** min(failures, 16)))
                continue
            failures = 0
            if sent < self.batch:
                self._stop.wait(self.every_s)

    def start(self) -> Relay:
        """Run in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="relay", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the batch in hand (its transaction commits or rolls back)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


_relay: Relay | None = None


def _start_relay(**_: object) -> None:
    global _relay
    _relay = Relay(get_runtime()).start()
    log.info("relay started (every %.3f s, batches of %d)", _relay.every_s, _relay.batch)


def _stop_relay(**_: object) -> None:
    if _relay is not None:
        _relay.stop()


worker_ready.connect(_start_relay)
worker_shutdown.connect(_stop_relay)
