"""The relay: from the ledger's outbox to a real broker (Redis), on PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from services import empty_ledger

from worker.commands import ContactRef, make_command
from worker.config import Settings, load_config
from worker.ledger.store import NewEvent
from worker.relay import Relay, RelayStalled
from worker.runtime import Runtime
from worker.submit import queue_for, record


def runtime_on(tmp_path: Path, database_url: str, broker_url: str) -> Runtime:
    path = tmp_path / "contactsync.yaml"
    path.write_text(yaml.safe_dump({"channels": {"main": {"token": "t"}, "other": {"token": "t"}}}))
    settings = Settings(
        config=path, data_dir=tmp_path / "data", database_url=database_url, broker_url=broker_url
    )
    return Runtime(settings, load_config(path))


def emptied(runtime: Runtime) -> Runtime:
    empty_ledger(runtime.ledger.engine)
    return runtime


@pytest.fixture
def runtime(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Runtime]:
    built = emptied(runtime_on(tmp_path, postgres_url, redis_url))
    redis.Redis.from_url(redis_url).delete(queue_for("main"), queue_for("other"))
    yield built
    built.ledger.engine.dispose()


def record_events(runtime: Runtime, count: int, *, channel: str = "main") -> list[int]:
    ids = []
    for n in range(count):
        ref = ContactRef(match_field="email", match_value=f"p{n}@example.com")
        command = make_command("tag", channel, ref, tags=["vip"])
        event = NewEvent(f"{channel}-{n}", "contact.tag", {"n": n}, [command])
        ids += record(runtime.ledger, "test", [event])[0].command_ids
    return ids


def queued_ids(broker_url: str, channel: str) -> list[int]:
    """Command ids of the task messages waiting on a channel's queue, oldest first."""
    client = redis.Redis.from_url(broker_url)
    messages = [json.loads(raw) for raw in reversed(client.lrange(queue_for(channel), 0, -1))]
    return [json.loads(_body(message))[0][0] for message in messages]


def _body(message: dict[str, object]) -> bytes:
    import base64

    return base64.b64decode(str(message["body"]))


def test_run_once_publishes_each_recorded_command_on_its_channels_queue(
    runtime: Runtime, redis_url: str
) -> None:
    main = record_events(runtime, 5)
    other = record_events(runtime, 2, channel="other")
    relay = Relay(runtime, batch=4)
    assert relay.run_once() == 4  # a full batch: the outbox's oldest rows
    assert relay.drain() == 3
    assert queued_ids(redis_url, "main") == main
    assert queued_ids(redis_url, "other") == other
    assert runtime.ledger.outbox_size() == 0
    assert relay.run_once() == 0  # nothing is published twice
    assert relay.published == 7


def test_with_the_broker_down_every_row_waits_for_it(tmp_path: Path, postgres_url: str) -> None:
    down = emptied(runtime_on(tmp_path, postgres_url, "redis://127.0.0.1:1/0"))  # no one there
    try:
        ids = record_events(down, 3)
        with pytest.raises(RelayStalled, match="0 of 3"):
            Relay(down).run_once()
        assert down.ledger.outbox_size() == len(ids) == 3
    finally:
        down.ledger.engine.dispose()


def test_the_thread_publishes_what_arrives_and_stops(runtime: Runtime, redis_url: str) -> None:
    relay = Relay(runtime, every_s=0.02).start()
    try:
        ids = record_events(runtime, 3)
        deadline = time.monotonic() + 10
        while runtime.ledger.outbox_size() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert queued_ids(redis_url, "main") == ids
    finally:
        relay.stop()
    assert relay._thread is not None and not relay._thread.is_alive()
