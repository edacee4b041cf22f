"""Shared fixtures: the Contacts API sandbox served over real HTTP, and clients for it.

One sandbox server runs for the whole session (``sandbox_server``); the ``sandbox`` fixture
hands it to a test with its state reset. Tests driven by hypothesis take ``sandbox_server``
and call ``sandbox_server.state.reset()`` in each example instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from worker.contacts_api import ContactsClient
from worker.contacts_api.sandbox import SandboxChannel, SandboxConfig, SandboxServer

CRM_FIELDS = frozenset({"customerid", "isLead", "hubspot_id"})

SANDBOX_CHANNELS = (
    SandboxChannel(token="sandbox-crm-token", name="crm", custom_fields=CRM_FIELDS),
)
"""Channels added to the demo ones (``main`` on WhatsApp, ``viber`` on Viber)."""

pytest_plugins = ["services", "source_kit"]

FAST_TIMEOUT = (1.0, 2.0)


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    """The sandbox, serving for the whole session on an ephemeral port."""
    config = SandboxConfig.demo(seed=20240601).with_channels(*SANDBOX_CHANNELS)
    with SandboxServer(config) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[SandboxServer]:
    """The sandbox with fresh state: configured channels and limits, no faults or contacts."""
    sandbox_server.state.reset()
    yield sandbox_server
    sandbox_server.state.reset()


def sandbox_client(server: SandboxServer, channel: str = "main", **options: Any) -> ContactsClient:
    """A client for one sandbox channel, with short timeouts unless told otherwise."""
    settings = server.state.channel(channel)
    options.setdefault("timeout", FAST_TIMEOUT)
    options.setdefault("platform", settings.platform)
    return ContactsClient(server.api_url, settings.token, **options)


@pytest.fixture
def client_for(sandbox: SandboxServer) -> Iterator[Callable[..., ContactsClient]]:
    """Make clients for sandbox channels: ``client_for("viber", timeout=(1, 0.5))``."""
    made: list[ContactsClient] = []

    def make(channel: str = "main", **options: Any) -> ContactsClient:
        client = sandbox_client(sandbox, channel, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
