"""A WSGI app and gunicorn hooks for the tests of :mod:`webhooks.server`, served by a real
gunicorn (``--config python:gunicorn_probe gunicorn_probe:app``, ``tests`` on the path).

Each answer's body is ``<served> <in vain>``, the worker process's counts when this request
began: requests served by the thread that answered the one before on the same connection,
and waits for a connection's next request that ended without one (``-`` for a worker
class without them). ``GET /gc`` answers the number of objects the process froze
(``gc.get_freeze_count()``).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterable
from typing import Any

_request = threading.local()


READY = "probe worker ready"


def post_worker_init(worker: Any) -> None:
    """gunicorn's hook, once the worker process has loaded the app: the tests wait for this
    line, not for a connection, so that the first connection the worker serves is a test's."""
    worker.log.info(READY)


def pre_request(worker: Any, _req: Any) -> None:
    """gunicorn's hook, in the thread that is about to call the app."""
    _request.counts = (
        f"{getattr(worker, 'served_in_thread', '-')} {getattr(worker, 'waited_in_vain', '-')}"
    )


def app(
    environ: dict[str, Any], start_response: Callable[[str, list[tuple[str, str]]], Any]
) -> Iterable[bytes]:
    environ["wsgi.input"].read()
    if environ["PATH_INFO"] == "/gc":
        body = str(gc.get_freeze_count()).encode()
    else:
        body = _request.counts.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
