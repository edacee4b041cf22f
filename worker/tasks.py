"""The Celery tasks: ``upsert_contact``, ``tag_contact``, ``untag_contact`` and ``reconcile``.

Thin shells. A command task takes a command id, claims the command in the ledger (a
second delivery of the same message finds nothing to claim and returns), reserves the
channel's rate-limit starts for its calls, applies it with the channel's client, and
settles it as the retry policy says. A command whose start is far away goes back to the
ledger holding its starts (no attempt spent) and frees the worker. ``reconcile`` runs on
beat: it reclaims commands whose worker died and republishes due commands whose message
was lost or that waited in the ledger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown

from worker import activity, merge, metrics
from worker.apply import NoSuchContact, Progress, apply, prepare
from worker.celery_app import RECONCILE_TASK, TASK_FOR_KIND
from worker.contacts_api import (
    ContactsApiError,
    PermanentError,
    RateLimited,
    TransientError,
    Unauthorized,
)
from worker.ledger import Claimed
from worker.ledger.store import Due
from worker.logs import log_context
from worker.ratelimit import Deferred, Limit, Pacer
from worker.retry import decide
from worker.runtime import Runtime, get_runtime
from worker.submit import publish

log = logging.getLogger(__name__)


class InternalError(TransientError):
    """Something of ours failed while applying a command (a bug, a ledger blip)."""

    reason = "internal_error"


class RateLimitedTooLong(TransientError):
    """Refused with 429 for longer than the configured horizon."""

    reason = "rate_limited_too_long"


def channel_limit(runtime: Runtime, channel: str) -> Limit:
    """The channel's limit as the limiter takes it."""
    spec = runtime.config.channels[channel].rate_limit
    return Limit(spec.calls, spec.period_s, spec.margin_s)


def run_command(command_id: int, runtime: Runtime | None = None) -> str:
    """Claim a command (and the ones waiting behind it for the same contact), pace, apply
    and settle them; returns what became of the claimed command."""
    runtime = runtime or get_runtime()
    ledger = runtime.ledger
    lease_s = runtime.config.worker.lease_s
    head = ledger.claim(command_id, lease_s=lease_s)
    if head is None:
        log.debug("command %s: nothing to claim", command_id)
        return "skipped"
    if head.channel not in runtime.config.channels:
        ledger.kill(head, reason="unknown_channel", error=f"no channel {head.channel!r}")
        metrics.dead_letter(head.channel, "unknown_channel")
        return "dead"
    # A pass interrupted by a far start resumes alone: what it applied is recorded against
    # its own group, which did not include commands that arrived since.
    resuming = bool(head.done_steps)
    followers = [] if resuming else ledger.claim_followers(head, merge.mergeable, lease_s=lease_s)
    group = [head, *followers]
    with log_context(command_id=head.id, event_id=head.event_id, channel=head.channel):
        outcome = _run_group(runtime, group)
        if outcome == "retry_alone":
            # A permanent refusal in a merged pass: find whose it is by going one at a time
            # (looking the contact up: the merged pass may have created it).
            outcome = _run_group(runtime, [replace(head, absent_at=None)])
    if outcome in ("done", "dead"):
        _publish_next(runtime, head)
    return outcome


def _run_group(runtime: Runtime, group: list[Claimed]) -> str:
    head = group[0]
    ledger = runtime.ledger
    context = {"command_id": head.id, "event_id": head.event_id, "channel": head.channel}
    work = prepare(group, ledger, not_found_trust_s=runtime.config.worker.not_found_trust_s)
    limit = channel_limit(runtime, head.channel)
    estimate = work.estimate_calls()
    # The pass's calls wait for each other's answers: its starts are spaced by a call's time.
    spacing = runtime.call_times.spacing(head.channel, limit)
    if head.slots and head.slots_epoch is not None:
        # Held from an earlier claim: keep them, and reserve the rest of the pass behind.
        more = runtime.limiter.reserve(
            head.channel,
            max(estimate - len(head.slots), 0),
            limit,
            spacing_s=spacing,
            after=head.slots[-1],
        )
        voided = more.epoch != head.slots_epoch  # a pause since: the held starts are void
        starts = more.starts if voided else [*head.slots, *more.starts]
        epoch = more.epoch
    else:
        reservation = runtime.limiter.reserve(head.channel, estimate, limit, spacing_s=spacing)
        starts, epoch = reservation.starts, reservation.epoch
    pacer = Pacer(
        runtime.limiter,
        head.channel,
        limit,
        starts,
        epoch,
        inline_max_s=runtime.config.worker.inline_wait_max_s,
        tolerance_s=limit.margin_s / 2,
        spacing_s=spacing,
        call_times=runtime.call_times,
    )
    client = runtime.client(head.channel)
    keep_lease = _lease_keeper(runtime, group)
    pacer.keepalive = keep_lease

    def before_call() -> None:
        keep_lease()
        pacer()

    client.before_call = before_call
    metrics.watch(client, head.channel)  # counts every answer by status
    progress = Progress(contact_id=None, done=set(head.done_steps))
    refused = False
    outcome = "unsettled"
    try:
        contact_id = apply(work, client, ledger, progress)
    except LeaseLost:
        pacer.release()
        log.warning("command %s: lease lost mid-pass; its new holder will finish it", head.id)
        return "lease_lost"
    except Deferred as deferred:
        ledger.release(group[1:])  # they wait behind the head again
        outcome = _defer(runtime, head, deferred, pacer, progress)
        log.debug("command %s deferred: %s", head.id, deferred, extra=context)
        return outcome
    except PermanentError as error:
        pacer.release()
        if len(group) > 1 and not isinstance(error, NoSuchContact | Unauthorized):
            # The refusal belongs to one request of the merged pass; whose is unknown.
            ledger.release(group[1:])
            log.info("command %s: merged pass refused (%s); one at a time", head.id, error.reason)
            return "retry_alone"
        outcome = _settle_failure(runtime, group, error, progress)
        log.info("command %s %s: %s", head.id, outcome, error.reason, extra=context)
    except ContactsApiError as error:
        pacer.release()
        refused = isinstance(error, RateLimited)
        outcome = _settle_failure(runtime, group, error, progress)
        log.info("command %s %s: %s", head.id, outcome, error.reason, extra=context)
    except Exception as error:
        pacer.release()
        # A bug or a passing fault of ours (the ledger, say): try again later, counted.
        failure = InternalError(f"{type(error).__name__}: {error}"[:500])
        outcome = _settle_failure(runtime, group, failure, progress)
        log.exception("command %s failed unexpectedly", head.id, extra=context)
    else:
        pacer.release()
        outcome = "done" if ledger.complete(group, contact_id=contact_id) else "lease_lost"
        runtime.limiter.clear_bad_token(head.channel)
        log.info(
            "command %s %s (%d merged, %d calls)",
            head.id,
            outcome,
            len(group),
            pacer.calls,
            extra=context,
        )
    finally:
        client.before_call = None
        settled = len(group) if outcome in ("done", "dead") else 0
        _note(runtime, head.channel, pacer.calls, refused, settled)
        metrics.observe_pass(head.channel, outcome, len(group), pacer.waited_s)
    return outcome


class LeaseLost(Exception):
    """The reconciler gave the commands to another worker while this one was slow."""


def _lease_keeper(runtime: Runtime, group: list[Claimed]) -> Callable[[], None]:
    """Renew the pass's lease when a third of it has gone (a slow API or a long wait for a
    start must not let a second worker take the commands mid-pass); raise
    :class:`LeaseLost` when it was lost anyway."""
    lease_s = runtime.config.worker.lease_s
    renewed = [time.monotonic()]

    def keep() -> None:
        if time.monotonic() - renewed[0] > lease_s / 3:
            if not runtime.ledger.renew(group, lease_s=lease_s):
                raise LeaseLost(f"command {group[0].id}: lease lost")
            renewed[0] = time.monotonic()

    return keep


def _note(runtime: Runtime, channel: str, calls: int, refused: bool, settled: int) -> None:
    """Count the pass for operators (the dashboard, ``status``); never fails the task."""
    try:
        activity.record_calls(
            runtime.ledger.engine, channel, calls=calls, rate_limited=int(refused)
        )
        if _heartbeat is not None and settled:
            _heartbeat.count(settled)
    except Exception as error:
        log.warning("could not record activity: %s", type(error).__name__)


_heartbeat: activity.Heartbeat | None = None


@worker_ready.connect
def _start_heartbeat(**_: object) -> None:
    global _heartbeat
    _heartbeat = activity.Heartbeat(get_runtime().ledger.engine).start()


@worker_shutdown.connect
def _stop_heartbeat(**_: object) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


def _defer(
    runtime: Runtime, claimed: Claimed, deferred: Deferred, pacer: Pacer, progress: Progress
) -> str:
    """Back to the ledger until shortly before its start, holding its starts."""
    settings = runtime.config.worker
    wait = deferred.start - deferred.now
    # Found absent and not created yet: the next pass can create without looking again.
    absent_at = progress.absent_at if progress.contact_id is None else None
    local_now = time.time()  # the ledger's clock; the start is on the limiter's
    countdown: float | None = None
    if wait <= settings.countdown_max_s:  # sent back now, delivered shortly before its start
        countdown = max(0.0, wait - settings.lead_s)
        not_before = published_at = local_now + countdown
    else:  # waits in the ledger; the reconciler publishes it in time
        not_before, published_at = local_now + wait - settings.countdown_max_s / 2, None
    runtime.ledger.reschedule(
        claimed,
        not_before=not_before,
        spend_attempt=False,
        contact_id=progress.contact_id,
        slots=pacer.unused(),
        slots_epoch=pacer.epoch,
        done_steps=sorted(progress.done),
        absent_at=absent_at,
        published_at=published_at,
        rate_limited_since=claimed.rate_limited_since,
    )
    if countdown is not None:
        publish(
            runtime.celery, [Due(claimed.id, claimed.kind, claimed.channel)], countdown=countdown
        )
    return "deferred"


def _settle_failure(
    runtime: Runtime, group: list[Claimed], error: ContactsApiError, progress: Progress
) -> str:
    claimed = group[0]
    channel = runtime.config.channels[claimed.channel]
    ledger = runtime.ledger
    now = ledger.clock()
    rate_limited_since = None
    if isinstance(error, RateLimited):
        rate_limited_since = claimed.rate_limited_since or now
        if now - rate_limited_since > runtime.config.retry.rate_limited_horizon_s:
            error = RateLimitedTooLong(f"refused with 429 since {rate_limited_since:.0f}: {error}")
    if isinstance(error, Unauthorized):
        runtime.limiter.flag_bad_token(claimed.channel, error.message)
    decision = decide(
        error,
        attempts=claimed.attempts,
        policy=runtime.config.retry,
        period_s=channel.rate_limit.period_s,
    )
    metrics.failed(claimed.channel, error, decision, len(group))
    if isinstance(error, RateLimited):
        # The whole channel stops, not just this command: every worker on the token waits.
        runtime.limiter.pause(claimed.channel, decision.delay_s)
    delay_s = decision.delay_s
    if progress.create_uncertain:
        # The API may still apply the create it did not answer: look again only once that
        # would have happened, or the lookup misses it and the contact is created twice.
        api = runtime.config.contacts_api
        delay_s = max(delay_s, 3 * (api.connect_timeout_s + api.read_timeout_s))
    if decision.retry:
        ledger.reschedule(
            group,
            not_before=now + delay_s,
            spend_attempt=decision.spend_attempt,
            reason=decision.reason,
            status=error.status,
            error=error.message,
            contact_id=progress.contact_id,
            rate_limited_since=rate_limited_since,
        )
        return "scheduled"
    ledger.kill(
        group,
        reason=decision.reason,
        status=error.status,
        error=error.message,
        contact_id=progress.contact_id,
        spend_attempt=decision.spend_attempt,
    )
    return "dead"


def _publish_next(runtime: Runtime, claimed: Claimed) -> None:
    following = runtime.ledger.next_for_contact(claimed.channel, claimed.contact_key)
    if following is not None:
        row = runtime.ledger.command(following)
        due = [Due(following, row["kind"], claimed.channel)] if row is not None else []
        if due and publish(runtime.celery, due):
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
    activity.prune(ledger.engine)
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
