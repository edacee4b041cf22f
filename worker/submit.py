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

import logging
from collections.abc import Sequence

from celery import Celery
from celery.utils import uuid
from celery.utils.nodenames import anon_nodename
from kombu.common import maybe_declare
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
            for chunk in chunks(commands, PUBLISH_CHUNK):
                with producer.batch(max_size=len(chunk)):
                    for queue in {queue_for(channel) for _, _, channel in chunk}:
                        maybe_declare(celery.amqp.queues[queue], producer.channel)  # type: ignore[no-untyped-call]
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
        self._serializer = conf.task_serializer
        self._compression = conf.task_compression
        self._delivery_mode = conf.task_default_delivery_mode

    def publish(self, producer: Producer, command_id: int, kind: str, queue: str) -> None:
        """Hand one command's message to ``producer``."""
        task_id = uuid()
        argsrepr = f"[{command_id}]"
        headers, properties, body, _ = self._amqp.as_task_v2(
            task_id,
            TASK_FOR_KIND[kind],
            args=[command_id],
            kwargs={},
            countdown=self._countdown,
            reply_to=self._reply_to,
            origin=self._origin,
            ignore_result=None,
            argsrepr=argsrepr,
            kwargsrepr="{}",
        )
        producer.publish(  # type: ignore[no-untyped-call]
            body,
            exchange="",
            routing_key=queue,
            serializer=self._serializer,
            compression=self._compression,
            retry=False,
            delivery_mode=self._delivery_mode,
            declare=[],
            headers=headers,
            argsrepr=argsrepr,
            kwargsrepr="{}",
            **properties,
        )


def record(ledger: Ledger, source: str, events: Sequence[NewEvent]) -> list[Recorded]:
    """Record events and their commands in one transaction. Each new command's outbox row
    is part of it: a worker's relay publishes the command's task message (worker/relay.py)."""
    return ledger.record(source, events)


def submit(runtime: Runtime, source: str, events: Sequence[NewEvent]) -> list[Recorded]:
    """The one way in for other Python code: record on ``runtime``'s ledger; the relay
    publishes."""
    return record(runtime.ledger, source, events)
