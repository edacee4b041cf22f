"""The receiver's gunicorn worker: gthread, with a kept-alive connection's next request
served by the thread that answered the last one when it comes at once.

gunicorn's gthread hands every kept-alive connection back to the process's main loop after
each answer: the thread signals the main loop through a pipe, the main loop registers the
socket with its poller, wakes when the next request arrives, unregisters it and submits the
connection to the thread pool again, whose thread then wakes. Per request that is two
main-loop wake-ups, two poller changes, a pipe write and read and two thread hand-overs,
each taking the GIL from the threads serving requests: in the ingest benchmark the main
loop held the GIL for 18 % of the receiver's samples (docs/benchmarks.md, "Ingest").

A sender that keeps its connection open often sends its next webhook as soon as the last
is answered (a CRM flushing its queue, a proxy's upstream connection under load). For such
a connection the thread waits up to :data:`LINGER` seconds (one ``poll``, the GIL
released) for the next request and serves it itself. A connection whose last request came
later than that is not waited for (a sender that pauses between webhooks would only hold
the thread for nothing), nor is any while the process is stopping, while a connection
waits for a thread, or when no other thread would be left free for one: those go back to
the main loop as in gthread. A process whose threads are all busy (more connections than
threads, all sending) so behaves as gthread does.

What it saves is gthread's own work per request: about a tenth of gunicorn's CPU per
request on a trivial app (``ops/bench/server.py``, docs/benchmarks.md), a few per cent of
what an event costs the receiver.
"""

from __future__ import annotations

import gc
import select
import threading
import time
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.workers.gthread import ThreadWorker

from worker.logs import PerSecond

_formatdate = gunicorn_util.http_date
_date = PerSecond(lambda second: str(_formatdate(second)))


def _http_date_once_a_second(timestamp: float | None = None) -> str:
    """gunicorn's ``util.http_date``, the current second's text kept until the next."""
    if timestamp is not None:
        return str(_formatdate(timestamp))
    return _date(int(time.time()))


LINGER = 0.005
"""How long a thread waits for a kept-alive connection's next request, seconds."""


class LingeringThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread, serving a kept-alive connection's next request in the same thread when it
    arrives within :data:`LINGER`, as its last one did, and a thread stays free for others."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._queued = 0
        """Connections submitted to the thread pool and not yet taken by a thread."""
        self._taken = 0
        """Threads serving a connection or waiting for its next request."""
        self._threads = int(self.cfg.threads)
        self._tls = bool(self.cfg.is_ssl)  # read once: each read of cfg goes through lookups
        self.served_in_thread = 0
        """Requests served by the thread that answered the one before on their connection."""
        self.waited_in_vain = 0
        """Waits for a connection's next request that ended without one."""

    def init_process(self) -> None:
        # In this process only (a worker, after the fork): the Date header of each answer
        # made once a second, not once an answer (formatdate: 1.8 % of the receiver's GIL
        # samples in the ingest profile). The header's resolution is the second.
        gunicorn_util.http_date = _http_date_once_a_second
        super().init_process()

    def load_wsgi(self) -> None:
        """Load the app, then freeze what loading made (gc.freeze): the imports, the app
        and its configuration are kept for the process's life, and a full collection no
        longer walks them. Unfrozen, a full collection of those 130 000 objects held the
        GIL for 30 to 60 ms, about once every 6 000 requests, stalling all the process's
        requests at once (the receiver's p99, docs/benchmarks.md)."""
        super().load_wsgi()
        gc.collect()  # what loading left as garbage is freed, not frozen
        gc.freeze()

    def enqueue_req(self, conn: Any) -> None:
        with self._lock:
            self._queued += 1
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        with self._lock:
            self._queued -= 1
            self._taken += 1
        try:
            # From the main loop: did this request come within the linger of the last?
            answered = getattr(conn, "contactsync_answered", None)
            prompt = answered is None or time.monotonic() - answered < LINGER
            keepalive = super().handle(conn)
            while keepalive is True and prompt and self._next_request_here(conn):
                keepalive = super().handle(conn)
            conn.contactsync_answered = time.monotonic()
            return keepalive
        finally:
            with self._lock:
                self._taken -= 1

    def _next_request_here(self, conn: Any) -> bool:
        """Whether the connection's next request is here or arrives within the linger,
        while the process runs, no connection waits for a thread and another is free."""
        if not self.alive or conn.is_http2 or self._tls:
            return False
        if self._queued > 0 or self._taken >= self._threads:
            return False
        if not conn.parser.unreader.buf.getvalue():  # else read ahead with the last request
            poller = select.poll()
            poller.register(conn.sock, select.POLLIN)
            try:
                ready = poller.poll(LINGER * 1000)
            except OSError:
                ready = []
            if not ready:
                with self._lock:
                    self.waited_in_vain += 1
                return False
        with self._lock:
            self.served_in_thread += 1
        return True
