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
from collections.abc import Iterator
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


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value…``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """The time to the second, made once a second (a receiver writes a line an event)."""
        if datefmt is None:  # the default format prints milliseconds
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, super().formatTime(record, datefmt))
        return cached[1]

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
