"""The naive receiver the ingest benchmark compares with: ``POST /events`` parses the JSON
body and calls ``task.delay(payload)``, nothing else (no signature, no validation, no
record). The broker is ``NAIVE_BROKER_URL`` (a Redis URL). Served by gunicorn::

    NAIVE_BROKER_URL=redis://127.0.0.1:6379/12 \
        gunicorn -k gthread -w 2 --threads 4 ops.bench.naive_app:app
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from flask import Flask, jsonify, request

celery = Celery("naive", broker=os.environ.get("NAIVE_BROKER_URL", "redis://127.0.0.1:6379/12"))
celery.conf.update(
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)


@celery.task(name="naive.apply")  # type: ignore[untyped-decorator]
def apply(payload: Any) -> None:
    """What a worker would run; the benchmark starts no worker."""


app = Flask(__name__)


@app.post("/events")
def events() -> Any:
    """Queue the event as it came."""
    apply.delay(request.get_json())
    return jsonify(queued=True), 202
