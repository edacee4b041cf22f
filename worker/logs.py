"""Logging set-up: readable lines in a terminal, JSON lines in production.

Context such as ``command_id``, ``event_id`` and ``channel`` travels in ``extra=`` and is
printed by both formats. Nothing here ever formats a secret: callers log ids and reasons.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

CONTEXT_KEYS = ("event_id", "command_id", "channel", "source")

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("contactsync_log_context")


@contextlib.contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Attach ``event_id``, ``command_id``, ``channel`` or ``source`` to every log line
    written inside the block (the client's per-call lines included)."""
    token = _context.set({**_context.get({}), **values})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the current log context onto each record (explicit ``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get({}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class PerSecond:
    """Text made from a whole second (``make(second)``), kept until the next second: for
    what a busy process writes at every line or answer to one-second resolution."""

    def __init__(self, make: Callable[[int], str]) -> None:
        self._make = make
        self._last: tuple[int, str] = (-1, "")

    def __call__(self, second: int) -> str:
        last = self._last  # one tuple: a thread never pairs one second with another's text
        if last[0] != second:
            last = self._last = (second, self._make(second))
        return last[1]


_TIME = "%H:%M:%S"


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value…``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", _TIME)
        self._time = PerSecond(lambda second: time.strftime(_TIME, self.converter(second)))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """The time to the second, made once a second (a receiver writes a line an event)."""
        if datefmt != _TIME:  # another format (the default prints milliseconds)
            return super().formatTime(record, datefmt)
        return self._time(int(record.created))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{key}={getattr(record, key)}" for key in CONTEXT_KEYS if hasattr(record, key)
        )
        return f"{line} [{context}]" if context else line


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send every logger to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    # Neither format prints the thread, the multiprocessing name or the calling line: not
    # collecting them makes a record cheaper to build (the logging docs' "Optimization"),
    # which counts on the receiver, where every accepted event is a line. Without a source
    # file to look for, a record is made without walking the stack for its caller (about a
    # quarter less a line here). The process id stays (os.getpid(), cheap): gunicorn's own
    # lines print it with "%(process)d", which fails on a record without one.
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("urllib3", "werkzeug", "alembic", "kombu", "celery.beat"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
