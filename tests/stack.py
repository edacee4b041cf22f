"""A running contactsync stack for integration tests: the sandbox (in this process, over
HTTP), the receiver (an in-process Flask client on the real app), and real ``contactsync
worker`` / ``beat`` processes on the chosen broker and ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from flask.testing import FlaskClient
from sqlalchemy import text

from webhooks.app import create_app
from webhooks.signing import WebhookSecret, sign
from worker.config import Settings, load_config
from worker.contacts_api.sandbox import SandboxServer
from worker.ledger import connect, migrate
from worker.runtime import Runtime

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ROOT = Path(__file__).resolve().parent.parent


def write_config(
    path: Path,
    sandbox: SandboxServer,
    *,
    channels: tuple[str, ...] = ("main",),
    rate: tuple[int, float] = (200, 60.0),
    **worker: Any,
) -> Path:
    """A config pointing sandbox channels at it, with quick reconciling."""
    limit = {"calls": rate[0], "period_s": rate[1]}
    document = {
        "contacts_api": {"base_url": sandbox.api_url, "connect_timeout_s": 1, "read_timeout_s": 2},
        "channels": {
            name: {
                "token": sandbox.token(name),
                "platform": sandbox.state.channel(name).platform,
                "rate_limit": limit,
            }
            for name in channels
        },
        "sources": {"website": {"kind": "generic", "secret": SECRET, "channel": "main"}},
        "retry": {"base_s": 0.2, "cap_s": 1.0},
        "worker": {"lease_s": 3, "reconcile_every_s": 0.5, "republish_after_s": 2, **worker},
    }
    path.write_text(yaml.safe_dump(document))
    return path


def signed_headers(body: bytes, *, msg_id: str | None = None) -> dict[str, str]:
    """Standard Webhooks headers for ``body``, signed with :data:`SECRET` now."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time())
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(WebhookSecret.parse(SECRET), msg_id, timestamp, body),
    }


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, step: float = 0.2) -> Any:
    """Poll until ``predicate()`` is truthy; fail with a clear message after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)


class Stack:
    """One broker + ledger combination, with worker and beat processes on demand."""

    def __init__(
        self,
        tmp: Path,
        sandbox: SandboxServer,
        broker_url: str | None,
        database_url: str | None,
        **config: Any,
    ) -> None:
        self.tmp = tmp
        self.sandbox = sandbox
        self.config_path = write_config(tmp / "contactsync.yaml", sandbox, **config)
        self.env = {
            **os.environ,
            "CONTACTSYNC_CONFIG": str(self.config_path),
            "CONTACTSYNC_DATA_DIR": str(tmp / "data"),
            "CONTACTSYNC_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        for name, value in (
            ("CONTACTSYNC_BROKER_URL", broker_url),
            ("CONTACTSYNC_DATABASE_URL", database_url),
        ):
            if value:
                self.env[name] = value
            else:
                self.env.pop(name, None)
        self.settings = Settings(
            config=self.config_path,
            data_dir=tmp / "data",
            broker_url=broker_url,
            database_url=database_url,
        )
        engine = connect(self.settings.ledger_url())
        migrate(engine)
        with engine.begin() as connection:
            for table in ("outbox", "commands", "contacts", "events", "channels"):
                connection.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - fixed names
        engine.dispose()
        self.runtime = Runtime(self.settings, load_config(self.config_path))
        self.app = create_app(self.runtime)
        self.http: FlaskClient = self.app.test_client()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    # -- processes ------------------------------------------------------------------------

    def start(self, name: str, *args: str, label: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``contactsync NAME ARGS`` with this stack's settings (known as ``label``)."""
        label = label or name
        with (self.tmp / f"{label}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "webhooks.cli", name, *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        self.processes[label] = process
        return process

    def start_worker(self, concurrency: int = 2) -> subprocess.Popen[bytes]:
        """A ``contactsync worker`` process."""
        return self.start("worker", "--concurrency", str(concurrency))

    def start_beat(self) -> subprocess.Popen[bytes]:
        """A ``contactsync beat`` process (the reconciler's clock)."""
        return self.start("beat")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a process and wait for it."""
        process = self.processes.pop(name)
        process.send_signal(sig)
        process.wait(30)

    def stop(self) -> None:
        """Stop every process this stack started."""
        for name in list(self.processes):
            process = self.processes.pop(name)
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.runtime.ledger.engine.dispose()

    def log(self, name: str) -> str:
        """What a process printed."""
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- traffic --------------------------------------------------------------------------

    def post(self, event: Any, *, source: str = "website") -> Any:
        """Sign and post ``event`` (a dict or list) to the receiver; returns the response."""
        body = json.dumps(event).encode()
        return self.http.post(f"/webhooks/{source}", data=body, headers=signed_headers(body))

    def contacts(self, channel: str = "main") -> list[dict[str, Any]]:
        """The sandbox's contacts on a channel."""
        return self.sandbox.state.contacts(channel)

    def contact_by(self, field: str, value: str, channel: str = "main") -> dict[str, Any] | None:
        """The one sandbox contact whose field has this value (fails if several)."""
        found = [c for c in self.contacts(channel) if c["custom_fields"].get(field) == value]
        assert len(found) <= 1, f"{len(found)} contacts with {field}={value}"
        return found[0] if found else None

    def states(self) -> dict[str, int]:
        """Commands by state in the ledger."""
        return self.runtime.ledger.counts()

    def settled(self) -> bool:
        """Whether every command is done or dead."""
        counts = self.states()
        return counts["pending"] + counts["running"] + counts["scheduled"] == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
