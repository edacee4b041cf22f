"""What a worker process needs, built once per process from its settings: the config,
the ledger, one Contacts API client per channel, and the Celery app to publish with.

Built lazily and per process id: a forked pool child must not reuse its parent's
database connections or HTTP pools.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import cached_property

from celery import Celery

from worker.config import AppConfig, Settings
from worker.contacts_api import ContactsClient
from worker.ledger import Ledger, connect, migrate
from worker.ratelimit import CallTimes, SqlLimiter

log = logging.getLogger(__name__)


class Runtime:
    """The shared parts of one process."""

    def __init__(self, settings: Settings, config: AppConfig, celery: Celery | None = None) -> None:
        self.settings = settings
        self.config = config
        self._celery = celery
        self._local = threading.local()

    @cached_property
    def ledger(self) -> Ledger:
        """The ledger, schema brought up to date if needed."""
        engine = connect(self.settings.ledger_url())
        migrate(engine)
        return Ledger(engine)

    @cached_property
    def limiter(self) -> SqlLimiter:
        """The channels' shared rate limiter, on the ledger's database."""
        return SqlLimiter(self.ledger.engine)

    @cached_property
    def call_times(self) -> CallTimes:
        """How long each channel's calls take from this process (spaces a pass's starts)."""
        return CallTimes()

    @property
    def celery(self) -> Celery:
        """The Celery app used to publish commands."""
        if self._celery is None:
            from worker.celery_app import create_celery

            self._celery = create_celery(
                self.settings, reconcile_every_s=self.config.worker.reconcile_every_s
            )
        return self._celery

    def client(self, channel: str) -> ContactsClient:
        """The Contacts API client of a channel: one pooled session per channel and thread
        (``requests.Session`` is not documented as safe to share between threads)."""
        clients: dict[str, ContactsClient] = self._local.__dict__.setdefault("clients", {})
        client = clients.get(channel)
        if client is None:
            client = clients[channel] = self._new_client(channel)
        return client

    def _new_client(self, channel: str) -> ContactsClient:
        spec = self.config.channels[channel]
        if spec.token is None:
            raise LookupError(f"channels.{channel}: no token")
        api = self.config.contacts_api
        return ContactsClient(
            self.config.channel_url(channel),
            spec.token.get_secret_value(),
            platform=spec.platform,
            timeout=(api.connect_timeout_s, api.read_timeout_s),
            custom_fields=frozenset(spec.custom_fields) if spec.custom_fields else None,
        )


_runtime: Runtime | None = None
_runtime_pid: int | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    """This process's runtime, built from ``CONTACTSYNC_*`` settings on first use."""
    global _runtime, _runtime_pid
    with _runtime_lock:
        if _runtime is None or _runtime_pid != os.getpid():
            settings = Settings()
            _runtime = Runtime(settings, settings.load())
            _runtime_pid = os.getpid()
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Install a runtime for this process (the CLI and tests build their own)."""
    global _runtime, _runtime_pid
    with _runtime_lock:
        _runtime = runtime
        _runtime_pid = os.getpid() if runtime is not None else None
