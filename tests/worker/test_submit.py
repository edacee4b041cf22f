"""publish(): the task messages it hands a real broker (Redis) are the ones Celery's own
``send_task`` would have sent, so that any Celery worker runs them."""

from __future__ import annotations

import base64
import json
import logging
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.common import maybe_declare

from worker.celery_app import TASK_FOR_KIND, create_celery
from worker.config import Settings
from worker.ledger.store import Due
from worker.submit import PUBLISH_CHUNK, _Messages, _RedisLists, _uuid4, publish, queue_for

PER_MESSAGE = {
    "headers": {"id", "root_id", "origin", "eta"},
    "properties": {"correlation_id", "delivery_tag"},
}
"""What differs between two messages for the same command by design: ids, the sending
process, the moment."""


def celery_on(tmp_path: Path, broker_url: str) -> Any:
    """A Celery app on ``broker_url``, its queues empty (the database is the session's)."""
    redis.Redis.from_url(broker_url).delete(queue_for("main"), queue_for("other"))
    return create_celery(Settings(data_dir=tmp_path / "data", broker_url=broker_url))


def take_all(broker_url: str, queue: str) -> list[dict[str, Any]]:
    """The messages on ``queue``, oldest first, removed."""
    client = redis.Redis.from_url(broker_url)
    raw = client.lrange(queue, 0, -1)
    client.delete(queue)
    return [json.loads(message) for message in reversed(raw)]


def send_task_message(
    celery: Any, command_id: int, kind: str, channel: str, **options: Any
) -> None:
    queue = queue_for(channel)
    with celery.producer_or_acquire() as producer:
        maybe_declare(celery.amqp.queues[queue], producer.channel)
        celery.send_task(
            TASK_FOR_KIND[kind],
            args=[command_id],
            queue=queue,
            retry=False,
            producer=producer,
            argsrepr=f"[{command_id}]",
            kwargsrepr="{}",
            **options,
        )


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """The message without what differs between any two sends."""
    kept = dict(message)
    for part, keys in PER_MESSAGE.items():
        kept[part] = {key: value for key, value in message[part].items() if key not in keys}
    return kept


@pytest.mark.parametrize("kind", sorted(TASK_FOR_KIND))
def test_the_message_is_the_one_send_task_sends(tmp_path: Path, redis_url: str, kind: str) -> None:
    celery = celery_on(tmp_path, redis_url)
    send_task_message(celery, 41, kind, "main")
    assert publish(celery, [Due(41, kind, "main")]) == 1

    theirs, ours = take_all(redis_url, queue_for("main"))

    assert comparable(ours) == comparable(theirs)
    assert json.loads(base64.b64decode(ours["body"]))[0] == [41]
    assert ours["headers"]["task"] == TASK_FOR_KIND[kind]
    assert ours["headers"]["eta"] is None
    assert ours["headers"]["root_id"] == ours["headers"]["id"]
    assert ours["properties"]["correlation_id"] == ours["headers"]["id"]
    assert ours["headers"]["origin"] == theirs["headers"]["origin"]  # the same process


def test_a_countdown_becomes_the_same_eta(tmp_path: Path, redis_url: str) -> None:
    celery = celery_on(tmp_path, redis_url)
    before = datetime.now(UTC)
    send_task_message(celery, 5, "tag", "main", countdown=30.0)
    publish(celery, [Due(5, "tag", "main")], countdown=30.0)
    after = datetime.now(UTC)

    theirs, ours = take_all(redis_url, queue_for("main"))

    assert comparable(ours) == comparable(theirs)
    eta = datetime.fromisoformat(ours["headers"]["eta"])
    assert before + timedelta(seconds=30) <= eta <= after + timedelta(seconds=30)


def test_every_command_gets_its_own_message_on_its_channels_queue(
    tmp_path: Path, redis_url: str
) -> None:
    celery = celery_on(tmp_path, redis_url)
    due = [Due(n, "upsert", "main" if n % 3 else "other") for n in range(2 * PUBLISH_CHUNK + 7)]

    assert publish(celery, due) == len(due)

    for channel in ("main", "other"):
        messages = take_all(redis_url, queue_for(channel))
        ids = [json.loads(base64.b64decode(m["body"]))[0][0] for m in messages]
        assert ids == [d.id for d in due if d.channel == channel]
        assert len({m["headers"]["id"] for m in messages}) == len(messages)


def test_kombu_and_the_direct_writer_send_the_same_message(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    celery = celery_on(tmp_path, redis_url)
    publish(celery, [Due(3, "untag", "main")])
    monkeypatch.setattr(_RedisLists, "of", classmethod(lambda cls, producer, messages: None))
    publish(celery, [Due(3, "untag", "main")])

    direct, through_kombu = take_all(redis_url, queue_for("main"))

    assert comparable(direct) == comparable(through_kombu)


def test_compressed_messages_go_through_kombu_as_send_task_sends_them(
    tmp_path: Path, redis_url: str
) -> None:
    celery = celery_on(tmp_path, redis_url)
    celery.conf.task_compression = "gzip"
    with celery.producer_or_acquire() as producer:
        assert _RedisLists.of(producer, _Messages(celery, None)) is None
    send_task_message(celery, 12, "upsert", "main")
    assert publish(celery, [Due(12, "upsert", "main")]) == 1

    theirs, ours = take_all(redis_url, queue_for("main"))

    assert ours["headers"]["compression"] == "application/x-gzip"
    assert comparable(ours) == comparable(theirs)


def test_the_direct_writers_ids_are_random_uuid4s() -> None:
    ids = [_uuid4(os.urandom(16).hex()) for _ in range(2000)]

    parsed = [uuid.UUID(json.loads(quoted)) for quoted in ids]

    assert all(u.version == 4 and u.variant == uuid.RFC_4122 for u in parsed)
    assert [f'"{u}"' for u in parsed] == ids
    assert len(set(ids)) == len(ids)


def test_the_embedded_broker_takes_messages_without_a_hostname_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    celery = create_celery(Settings(data_dir=tmp_path / "data"))
    caplog.set_level(logging.WARNING)

    assert publish(celery, [Due(n, "upsert", "main") for n in (1, 2)]) == 2

    written = sorted((tmp_path / "data").rglob(f"*.{queue_for('main')}.msg"))
    assert len(written) == 2
    assert [r.getMessage() for r in caplog.records if r.name.startswith("kombu")] == []


def test_on_rabbitmq_the_messages_go_through_kombu(tmp_path: Path, rabbitmq_url: str) -> None:
    celery = create_celery(Settings(data_dir=tmp_path / "data", broker_url=rabbitmq_url))
    queue = queue_for("main")
    with celery.producer_or_acquire() as producer:
        assert _RedisLists.of(producer, _Messages(celery, None)) is None

    assert publish(celery, [Due(n, "tag", "main") for n in (4, 5)]) == 2

    with celery.connection_for_write() as connection:
        channel = connection.default_channel
        taken = [channel.basic_get(queue, no_ack=True) for _ in range(2)]
        assert channel.basic_get(queue, no_ack=True) is None
    bodies = [json.loads(message.body) for message in taken]
    assert [body[0] for body in bodies] == [[4], [5]]
    assert [message.headers["task"] for message in taken] == [TASK_FOR_KIND["tag"]] * 2
