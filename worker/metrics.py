"""Prometheus metrics of the queue side, counted as the work happens.

Series (all ``contactsync_``):

- ``api_calls_total{channel,status}``: every Contacts API call by HTTP status, or
  ``timeout`` / ``connection_failed`` when no answer came.
- ``api_rate_limited_total{channel}``: the 429 answers among them.
- ``limiter_wait_seconds{channel}``: how long one pass of a command slept for its
  rate-limit starts (a histogram; passes that did not wait observe 0).
- ``limiter_deferrals_total{channel}``: passes put back in the ledger until a far start.
- ``command_passes_total{channel,outcome}``: passes by outcome (done, scheduled, dead,
  deferred, lease_lost, retry_alone).
- ``commands_done_total{channel}``, ``retries_total{channel,reason}``,
  ``dead_letters_total{channel,reason}``: commands (a merged pass counts each of its
  commands).
- ``ledger_record_group_size``: events per write of the group intake on PostgreSQL (a
  histogram; worker/ledger/intake.py): how many concurrent requests shared a commit.

Several processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set, prometheus_client writes each
process's counts to files in that folder and whoever serves them adds them up (the
``contactsync`` command sets it to ``<data dir>/metrics`` for ``web``, ``worker`` and
``up``). prometheus_client reads the variable once, when it is first imported, and the
CLI sets it only after its own imports: so this module imports prometheus_client on first
use, never at import time.

A worker in its own container or machine serves its folder's counts on
``CONTACTSYNC_METRICS_PORT`` when that is set. Counting never fails a task: a metric that
cannot be written is logged and dropped.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec

from celery.signals import worker_ready

from worker.contacts_api import ConnectionFailed, ContactsApiError, Timeout

if TYPE_CHECKING:
    import requests
    from prometheus_client import CollectorRegistry

    from worker.contacts_api import ContactsClient
    from worker.retry import Decision

log = logging.getLogger(__name__)

NAMESPACE = "contactsync"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PORT_ENV = "CONTACTSYNC_METRICS_PORT"
WAIT_BUCKETS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Seconds: inline waits are at most ``worker.inline_wait_max_s`` (2 s) per call."""
GROUP_BUCKETS = (1, 2, 3, 4, 6, 8, 16, 32, 64)
"""Events per group write: up to the intake's ``max_group`` (64)."""

P = ParamSpec("P")


class Series:
    """The metric objects of this process, built once on first use."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram, values

        self.folder = os.environ.get(MULTIPROC_ENV) if _multiprocess(values) else None
        """The multiprocess folder, or ``None`` when counts live in this process only."""
        if self.folder:
            os.makedirs(self.folder, exist_ok=True)

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, namespace=NAMESPACE)

        self.api_calls = counter(
            "api_calls",
            "Contacts API calls by channel and HTTP status "
            "(timeout, connection_failed: no answer came)",
            ("channel", "status"),
        )
        self.rate_limited = counter(
            "api_rate_limited", "Contacts API answers 429 Too Many Requests", ("channel",)
        )
        self.limiter_wait = Histogram(
            "limiter_wait_seconds",
            "Time one pass of a command slept for its channel's rate-limit starts",
            ("channel",),
            namespace=NAMESPACE,
            buckets=WAIT_BUCKETS,
        )
        self.deferrals = counter(
            "limiter_deferrals",
            "Command passes put back in the ledger until a rate-limit start further away",
            ("channel",),
        )
        self.passes = counter(
            "command_passes", "Passes of claimed commands by outcome", ("channel", "outcome")
        )
        self.done = counter("commands_done", "Commands applied", ("channel",))
        self.retries = counter(
            "retries", "Commands scheduled to try again, by reason", ("channel", "reason")
        )
        self.dead_letters = counter(
            "dead_letters", "Commands that became dead letters, by reason", ("channel", "reason")
        )
        self.record_groups = Histogram(
            "ledger_record_group_size",
            "Events recorded together in one statement and one commit (the group intake)",
            namespace=NAMESPACE,
            buckets=GROUP_BUCKETS,
        )


def _multiprocess(values: Any) -> bool:
    # prometheus_client picked its value class when first imported: that, not today's
    # environment, says where this process's counts are.
    return values.ValueClass is not values.MutexValue


_series: Series | None = None
_series_lock = threading.Lock()


def series() -> Series:
    """This process's series (imports prometheus_client the first time)."""
    global _series
    if _series is None:
        with _series_lock:  # threads racing to build them would register them twice
            if _series is None:
                _series = Series()
    return _series


def _safe(function: Callable[P, None]) -> Callable[P, None]:
    """Counting must never fail the work it counts."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            function(*args, **kwargs)
        except Exception as error:
            log.warning("metrics: %s failed: %s", function.__name__, error)

    return wrapper


@_safe
def api_call(channel: str, status: str) -> None:
    """Count one Contacts API call and how it was answered."""
    found = series()
    found.api_calls.labels(channel, status).inc()
    if status == "429":
        found.rate_limited.labels(channel).inc()


_watched: weakref.WeakSet[requests.Session] = weakref.WeakSet()
_watched_lock = threading.Lock()


@_safe
def watch(client: ContactsClient, channel: str) -> None:
    """Count every answer ``client`` receives (a ``requests`` response hook, added once)."""
    session = client.session
    with _watched_lock:
        if session in _watched:
            return
        _watched.add(session)

    def on_response(response: requests.Response, *_: Any, **__: Any) -> None:
        api_call(channel, str(response.status_code))

    session.hooks["response"].append(on_response)
    found = series()  # the usual series from 0, so that rate() sees their first increase
    found.api_calls.labels(channel, "200")
    found.rate_limited.labels(channel)
    found.done.labels(channel)
    found.passes.labels(channel, "done")


@_safe
def observe_pass(channel: str, outcome: str, commands: int, waited_s: float) -> None:
    """Count one pass of a claimed command (and those merged with it)."""
    found = series()
    found.passes.labels(channel, outcome).inc()
    found.limiter_wait.labels(channel).observe(waited_s)
    if outcome == "done":
        found.done.labels(channel).inc(commands)
    elif outcome == "deferred":
        found.deferrals.labels(channel).inc()


@_safe
def failed(channel: str, error: ContactsApiError, decision: Decision, commands: int) -> None:
    """Count a failed pass as the retry policy settled it."""
    found = series()
    if isinstance(error, Timeout | ConnectionFailed):
        api_call(channel, error.reason)  # no answer, so no response hook saw it
    if decision.retry:
        found.retries.labels(channel, decision.reason).inc(commands)
    else:
        found.dead_letters.labels(channel, decision.reason).inc(commands)


@_safe
def dead_letter(channel: str, reason: str, commands: int = 1) -> None:
    """Count commands made dead letters outside the retry policy."""
    series().dead_letters.labels(channel, reason).inc(commands)


@_safe
def record_group(size: int) -> None:
    """Count one write of the group intake and how many events it recorded."""
    series().record_groups.observe(size)


def registry() -> CollectorRegistry:
    """What this process serves: every process's counts in the multiprocess folder, else
    this process's own."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    folder = series().folder
    if folder is None:
        return REGISTRY
    collected = CollectorRegistry()
    MultiProcessCollector(collected, path=folder)  # type: ignore[no-untyped-call]
    return collected


def serve(port: int, addr: str = "0.0.0.0") -> Any:  # noqa: S104 - a container's own port
    """Serve :func:`registry` over HTTP on ``port`` from a daemon thread; the server."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr, registry=registry())
    log.info("metrics on :%d/metrics", port)
    return server


def port_from_env() -> int | None:
    """``CONTACTSYNC_METRICS_PORT``, or ``None`` when unset; ``ValueError`` names it."""
    text = os.environ.get(PORT_ENV, "").strip()
    if not text:
        return None
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"{PORT_ENV}: not a port number: {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"{PORT_ENV}: not a port number: {port}")
    return port


def _serve_when_ready(**_: object) -> None:
    try:
        port = port_from_env()
        if port is not None:
            serve(port)
    except (ValueError, OSError) as error:
        log.error("metrics not served: %s", error)


worker_ready.connect(_serve_when_ready)
