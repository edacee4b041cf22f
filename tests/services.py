"""Fixtures for the real services: PostgreSQL, Redis and RabbitMQ on this machine.

Each test session gets its own PostgreSQL database, Redis database number and RabbitMQ
virtual host, so runs do not see each other's data. A service that is down skips its
tests locally and fails them when ``CI`` is set.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
from sqlalchemy import Engine, text

PG_ADMIN = os.environ.get("CONTACTSYNC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = os.environ.get("CONTACTSYNC_TEST_REDIS", "redis://127.0.0.1:6379")
AMQP_HOST = os.environ.get("CONTACTSYNC_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")


LEDGER_TABLES = ("outbox", "commands", "contacts", "events")
"""The ledger's event and command tables, children first."""


def empty_ledger(engine: Engine) -> None:
    """Delete every event and command (the session's PostgreSQL database is shared)."""
    with engine.begin() as connection:
        for table in LEDGER_TABLES:
            connection.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - fixed names


def unavailable(service: str, error: BaseException) -> None:
    """Skip locally, fail in CI: a real service that is down is a failure there."""
    message = f"{service} is not reachable: {type(error).__name__}: {error}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, dropped afterwards."""
    name = f"contactsync_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as error:
        unavailable("PostgreSQL", error)
    base = PG_ADMIN.rsplit("/", 1)[0]
    yield f"postgresql+psycopg://{base.split('://', 1)[1]}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


TEST_REDIS_DBS = range(1, 9)
"""Database numbers tests may take; benchmarks and tools keep to 9-15."""


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database number of its own: an empty one, claimed with a key that expires,
    so that two test runs (or a benchmark) on this machine never share one."""
    owner = uuid.uuid4().hex
    numbers = list(TEST_REDIS_DBS)
    random.shuffle(numbers)
    for number in numbers:
        url = f"{REDIS_HOST}/{number}"
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        try:
            if client.dbsize() == 0 and client.set(
                "contactsync-test-owner", owner, nx=True, ex=3600
            ):
                break
        except redis.RedisError as error:
            unavailable("Redis", error)
        client.close()
    else:
        pytest.fail(f"no free Redis database among {list(TEST_REDIS_DBS)}")
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """A RabbitMQ virtual host of its own, deleted afterwards."""
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    vhost = f"contactsync-test-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, capture_output=True, timeout=60)
        subprocess.run(
            [ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as error:
        unavailable("RabbitMQ", error)
    yield f"{AMQP_HOST}/{vhost}"
    subprocess.run([ctl, "-q", "delete_vhost", vhost], capture_output=True, timeout=60, check=False)
