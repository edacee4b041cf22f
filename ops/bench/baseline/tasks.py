"""The Celery side of the baseline: one task per event.

``apply_event`` looks the contact up by its match field, updates it if found or creates it
if not, then adds or removes the event's tags. The channel's limit is the task's
``rate_limit`` (Celery enforces it per worker process, which is how it is usually written);
connection failures, 429s and 5xx are retried by ``autoretry_for`` with exponential backoff
and jitter, up to five times, after which the task fails and the event is lost.

A tag event for a contact that is not found creates the contact first ("look up, then
update or create, then tag"); an untag event for one that is not found does nothing (there
is nothing to remove).
"""

from __future__ import annotations

import os
from typing import Any

import requests
from celery import Celery

API_URL = os.environ.get("BASELINE_API_URL", "http://127.0.0.1:18080/api/v1").rstrip("/")
API_TOKEN = os.environ.get("BASELINE_API_TOKEN", "")
RATE_LIMIT = os.environ.get("BASELINE_RATE_LIMIT", "200/m")  # the channel's limit
TIMEOUT = (3.05, 10)

celery = Celery("baseline", broker=os.environ.get("BASELINE_BROKER_URL", "redis://localhost/13"))
celery.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)

session = requests.Session()
session.headers.update(
    {
        "Authorization": f"Bearer {API_TOKEN}",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
)


class RetryableStatus(Exception):
    """The API answered 429 or 5xx: worth trying again later."""


def call(method: str, path: str, **kwargs: Any) -> requests.Response:
    """One API call; raises :class:`RetryableStatus` on 429/5xx, ``HTTPError`` on others."""
    response = session.request(method, f"{API_URL}{path}", timeout=TIMEOUT, **kwargs)
    if response.status_code == 429 or response.status_code >= 500:
        raise RetryableStatus(f"{method} {path}: {response.status_code}")
    response.raise_for_status()
    return response


def as_custom_fields(fields: dict[str, Any]) -> list[dict[str, str]]:
    return [{"name": name, "value": str(value)} for name, value in fields.items()]


@celery.task(
    rate_limit=RATE_LIMIT,
    autoretry_for=(RetryableStatus, requests.ConnectionError, requests.Timeout),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=5,
)
def apply_event(event: dict[str, Any]) -> str | None:
    """Apply one canonical event; returns the contact id (``None``: nothing to do)."""
    (field, value), *_ = event["match"].items()
    found = call(
        "GET", "/contact/by_custom_field", params={"name": field, "value": str(value)}
    ).json()["data"]
    contact_id = found[0]["id"] if found else None
    fields = event.get("fields") or {}
    tags = event.get("tags") or []
    if event["type"] == "contact.untag":
        if contact_id is not None:
            call("DELETE", f"/contact/{contact_id}/tags", json={"tags": tags})
        return contact_id
    if contact_id is None:
        created = call(
            "POST", "/contact", json={"custom_fields": as_custom_fields({field: value, **fields})}
        )
        contact_id = created.json()["data"]["id"]
    elif fields:
        call("PUT", f"/contact/{contact_id}", json={"custom_fields": as_custom_fields(fields)})
    if tags:
        call("POST", f"/contact/{contact_id}/tags", json={"tags": tags})
    return str(contact_id)
