"""Submitting work: record events and their commands in the ledger, then publish a task
per new command. The receiver uses this, and so can any other Python code::

    from worker.submit import submit
    submit(runtime, "crm-import", [NewEvent(key="row-7", type="contact.upsert",
                                            payload=row, commands=[command])])

A failed publish is logged and left to the reconciler: the ledger already holds the
command, so the caller's answer need not wait for the broker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from celery import Celery

from worker.celery_app import TASK_FOR_KIND
from worker.ledger.store import Due, Ledger, NewEvent, Recorded
from worker.runtime import Runtime

log = logging.getLogger(__name__)


def queue_for(channel: str) -> str:
    """The broker queue of a channel's commands: one per channel, so that a backlog on one
    channel never sits in front of another channel's messages."""
    return f"contactsync.{channel}"


def publish(celery: Celery, commands: Iterable[Due], *, countdown: float | None = None) -> int:
    """Send one task message per command, on its channel's queue; returns how many were sent.

    Stops at the first failure: the broker is down, and the reconciler will publish the
    rest from the ledger once it is back.
    """
    sent = 0
    for command_id, kind, channel in commands:
        try:
            celery.send_task(
                TASK_FOR_KIND[kind],
                args=[command_id],
                queue=queue_for(channel),
                retry=False,
                countdown=countdown,
            )
        except Exception as error:  # any broker failure: the ledger has the command
            log.warning(
                "publish failed, the reconciler will retry: %s",
                type(error).__name__,
                extra={"command_id": command_id},
            )
            break
        sent += 1
    return sent


def record_and_publish(
    ledger: Ledger, celery: Celery, source: str, events: Sequence[NewEvent]
) -> list[Recorded]:
    """Record events in one transaction, then publish their new commands."""
    recorded = ledger.record(source, events)
    fresh = [
        Due(command_id, command.kind, command.channel)
        for event, result in zip(events, recorded, strict=True)
        if not result.duplicate
        for command_id, command in zip(result.command_ids, event.commands, strict=True)
    ]
    publish(celery, fresh)
    return recorded


def submit(runtime: Runtime, source: str, events: Sequence[NewEvent]) -> list[Recorded]:
    """The one way in for other Python code: record and publish on ``runtime``."""
    return record_and_publish(runtime.ledger, runtime.celery, source, events)
