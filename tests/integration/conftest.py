"""Fixtures for the pipeline on its three stacks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stack import Stack

from worker.contacts_api.sandbox import SandboxServer

STACKS = ["embedded-sqlite", "redis-postgresql", "rabbitmq-postgresql"]


@pytest.fixture(params=STACKS)
def stack(
    request: pytest.FixtureRequest, tmp_path: Path, sandbox: SandboxServer
) -> Iterator[Stack]:
    """A stack with a worker and beat running, on each broker + ledger combination."""
    built = build_stack(request, request.param, tmp_path, sandbox)
    built.start_worker()
    built.start_beat()
    yield built
    built.stop()


def build_stack(
    request: pytest.FixtureRequest,
    kind: str,
    tmp_path: Path,
    sandbox: SandboxServer,
    **config: Any,
) -> Stack:
    """A stack of ``kind`` with no processes started."""
    broker, database = None, None
    if kind.startswith("redis"):
        broker = request.getfixturevalue("redis_url")
    elif kind.startswith("rabbitmq"):
        broker = request.getfixturevalue("rabbitmq_url")
    if kind.endswith("postgresql"):
        database = request.getfixturevalue("postgres_url")
    return Stack(tmp_path, sandbox, broker, database, **config)


@pytest.fixture
def redis_stack(
    request: pytest.FixtureRequest, tmp_path: Path, sandbox: SandboxServer
) -> Iterator[Stack]:
    """Redis + PostgreSQL, with no processes started."""
    built = build_stack(request, "redis-postgresql", tmp_path, sandbox)
    yield built
    built.stop()


@pytest.fixture
def embedded_stack(
    request: pytest.FixtureRequest, tmp_path: Path, sandbox: SandboxServer
) -> Iterator[Stack]:
    """Embedded broker + SQLite, with no processes started."""
    built = build_stack(request, "embedded-sqlite", tmp_path, sandbox)
    yield built
    built.stop()
