"""What publishing one command's task message costs the relay: this process's CPU per
message, on a private ``redis-server``, for each way of writing it, side by side.

    .venv/bin/python -m ops.bench.publish [--messages 5000] [--rounds 5] [--json out.json]

Ways, in each round, in this order:

- ``send_task``: ``celery.send_task`` per message, through one producer (what the relay did
  first);
- ``kombu producer``: :func:`worker.submit.publish` through kombu's producer, in publish
  batches of 100 (what it does on RabbitMQ, or with compression);
- ``direct``: :func:`worker.submit.publish` as it runs on Redis by default, the messages
  written from a template, one ``LPUSH`` per queue per chunk.

Each publishes ``--messages`` commands in calls of 500 (the relay's batch), over two
channels; the queues are emptied between runs. The figure is the median over the rounds.
Needs ``redis-server`` on the path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import redis
from celery import Celery
from kombu.common import maybe_declare

from ops.bench.common import flush_redis, private_redis, say
from worker import submit
from worker.celery_app import TASK_FOR_KIND, create_celery
from worker.config import Settings
from worker.contacts_api.limits import chunks
from worker.ledger.store import Due

BATCH = 500
"""Commands per publish call: the relay's default batch (``worker.relay_batch``)."""


def send_task_each(celery: Celery, due: Sequence[Due]) -> None:
    with celery.producer_or_acquire() as producer:
        for command_id, kind, channel in due:
            queue = submit.queue_for(channel)
            maybe_declare(celery.amqp.queues[queue], producer.channel)  # type: ignore[no-untyped-call]
            celery.send_task(
                TASK_FOR_KIND[kind],
                args=[command_id],
                queue=queue,
                retry=False,
                producer=producer,
                argsrepr=f"[{command_id}]",
                kwargsrepr="{}",
            )


@contextmanager
def through_kombu() -> Iterator[None]:
    """:func:`worker.submit.publish` with its Redis writer turned off."""
    direct = submit._RedisLists.of
    submit._RedisLists.of = classmethod(lambda cls, producer, messages: None)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        submit._RedisLists.of = direct  # type: ignore[method-assign]


def kombu_producer(celery: Celery, due: Sequence[Due]) -> None:
    with through_kombu():
        sent = submit.publish(celery, due)
    assert sent == len(due), f"kombu producer sent {sent} of {len(due)}"


def direct(celery: Celery, due: Sequence[Due]) -> None:
    sent = submit.publish(celery, due)
    assert sent == len(due), f"direct sent {sent} of {len(due)}"


WAYS: dict[str, Callable[[Celery, Sequence[Due]], None]] = {
    "send_task": send_task_each,
    "kombu producer": kombu_producer,
    "direct": direct,
}


def cpu_per_message_us(
    way: Callable[[Celery, Sequence[Due]], None], celery: Celery, due: Sequence[Due], url: str
) -> float:
    """This process's CPU per message while ``way`` publishes ``due``, µs; checks that the
    broker got them all."""
    flush_redis(url)
    started = time.process_time()
    for batch in chunks(due, BATCH):
        way(celery, batch)
    spent = time.process_time() - started
    client = redis.Redis.from_url(url)
    try:
        queued = sum(int(client.llen(submit.queue_for(c))) for c in ("main", "other"))
    finally:
        client.close()
    assert queued == len(due), f"the broker holds {queued} of {len(due)} messages"
    return 1e6 * spent / len(due)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="per way and round (5000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (5)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    due = [
        Due(n, ("upsert", "tag", "untag")[n % 3], "main" if n % 4 else "other")
        for n in range(1, args.messages + 1)
    ]
    figures: dict[str, list[float]] = {name: [] for name in WAYS}
    with (
        tempfile.TemporaryDirectory(prefix="contactsync-publish-") as folder,
        private_redis(Path(folder)) as url,
    ):
        celery = create_celery(Settings(data_dir=Path(folder) / "data", broker_url=url))
        for way in WAYS.values():  # warm-up: imports, connections, declarations
            way(celery, due[:BATCH])
        for number in range(1, args.rounds + 1):
            for name, way in WAYS.items():
                figures[name].append(cpu_per_message_us(way, celery, due, url))
            say(
                f"  round {number}: "
                + ", ".join(f"{name} {values[-1]:.1f} µs" for name, values in figures.items())
            )
        celery.close()
    print(f"\nCPU per message, median of {args.rounds} rounds of {args.messages} messages:\n")
    print("| way | µs/message | rounds |")
    print("|---|---:|---|")
    for name, values in figures.items():
        spread = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {statistics.median(values):.1f} | {spread} |")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
