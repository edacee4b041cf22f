"""Calendly: ``invitee.created`` / ``invitee.canceled``, signed
``Calendly-Webhook-Signature: t=<unix seconds>,v1=<hex>``.

Signed bytes: ``t`` as sent, a dot, then the raw body; HMAC-SHA256 with the subscription's
signing key, hex. A ``t`` further than ``tolerance_s`` (default 180 s) from our clock is
refused, so a captured delivery cannot be replayed later. The event's id is the invitee's
URI plus the event name (the URI alone is the same for a booking and its cancellation).

A booking upserts the invitee. A cancellation removes the configured tags by default
(``on_cancel``: ``untag``, ``tag`` with ``canceled_tag``, or ``ignore``). The cancel half
of a reschedule (``rescheduled: true``) is ignored: Calendly sends an ``invitee.created``
for the new time, and removing tags then could undo what that booking added.
Docs: https://developer.calendly.com/api-docs/overview/webhooks/webhook-signatures
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field

from webhooks.sources.base import (
    InboundRequest,
    InvalidRecord,
    MalformedBody,
    Record,
    SourceOptions,
    Unauthenticated,
    load_json,
    scalar,
)

KIND = "calendly"
CONTENT_TYPES = frozenset({"application/json"})
DEFAULT_FIELDS = {
    "email": "email",
    "first_name": "firstName",
    "last_name": "lastName",
    "phone": "phone",
}
DEFAULT_MATCH = "email"
SIGNATURE_HEADER = "calendly-webhook-signature"
CREATED, CANCELED = "invitee.created", "invitee.canceled"
MAX_KEY_CHARS = 300
_MAX_TIMESTAMP_DIGITS = 12
_INVITEE_KEYS = ("email", "name", "first_name", "last_name", "timezone", "status", "rescheduled")


class Options(SourceOptions):
    """Calendly's keys: the replay window, and what a cancellation does."""

    tolerance_s: float = Field(default=180.0, gt=0, le=86400)
    """How far ``t`` may be from our clock, in seconds, either way."""
    on_cancel: Literal["untag", "tag", "ignore"] = "untag"
    """``untag``: remove the configured tags; ``tag``: add ``canceled_tag``; ``ignore``."""
    canceled_tag: str = Field(default="calendly-canceled", min_length=1, max_length=255)


def may_untag(options: Options) -> bool:
    """Whether a record can remove tags (then the source must configure some)."""
    return options.on_cancel == "untag"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The hex ``v1`` signature of ``body`` sent at ``timestamp``."""
    content = timestamp.encode() + b"." + body
    return hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Calendly-Webhook-Signature`` header value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={signature(secret, str(timestamp), body)}"


def _parse(header: str) -> tuple[str, list[str]]:
    """``t`` as sent and every ``v1`` value; unknown parts are skipped."""
    timestamp: str | None = None
    given: list[str] = []
    for part in header.split(","):
        name, equals, value = part.strip().partition("=")
        if not equals:
            continue
        if name == "t" and timestamp is None:
            timestamp = value.strip()
        elif name == "v1":
            given.append(value.strip().lower())
    if timestamp is None or not given:
        raise Unauthenticated(f"{SIGNATURE_HEADER} needs t= and v1= parts")
    return timestamp, given


def verify(
    request: InboundRequest, secrets: Sequence[str], options: Any, now: Callable[[], float]
) -> None:
    """Check the signature over ``t.body`` with any of ``secrets``, and ``t`` is recent."""
    header = request.header(SIGNATURE_HEADER)
    if not header:
        raise Unauthenticated(f"missing {SIGNATURE_HEADER} header", error="missing_headers")
    timestamp, given = _parse(header)
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > _MAX_TIMESTAMP_DIGITS:
        raise Unauthenticated("t is not a number of seconds", error="stale_timestamp")
    # "not <=" so that a NaN skew is refused too.
    if not abs(now() - int(timestamp)) <= options.tolerance_s:
        raise Unauthenticated("t is outside the replay window", error="stale_timestamp")
    expected = [signature(secret, timestamp, request.body).encode() for secret in secrets]
    matched = False
    for value in given:
        for digest in expected:
            # No early exit: the time taken does not depend on which entry matched.
            matched |= hmac.compare_digest(digest, value.encode())
    if not matched:
        raise Unauthenticated(f"{SIGNATURE_HEADER} does not match the body")


def _answers(items: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if not isinstance(items, list):
        return values
    for item in items:
        if not isinstance(item, dict):
            continue
        answer = scalar(item.get("answer"))
        position, question = item.get("position"), item.get("question")
        if isinstance(position, int) and not isinstance(position, bool):
            values[f"qa:{position}"] = answer
        if isinstance(question, str) and question:
            values.setdefault(f"qa:{question}", answer)
    return values


def _flatten(payload: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {key: scalar(payload.get(key)) for key in _INVITEE_KEYS}
    values["phone"] = scalar(payload.get("text_reminder_number"))
    values["invitee_uri"] = payload["uri"]
    event = payload.get("scheduled_event")
    if isinstance(event, dict):
        values["event_name"] = scalar(event.get("name"))
        values["event_start"] = scalar(event.get("start_time"))
        values["event_uri"] = scalar(event.get("uri"))
    elif isinstance(payload.get("event"), str):  # older payloads: the event's URI only
        values["event_uri"] = payload["event"]
    tracking = payload.get("tracking")
    if isinstance(tracking, dict):
        values.update({k: scalar(v) for k, v in tracking.items() if k.startswith("utm_")})
    cancellation = payload.get("cancellation")
    if isinstance(cancellation, dict):
        values["cancel_reason"] = scalar(cancellation.get("reason"))
        values["canceled_by"] = scalar(cancellation.get("canceled_by"))
    values.update(_answers(payload.get("questions_and_answers")))
    return values


def records(request: InboundRequest, options: Any) -> list[Record]:
    """One record per booking or cancellation; other events give none."""
    data = load_json(request.body)
    if not isinstance(data, dict) or not isinstance(data.get("payload"), dict):
        raise MalformedBody("not a Calendly webhook: no payload object")
    event = data.get("event")
    if not isinstance(event, str):
        raise MalformedBody("event must be a string")
    if event not in (CREATED, CANCELED):
        return []
    payload = data["payload"]
    uri = payload.get("uri")
    key = f"{uri}:{event}"
    if not isinstance(uri, str) or not uri or len(key) > MAX_KEY_CHARS:
        raise InvalidRecord(
            f"payload.uri must be a non-empty string of at most {MAX_KEY_CHARS} characters",
            field="payload.uri",
        )
    values = _flatten(payload)
    if event == CREATED:
        return [Record(key=key, type=event, values=values)]
    if options.on_cancel == "ignore" or payload.get("rescheduled") is True:
        return []
    if options.on_cancel == "tag":
        return [
            Record(key=key, type=event, values=values, action="tag", tags=(options.canceled_tag,))
        ]
    return [Record(key=key, type=event, values=values, action="untag")]
