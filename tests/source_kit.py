"""Test kit for vendor sources: a receiver with given sources in front of the sandbox, and
a way to apply what it recorded with the worker's own code (real HTTP to the sandbox)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient

from webhooks.app import create_app
from worker.config import Settings, load_config
from worker.contacts_api.sandbox import SandboxServer
from worker.ledger.schema import commands
from worker.runtime import Runtime
from worker.tasks import run_command


class SourceKit:
    """A receiver configured with some sources, its ledger, and the sandbox behind it."""

    def __init__(self, tmp: Path, sandbox: SandboxServer, sources: dict[str, Any]) -> None:
        document = {
            "contacts_api": {
                "base_url": sandbox.api_url,
                "connect_timeout_s": 1,
                "read_timeout_s": 2,
            },
            "channels": {
                name: {
                    "token": sandbox.token(name),
                    "platform": sandbox.state.channel(name).platform,
                }
                for name in ("main", "crm")
            },
            "sources": sources,
        }
        path = tmp / "contactsync.yaml"
        path.write_text(yaml.safe_dump(document))
        settings = Settings(config=path, data_dir=tmp / "data")
        self.sandbox = sandbox
        self.runtime = Runtime(settings, load_config(path))
        self.app = create_app(self.runtime)
        self.http: FlaskClient = self.app.test_client()

    def post(self, source: str, body: bytes, headers: dict[str, str], **kwargs: Any) -> Any:
        """POST raw bytes to ``/webhooks/<source>``."""
        return self.http.post(f"/webhooks/{source}", data=body, headers=headers, **kwargs)

    def recorded(self) -> list[dict[str, Any]]:
        """Every command in the ledger, oldest first."""
        with self.runtime.ledger.engine.connect() as connection:
            rows = connection.execute(commands.select().order_by(commands.c.id)).mappings()
            return [dict(row) for row in rows]

    def apply_all(self) -> list[str]:
        """Run every open command through the worker's code, in order; their outcomes."""
        return [
            run_command(row["id"], self.runtime)
            for row in self.recorded()
            if row["state"] in ("pending", "scheduled")
        ]

    def contact(self, field: str, value: Any, channel: str = "main") -> dict[str, Any]:
        """The one sandbox contact whose field has this value."""
        found = [
            c
            for c in self.sandbox.state.contacts(channel)
            if c["custom_fields"].get(field) == value
        ]
        assert len(found) == 1, f"{len(found)} contacts with {field}={value!r}"
        return found[0]


@pytest.fixture
def source_kit(tmp_path: Path, sandbox: SandboxServer) -> Iterator[Any]:
    """Make a :class:`SourceKit`: ``kit = source_kit({"forms": {"kind": "typeform", ...}})``."""
    made: list[SourceKit] = []

    def make(sources: dict[str, Any]) -> SourceKit:
        kit = SourceKit(tmp_path, sandbox, sources)
        made.append(kit)
        return kit

    yield make
    for kit in made:
        kit.runtime.ledger.engine.dispose()
