"""Submitting work: record events and their commands in the ledger; and publishing the
task message of a command. The receiver records, and so can any other Python code::

    from worker.submit import submit
    submit(runtime, "crm-import", [NewEvent(key="row-7", type="contact.upsert",
                                            payload=row, commands=[command])])

Recording writes each new command's outbox row in the same transaction; the relay in every
worker publishes from the outbox (worker/relay.py), so the caller's answer waits for the
ledger's commit and never for the broker. :func:`publish` is what the relay, the reconciler
and replays send with; a failed publish is logged and the command left in the ledger.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.utils import uuid
from celery.utils.nodenames import anon_nodename
from kombu.common import maybe_declare
from kombu.entity import maybe_delivery_mode
from kombu.messaging import Producer

from worker.celery_app import TASK_FOR_KIND
from worker.contacts_api.limits import chunks
from worker.ledger.store import Due, Ledger, NewEvent, Recorded
from worker.runtime import Runtime

log = logging.getLogger(__name__)


def queue_for(channel: str) -> str:
    """The broker queue of a channel's commands: one per channel, so that a backlog on one
    channel never sits in front of another channel's messages."""
    return f"contactsync.{channel}"


PUBLISH_CHUNK = 100
"""Messages handed to the broker together (a Redis pipeline: one round trip for them)."""


def publish(celery: Celery, commands: Sequence[Due], *, countdown: float | None = None) -> int:
    """Send one task message per command, on its channel's queue; returns how many were sent.

    Stops at the first failure: the broker is down, and the reconciler will publish the
    rest from the ledger once it is back.

    The messages go in chunks of :data:`PUBLISH_CHUNK` through one producer, each chunk as
    a kombu publish batch (on Redis, one pipelined round trip; on RabbitMQ, publishing is
    not batched and stays as it was). A chunk that fails counts as not sent, though the
    broker may hold some of it: those commands are published again, and a second message
    for a command is harmless (the ledger's claim lets one through). Each queue is declared
    once per chunk (kombu remembers it per connection) rather than bound and checked for
    every message. Each message is the one ``celery.send_task`` would send (:class:`_Messages`),
    made without its per-message routing, option merging and result bookkeeping.
    """
    sent = 0
    try:
        messages = _Messages(celery, countdown)
        with celery.producer_or_acquire() as producer:
            direct = _RedisLists.of(producer, messages)
            for chunk in chunks(commands, PUBLISH_CHUNK):
                for queue in {queue_for(channel) for _, _, channel in chunk}:
                    maybe_declare(celery.amqp.queues[queue], producer.channel)  # type: ignore[no-untyped-call]
                if direct is not None:
                    direct.push(chunk)
                else:
                    with producer.batch(max_size=len(chunk)):
                        for command_id, kind, channel in chunk:
                            messages.publish(producer, command_id, kind, queue_for(channel))
                sent += len(chunk)
    except Exception as error:  # any broker failure: the ledger has the commands
        log.warning(
            "publish failed after %d sent, the rest left in the ledger: %s",
            sent,
            type(error).__name__,
        )
    return sent


class _Messages:
    """Task messages for one :func:`publish` call, as ``celery.send_task(name, args=[id],
    queue=q, argsrepr=..., kwargsrepr="{}", countdown=...)`` makes them: Celery's message
    protocol 2, built by ``celery.amqp.as_task_v2`` (what ``send_task`` builds with), sent
    on the default exchange with the queue's name as routing key, persistent, serialized as
    the app's ``task_serializer`` says.

    What ``send_task`` does around that for each message, and what is done once here
    instead: finding the task's options and routing its queue (every task here goes to its
    channel's queue, named in the call), the node name of the message's ``origin`` (one per
    process), and the result object it returns (results are ignored). Nothing here inherits
    a parent task's ids: the relay and the reconciler are not tasks, and a command's message
    has no parent. tests/worker/test_submit.py checks that the broker receives the same
    message from both.
    """

    def __init__(self, celery: Celery, countdown: float | None) -> None:
        self._amqp = celery.amqp
        self._countdown = countdown
        self._reply_to = celery.thread_oid
        self._origin = anon_nodename()
        conf = celery.conf
        self.serializer: str = conf.task_serializer
        self.compression: str | None = conf.task_compression
        mode = conf.task_default_delivery_mode
        self.delivery_mode: int = maybe_delivery_mode(mode)  # type: ignore[no-untyped-call]

    def build(
        self, task_id: str, kind: str, command_id: int
    ) -> tuple[dict[str, Any], dict[str, Any], Any]:
        """The headers, properties and body (unserialized) of one command's message."""
        headers, properties, body, _ = self._amqp.as_task_v2(
            task_id,
            TASK_FOR_KIND[kind],
            args=[command_id],
            kwargs={},
            countdown=self._countdown,
            reply_to=self._reply_to,
            origin=self._origin,
            ignore_result=None,
            argsrepr=f"[{command_id}]",
            kwargsrepr="{}",
        )
        return headers, properties, body

    def publish(self, producer: Producer, command_id: int, kind: str, queue: str) -> None:
        """Hand one command's message to ``producer``."""
        argsrepr = f"[{command_id}]"
        headers, properties, body = self.build(uuid(), kind, command_id)
        producer.publish(  # type: ignore[no-untyped-call]
            body,
            exchange="",
            routing_key=queue,
            serializer=self.serializer,
            compression=self.compression,
            retry=False,
            delivery_mode=self.delivery_mode,
            declare=[],
            headers=headers,
            argsrepr=argsrepr,
            kwargsrepr="{}",
            **properties,
        )


class _RedisLists:
    """On Redis, the messages :class:`_Messages` makes, written as kombu's Redis transport
    writes them (a JSON envelope with the body in base64, pushed onto the queue's list), for
    a fraction of the relay's CPU per message (docs/benchmarks.md, "Ingest"): kombu spends
    most of it on per-message bookkeeping (the producer's and the channel's preparation,
    serializer look-ups, one command and one reply per message in the pipeline).

    The envelope is Celery's own (``as_task_v2``) and kombu's, made once per :func:`publish`
    call into a text template whose blanks are what differs between the messages of two
    commands: the task, its id, the argument, the queue, the delivery tag. Each chunk's
    messages go as one ``LPUSH`` per queue, in order (the list's tail, where workers take
    from, gets the first), in one pipelined round trip.

    Used only where kombu itself would do no more than that: JSON messages, no compression,
    no queue with an expiry; anywhere else :func:`publish` goes through kombu's producer.
    tests/worker/test_submit.py checks that the broker receives what ``send_task`` sends.
    """

    def __init__(self, channel: Any, messages: _Messages) -> None:
        self._channel = channel
        headers, properties, body = messages.build(_BLANK.format("id"), "upsert", 0)
        headers.update(
            task=_BLANK.format("task"),
            root_id=_BLANK.format("id"),
            argsrepr=_BLANK.format("argsrepr"),
        )
        envelope = {
            "body": _BLANK.format("body"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "argsrepr": _BLANK.format("argsrepr"),
                "kwargsrepr": "{}",
                **properties,
                "correlation_id": _BLANK.format("id"),
                "delivery_mode": messages.delivery_mode,
                "delivery_info": {"exchange": "", "routing_key": _BLANK.format("queue")},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": _BLANK.format("tag"),
            },
        }
        text = json.dumps(envelope).replace("{", "{{").replace("}", "}}")
        self._template = re.sub(r'"\\u0000(\w+)\\u0000"', r"{\1}", text)
        """The envelope as JSON text, each blank a ``str.format`` field taking JSON."""
        self._rest = json.dumps(body[1:])[1:]
        """The body's JSON after its arguments (its keyword arguments and embedded options)."""

    @classmethod
    def of(cls, producer: Producer, messages: _Messages) -> _RedisLists | None:
        """The direct writer for ``producer``'s channel, or ``None`` where kombu must write."""
        channel = producer.channel
        connection = getattr(channel.connection, "client", None)  # kombu's, on any transport
        if (
            getattr(getattr(connection, "transport", None), "driver_type", None) != "redis"
            or messages.serializer != "json"
            or messages.compression is not None
            or getattr(channel, "_expires", None)
        ):
            return None
        return cls(channel, messages)

    def push(self, chunk: Sequence[Due]) -> None:
        """Push each command's message onto its channel's queue, in one round trip."""
        by_queue: dict[str, list[str]] = {}
        for command_id, kind, channel in chunk:
            queue = queue_for(channel)
            by_queue.setdefault(queue, []).append(self._envelope(command_id, kind, queue))
        with self._channel.conn_or_acquire() as client:
            pipeline = client.pipeline(transaction=False)
            for queue, envelopes in by_queue.items():
                pipeline.lpush(queue, *envelopes)
            pipeline.execute()

    def _envelope(self, command_id: int, kind: str, queue: str) -> str:
        random = os.urandom(32).hex()
        body = f"[[{command_id}], {self._rest}".encode()
        return self._template.format(
            task=_TASK_JSON[kind],
            id=_uuid4(random[:32]),
            argsrepr=f'"[{command_id}]"',
            body=f'"{base64.b64encode(body).decode()}"',
            queue=json.dumps(queue),
            tag=_uuid4(random[32:]),
        )


_TASK_JSON = {kind: json.dumps(task) for kind, task in TASK_FOR_KIND.items()}
"""Each kind's task name, as JSON text for :class:`_RedisLists`' template."""

_BLANK = "\0{}\0"
"""A blank of :class:`_RedisLists`' template (a NUL on each side, which no value has)."""


def _uuid4(hexdigits: str) -> str:
    """A random UUID (version 4) from 32 random hex digits, quoted for JSON: what
    ``str(uuid.uuid4())`` gives, for a fraction of its cost."""
    h = hexdigits
    variant = "89ab"[int(h[16], 16) & 3]
    return f'"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"'


def record(ledger: Ledger, source: str, events: Sequence[NewEvent]) -> list[Recorded]:
    """Record events and their commands in one transaction. Each new command's outbox row
    is part of it: a worker's relay publishes the command's task message (worker/relay.py)."""
    return ledger.record(source, events)


def submit(runtime: Runtime, source: str, events: Sequence[NewEvent]) -> list[Recorded]:
    """The one way in for other Python code: record on ``runtime``'s ledger; the relay
    publishes."""
    return record(runtime.ledger, source, events)
