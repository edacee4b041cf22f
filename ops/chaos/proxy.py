"""A TCP proxy in front of the sandbox, switched at run time between three modes:

- ``forward``: every connection is piped to the sandbox;
- ``refuse``: the listening socket is closed, so connecting fails at once (ECONNREFUSED),
  and every open connection is reset, as when the API's host is down;
- ``hang``: connections are accepted and never answered (the client's read timeout
  fires), and every open connection is reset, as behind a dead load balancer.

Neither ``refuse`` nor ``hang`` lets a request reach the sandbox, so the sandbox's state
stays exact for the final check. The switch resets connections that were forwarding, so a
request on the wire at that moment may still be applied while its client sees a reset: the
same ambiguity the real API has.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

from ops.chaos.services import LOOPBACK

MODES = ("forward", "refuse", "hang")


def _reset(conn: socket.socket) -> None:
    """Abort the connection (RST), waking whoever reads it."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
    with contextlib.suppress(OSError):
        conn.close()


class FaultProxy:
    """Listens on 127.0.0.1:``port`` (a free one by default) and serves ``target``."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target = (LOOPBACK, target_port)
        self._lock = threading.Lock()
        self._mode = "forward"
        self._open: set[socket.socket] = set()
        self._closing = False
        self._listener: socket.socket | None = self._listen(port)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, name="chaos-proxy", daemon=True)
        self._thread.start()

    @staticmethod
    def _listen(port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, port))
        listener.listen(128)
        listener.settimeout(0.1)
        return listener

    @property
    def mode(self) -> str:
        """The current mode."""
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Switch mode; leaving ``forward`` resets every open connection."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        with self._lock:
            if mode == self._mode:
                return
            self._mode = mode
            victims = list(self._open)
            self._open.clear()
        for conn in victims:
            _reset(conn)

    def close(self) -> None:
        """Stop listening and reset every connection."""
        self._closing = True
        self._thread.join(5)
        with self._lock:
            victims = list(self._open)
            self._open.clear()
        for conn in victims:
            _reset(conn)

    # -- the accept loop ----------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._closing:
            mode = self._mode
            if mode == "refuse":
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None
                time.sleep(0.05)
                continue
            if self._listener is None:
                try:
                    self._listener = self._listen(self.port)
                except OSError:
                    time.sleep(0.05)  # the port is in use for a moment: try again
                    continue
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                continue
            self.connections += 1
            client.settimeout(None)
            with self._lock:
                mode = self._mode
                if mode == "refuse":
                    _reset(client)
                    continue
                self._open.add(client)
            if mode == "hang":
                continue  # kept open, never read, reset when the mode changes
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()
        if self._listener is not None:
            self._listener.close()

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._drop(client)
            return
        upstream.settimeout(None)
        with self._lock:
            keep = self._mode == "forward" and client in self._open
            if keep:
                self._open.add(upstream)
        if not keep:  # outside the lock: _drop takes it (it is not reentrant)
            _reset(upstream)
            self._drop(client)
            return
        back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
        back.start()
        self._pipe(client, upstream)
        back.join()
        self._drop(client)
        self._drop(upstream)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def _drop(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.discard(conn)
        with contextlib.suppress(OSError):
            conn.close()
