"""The Celery tasks: ``upsert_contact``, ``tag_contact``, ``untag_contact`` and ``reconcile``.

Thin shells. A command task takes a command id, claims the command in the ledger (a
second delivery of the same message finds nothing to claim and returns), applies it with
the channel's client, and settles it as the retry policy says. ``reconcile`` runs on beat:
it reclaims commands whose worker died and republishes due commands whose message was
lost or that waited in the ledger (a backoff, a rate-limit pause).
"""

from __future__ import annotations

import logging
import time

from celery import shared_task

from worker.apply import Progress, apply
from worker.celery_app import RECONCILE_TASK, TASK_FOR_KIND
from worker.contacts_api import ContactsApiError, TransientError
from worker.ledger import Claimed
from worker.retry import decide
from worker.runtime import Runtime, get_runtime
from worker.submit import publish

log = logging.getLogger(__name__)


def run_command(command_id: int, runtime: Runtime | None = None) -> str:
    """Claim, apply and settle one command; returns what became of it."""
    runtime = runtime or get_runtime()
    ledger = runtime.ledger
    claimed = ledger.claim(command_id, lease_s=runtime.config.worker.lease_s)
    if claimed is None:
        log.debug("command %s: nothing to claim", command_id)
        return "skipped"
    context = {"command_id": claimed.id, "event_id": claimed.event_id, "channel": claimed.channel}
    if claimed.channel not in runtime.config.channels:
        ledger.kill(claimed, reason="unknown_channel", error=f"no channel {claimed.channel!r}")
        return "dead"
    progress = Progress()
    try:
        contact_id = apply(claimed, runtime.client(claimed.channel), progress)
    except ContactsApiError as error:
        outcome = _settle_failure(runtime, claimed, error, progress)
        log.info("command %s %s: %s", claimed.id, outcome, error.reason, extra=context)
    except Exception as error:
        # A bug or a passing fault of ours (the ledger, say): try again later, counted.
        outcome = _settle_failure(
            runtime, claimed, InternalError(f"{type(error).__name__}: {error}"[:500]), progress
        )
        log.exception("command %s failed unexpectedly", claimed.id, extra=context)
    else:
        outcome = "done" if ledger.complete(claimed, contact_id=contact_id) else "lease_lost"
        log.info("command %s %s", claimed.id, outcome, extra=context)
    if outcome in ("done", "dead"):
        _publish_next(runtime, claimed)
    return outcome


class InternalError(TransientError):
    """Something of ours failed while applying a command (a bug, a ledger blip)."""

    reason = "internal_error"


def _settle_failure(
    runtime: Runtime, claimed: Claimed, error: ContactsApiError, progress: Progress
) -> str:
    channel = runtime.config.channels[claimed.channel]
    decision = decide(
        error,
        attempts=claimed.attempts,
        policy=runtime.config.retry,
        period_s=channel.rate_limit.period_s,
    )
    ledger = runtime.ledger
    if decision.retry:
        ledger.reschedule(
            claimed,
            not_before=ledger.clock() + decision.delay_s,
            spend_attempt=decision.spend_attempt,
            reason=decision.reason,
            status=error.status,
            error=error.message,
            contact_id=progress.contact_id,
        )
        return "scheduled"
    ledger.kill(
        claimed,
        reason=decision.reason,
        status=error.status,
        error=error.message,
        contact_id=progress.contact_id,
    )
    return "dead"


def _publish_next(runtime: Runtime, claimed: Claimed) -> None:
    following = runtime.ledger.next_for_contact(claimed.channel, claimed.contact_key)
    if following is not None:
        row = runtime.ledger.command(following)
        if row is not None and publish(runtime.celery, [(following, row["kind"])]):
            runtime.ledger.mark_published([following])


@shared_task(name=TASK_FOR_KIND["upsert"], ignore_result=True)
def upsert_contact(command_id: int) -> str:
    """Create or update a contact (and add the command's tags)."""
    return run_command(command_id)


@shared_task(name=TASK_FOR_KIND["tag"], ignore_result=True)
def tag_contact(command_id: int) -> str:
    """Add tags to a contact."""
    return run_command(command_id)


@shared_task(name=TASK_FOR_KIND["untag"], ignore_result=True)
def untag_contact(command_id: int) -> str:
    """Remove tags from a contact."""
    return run_command(command_id)


def reconcile_once(runtime: Runtime | None = None) -> dict[str, int]:
    """Reclaim expired leases and republish due commands; returns the counts."""
    runtime = runtime or get_runtime()
    ledger = runtime.ledger
    started = time.monotonic()
    reclaimed = ledger.reclaim_expired(max_attempts=runtime.config.retry.max_attempts)
    due = ledger.due(republish_after_s=runtime.config.worker.republish_after_s)
    sent = publish(runtime.celery, [*reclaimed, *due])
    if reclaimed or due:
        log.info(
            "reconcile: %d reclaimed, %d due, %d published in %.0f ms",
            len(reclaimed),
            len(due),
            sent,
            (time.monotonic() - started) * 1000,
        )
    return {"reclaimed": len(reclaimed), "due": len(due), "published": sent}


@shared_task(name=RECONCILE_TASK, ignore_result=True)
def reconcile() -> dict[str, int]:
    """Beat's periodic task: see :func:`reconcile_once`."""
    return reconcile_once()
