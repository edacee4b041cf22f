"""The receiver's gunicorn worker (webhooks.server), served by a real gunicorn over HTTP.

The probe app (tests/gunicorn_probe.py) answers with the worker's counts: requests served
by the thread that answered the connection's last one, and waits that ended without one.
"""

from __future__ import annotations

import email.utils
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gunicorn_probe import READY

from webhooks.server import LINGER

TESTS = Path(__file__).resolve().parents[1]
LINGERING = "webhooks.server.LingeringThreadWorker"


class Gunicorn:
    """A gunicorn serving ``gunicorn_probe:app`` with one process of ``threads`` threads."""

    def __init__(self, threads: int, worker_class: str, log: Path) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
        self.log = log
        self.connections: list[http.client.HTTPConnection] = []
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "gunicorn", "--worker-class", worker_class),
                    *("--workers", "1", "--threads", str(threads), "--bind", "127.0.0.1:0"),
                    *("--graceful-timeout", "5", "--no-control-socket"),
                    *("--config", "python:gunicorn_probe", "gunicorn_probe:app"),
                ],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.port = self._port()

    def _port(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            listening = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", text)
            if listening and READY in text:
                # Not probed with a connection: the worker would serve it alongside a
                # test's first, taking a thread the test counts on (a linger not waited).
                return int(listening.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.process.kill()
        raise AssertionError(f"gunicorn did not start:\n{self.log.read_text(errors='replace')}")

    def connection(self) -> http.client.HTTPConnection:
        """A keep-alive connection (closed by :meth:`stop`)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.connections.append(connection)
        return connection

    def stop(self) -> None:
        for connection in self.connections:
            connection.close()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


Serve = Callable[..., Gunicorn]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start a gunicorn (killed after the test)."""
    started: list[Gunicorn] = []

    def start(threads: int = 4, worker_class: str = LINGERING) -> Gunicorn:
        server = Gunicorn(threads, worker_class, tmp_path / f"gunicorn-{len(started)}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def ask(connection: http.client.HTTPConnection) -> tuple[str, str]:
    """POST on a kept-alive connection: the worker's counts (served in thread, in vain)."""
    connection.request("POST", "/", body=b"{}", headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Connection", "").lower() != "close"
    served, in_vain = response.read().decode().split()
    return served, in_vain


def test_a_connections_next_requests_are_served_by_the_thread_that_answered(
    serve: Serve,
) -> None:
    connection = serve(threads=4).connection()
    served = [int(ask(connection)[0]) for _ in range(30)]
    assert served == sorted(served)  # a count only grows
    assert served[-1] >= 1, "every request went back through the main loop"


def test_stock_gthread_serves_the_same_requests_without_the_counts(serve: Serve) -> None:
    """What the test above tells apart: gthread answers these requests too, without them."""
    connection = serve(threads=4, worker_class="gthread").connection()
    assert {ask(connection) for _ in range(5)} == {("-", "-")}


def frozen(connection: http.client.HTTPConnection) -> int:
    connection.request("GET", "/gc")
    response = connection.getresponse()
    assert response.status == 200
    return int(response.read())


def test_what_loading_the_app_made_is_frozen_out_of_the_collector(serve: Serve) -> None:
    """A full collection then skips the imports and the app: without the freeze, it walked
    them all about once every 6 000 requests, stalling every request of the process."""
    assert frozen(serve(threads=2).connection()) > 1000
    assert frozen(serve(threads=2, worker_class="gthread").connection()) == 0


def test_the_date_header_is_the_current_second(serve: Serve) -> None:
    """Made once a second in our worker class: never a second that has passed."""
    connection = serve(threads=2).connection()
    for pause in (0.0, 1.1, 0.3, 1.2):
        time.sleep(pause)
        before = int(time.time())
        connection.request("POST", "/", body=b"{}")
        response = connection.getresponse()
        response.read()
        after = int(time.time())
        date = email.utils.parsedate_to_datetime(response.getheader("Date", ""))
        assert before <= date.timestamp() <= after, (before, response.getheader("Date"), after)
        assert response.getheader("Date", "").endswith(" GMT")


def test_a_connection_that_pauses_is_waited_for_once_then_not_again(serve: Serve) -> None:
    connection = serve(threads=2).connection()
    ask(connection)
    counts = []
    for _ in range(4):
        time.sleep(LINGER * 20)  # past the linger: the thread gave the connection back
        counts.append(ask(connection))
    # Served from the main loop each time; one wait in vain (after the first answer, whose
    # connection had no history), none after: the pauses said this sender is not prompt.
    assert {served for served, _ in counts} == {"0"}
    assert {in_vain for _, in_vain in counts} == {"1"}


PIPELINED = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


class Pipeline:
    """A connection sending ``count`` requests in one stream (each next request is there
    before the last is answered), and counting the answers as they come."""

    def __init__(self, port: int, count: int) -> None:
        self.count = count
        self.answered = 0
        self.closing = False
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.threads = [threading.Thread(target=self._send), threading.Thread(target=self._read)]
        for thread in self.threads:
            thread.start()

    def _send(self) -> None:
        try:
            self.sock.sendall(PIPELINED * self.count)
        except OSError:
            if not self.closing:
                raise

    def _read(self) -> None:
        status = b"HTTP/1.1 200"
        tail = b""
        try:
            while self.answered < self.count:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    return
                seen = tail + chunk
                self.answered += seen.count(status)
                tail = seen[-(len(status) - 1) :]
        except OSError:
            if not self.closing:
                raise

    def close(self) -> None:
        self.closing = True
        self.sock.shutdown(socket.SHUT_RDWR)  # the threads' send and receive end
        for thread in self.threads:
            thread.join(30)
        self.sock.close()


def test_pipelined_requests_are_all_answered(serve: Serve) -> None:
    pipeline = Pipeline(serve(threads=2).port, 3)
    pipeline.threads[1].join(10)
    assert pipeline.answered == 3
    pipeline.close()


def test_busy_connections_do_not_keep_a_waiting_one_waiting(serve: Serve) -> None:
    """Two threads; two connections pipelining many requests, so that each always has its
    next request there when the last is answered. A third connection's request is
    answered while both still have requests to be answered: a thread lets its
    connection go when another waits."""
    server = serve(threads=2)
    busy = [Pipeline(server.port, 20_000) for _ in range(2)]
    try:
        while min(pipeline.answered for pipeline in busy) < 10:  # both are being served
            time.sleep(0.001)
        ask(server.connection())
        assert all(pipeline.answered < pipeline.count for pipeline in busy)
    finally:
        for pipeline in busy:
            pipeline.close()


def test_a_stopping_worker_stops_waiting_and_exits(serve: Serve) -> None:
    server = serve(threads=2)
    connection = server.connection()
    for _ in range(5):
        ask(connection)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(15) == 0
