"""``GET /metrics``: the receiver's Prometheus endpoint, and the events it counts.

Served without authentication, like most metrics endpoints: it carries counts, the names
of configured sources and channels, statuses and reasons, never a payload, a contact or a
secret. A receiver reachable from the internet should have its proxy forward only
``/webhooks/`` (docs/operations.md).

What a scrape returns:

- the counts of every process writing to this machine's multiprocess folder
  (:mod:`worker.metrics`): this receiver's gunicorn processes, and under ``contactsync up``
  the worker too; ``contactsync_events_received_total{source,outcome,status}`` is the
  receiver's own: one per event accepted or found duplicate, one per refused delivery;
- gauges read from the ledger at scrape time (:class:`LedgerCollector`): commands by
  channel and state, each channel's backlog and the age of its oldest open command, its
  limit, calls in the last minute, pause and token health, live workers. They describe
  the shared database, so only the receiver serves them, never a worker's own port.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from flask import Blueprint, Response, g, has_request_context, request
from sqlalchemy import Engine, func, select

from worker import metrics as worker_metrics
from worker.ledger.schema import OPEN_STATES, CommandState, commands
from worker.runtime import Runtime
from worker.stats import channels_view, workers_view

if TYPE_CHECKING:
    from prometheus_client import Counter
    from prometheus_client.registry import Collector, CollectorRegistry

    from worker.ledger.store import Recorded

log = logging.getLogger(__name__)

COUNTED_STATES = (*OPEN_STATES, CommandState.DEAD)
"""``done`` is left out: it only grows, so counting it would read the whole table at every
scrape; ``contactsync_commands_done_total`` counts it as it happens."""

_RECORDED = "contactsync_recorded"


_events: Counter | None = None
_events_lock = threading.Lock()


def events_received() -> Counter:
    """``contactsync_events_received_total{source,outcome,status}``."""
    global _events
    if _events is None:
        with _events_lock:  # built once, whichever request thread comes first
            if _events is None:
                from prometheus_client import Counter

                worker_metrics.series()  # the same process-wide mode and folder
                _events = Counter(
                    "events_received",
                    "Webhook events by source and outcome (accepted, duplicate: per event; "
                    "refused: per delivery) and the HTTP status answered",
                    ("source", "outcome", "status"),
                    namespace=worker_metrics.NAMESPACE,
                )
    return _events


def note_recorded(recorded: Iterable[Recorded]) -> None:
    """Remember, for this request, which events were new and which were duplicates."""
    if has_request_context():
        g.setdefault(_RECORDED, []).extend(item.duplicate for item in recorded)


def count_delivery(status: int, source: str, sources: Iterable[str]) -> None:
    """Count one answered delivery to ``/webhooks/<source>``."""
    label = source if source in sources else "unknown"  # URLs must not mint series
    duplicates: list[bool] | None = g.pop(_RECORDED, None)
    if duplicates is None:
        _series(label, "refused", status).inc()
        return
    for duplicate in duplicates:
        _series(label, "duplicate" if duplicate else "accepted", status).inc()


_children: dict[tuple[str, str, int], Any] = {}


def _series(source: str, outcome: str, status: int) -> Any:
    """The ``events_received`` child for these labels, kept once looked up: ``labels()``
    validates and locks at every call, and every delivery counts one."""
    key = (source, outcome, status)
    child = _children.get(key)
    if child is None:
        child = _children[key] = events_received().labels(source, outcome, str(status))
    return child


class LedgerCollector:
    """Gauges computed from the ledger when Prometheus scrapes: a few small queries."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Any]:
        """The gauges, or ``contactsync_ledger_up 0`` alone if the ledger did not answer."""
        from prometheus_client.core import GaugeMetricFamily

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{worker_metrics.NAMESPACE}_{name}", doc, labels=labels)

        up = gauge("ledger_up", "1 when the ledger answered this scrape's queries")
        started = time.monotonic()
        try:
            engine = self.runtime.ledger.engine
            states = command_counts(engine)
            channels = channels_view(engine, self.runtime.config)
            workers = workers_view(engine)
            outbox = self.runtime.ledger.outbox_size()
        except Exception as error:
            log.warning("metrics: ledger not read: %s", type(error).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        took = gauge("ledger_scrape_seconds", "Time the ledger queries of this scrape took")
        took.add_metric([], time.monotonic() - started)
        yield took

        by_state = gauge(
            "commands",
            "Commands in the ledger by channel and state (done is not counted)",
            ("channel", "state"),
        )
        names = sorted({*self.runtime.config.channels, *(channel for channel, _ in states)})
        for channel in names:
            for state in COUNTED_STATES:
                by_state.add_metric([channel, str(state)], states.get((channel, state), 0))
        yield by_state

        per_channel = {
            "backlog": "Open commands (pending, running, scheduled)",
            "backlog_oldest_age_seconds": "Age of the oldest open command (0 when none)",
            "channel_limit_calls": "Calls the channel's rate limit allows per period",
            "channel_limit_period_seconds": "The channel's rate-limit period",
            "channel_calls_last_minute": "Calls started in the last 60 seconds",
            "channel_paused_seconds": "Seconds left in a pause after a 429 (0 when none)",
            "channel_bad_token": "1 when the API refused the channel's token (401)",
        }
        families = {name: gauge(name, doc, ("channel",)) for name, doc in per_channel.items()}
        for view in channels:
            for name, value in (
                ("backlog", view.backlog),
                ("backlog_oldest_age_seconds", view.oldest_open_age_s or 0.0),
                ("channel_limit_calls", view.limit_calls),
                ("channel_limit_period_seconds", view.limit_period_s),
                ("channel_calls_last_minute", view.calls_last_minute),
                ("channel_paused_seconds", view.paused_for_s),
                ("channel_bad_token", int(view.bad_token)),
            ):
                families[name].add_metric([view.name], float(value))
        yield from families.values()

        alive = gauge("workers_alive", "Workers whose heartbeat is recent")
        alive.add_metric([], sum(1 for worker in workers if worker.alive))
        yield alive

        unsent = gauge("outbox", "Recorded commands whose task message no relay has published")
        unsent.add_metric([], outbox)
        yield unsent


def command_counts(engine: Engine) -> dict[tuple[str, str], int]:
    """Commands by ``(channel, state)``, for the states worth counting at every scrape."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(commands.c.channel, commands.c.state, func.count())
            .where(commands.c.state.in_(COUNTED_STATES))
            .group_by(commands.c.channel, commands.c.state)
        ).all()
    return {(row[0], row[1]): int(row[2]) for row in rows}


class _Both:
    """Collects from several collectors, as one."""

    def __init__(self, *parts: Collector) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Any]:
        for part in self.parts:
            yield from part.collect()


def scrape_registry(runtime: Runtime) -> CollectorRegistry:
    """The registry one scrape reads: the processes' counts and the ledger's gauges."""
    from prometheus_client import CollectorRegistry

    events_received()  # present (empty) before the first event
    collected = CollectorRegistry(auto_describe=False)
    ledger = cast("Collector", LedgerCollector(runtime))
    collected.register(cast("Collector", _Both(worker_metrics.registry(), ledger)))
    return collected


def metrics_blueprint(runtime: Runtime, sources: Iterable[str]) -> Blueprint:
    """``GET /metrics``, and the counting of deliveries to ``receiver.receive``."""
    blueprint = Blueprint("metrics", __name__)
    known = frozenset(sources)
    for source in known:  # from 0, so that rate() sees the first event
        events_received().labels(source, "accepted", "202")
        events_received().labels(source, "duplicate", "200")

    @blueprint.get("/metrics")
    def scrape() -> Response:
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encode(scrape_registry(runtime)), content_type=content_type)

    @blueprint.after_app_request
    def count(response: Response) -> Response:
        if request.endpoint == "receiver.receive":
            source = (request.view_args or {}).get("source", "")
            try:
                count_delivery(response.status_code, source, known)
            except Exception as error:  # counting never fails an answer
                log.warning("metrics: delivery not counted: %s", error)
        return response

    return blueprint
