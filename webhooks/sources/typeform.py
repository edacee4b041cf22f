"""Typeform: ``form_response`` webhooks, signed ``Typeform-Signature: sha256=<base64>``.

Signed bytes: the raw body, HMAC-SHA256 with the webhook's secret, base64, with a
``sha256=`` prefix. Typeform sends no timestamp, so there is no replay window: redelivery
is caught by the event id instead. Answers are keyed by their field's ``ref`` (set it in the
form editor); the first answer of each type is also available as ``type:<type>`` (so
``type:email`` works on any form), and hidden fields as ``hidden.<name>``.
Docs: https://www.typeform.com/developers/webhooks/secure-your-webhooks/
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import Any

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

KIND = "typeform"
CONTENT_TYPES = frozenset({"application/json"})
DEFAULT_FIELDS = {
    "type:email": "email",
    "type:phone_number": "phone",
    "first_name": "firstName",
    "last_name": "lastName",
}
DEFAULT_MATCH = "email"
SIGNATURE_HEADER = "typeform-signature"


class Options(SourceOptions):
    """Typeform has no options of its own."""


def sign(secret: str, body: bytes) -> str:
    """The ``Typeform-Signature`` header value for ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return "sha256=" + base64.b64encode(digest).decode()


def verify(
    request: InboundRequest, secrets: Sequence[str], options: Any, now: Callable[[], float]
) -> None:
    """Check ``Typeform-Signature`` against the raw body with any of ``secrets``."""
    header = request.header(SIGNATURE_HEADER)
    if not header:
        raise Unauthenticated(f"missing {SIGNATURE_HEADER} header", error="missing_headers")
    given = header.strip().encode()
    if not any(
        hmac.compare_digest(sign(secret, request.body).encode(), given) for secret in secrets
    ):
        raise Unauthenticated("Typeform-Signature does not match the body")


def _answer_value(answer: dict[str, Any]) -> Any:
    kind = answer.get("type")
    value = answer.get(kind) if isinstance(kind, str) else None
    if kind == "choice" and isinstance(value, dict):
        return value.get("label") or value.get("other")
    if kind == "choices" and isinstance(value, dict):
        labels = list(value.get("labels") or [])
        if value.get("other"):
            labels.append(value["other"])
        return scalar(labels)
    if kind == "payment" and isinstance(value, dict):
        return value.get("amount")
    return scalar(value)


def records(request: InboundRequest, options: Any) -> list[Record]:
    """One record per form response."""
    data = load_json(request.body)
    if not isinstance(data, dict) or not isinstance(data.get("form_response"), dict):
        raise MalformedBody("not a Typeform webhook: no form_response object")
    event_id = data.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise InvalidRecord("event_id must be a non-empty string", field="event_id")
    response = data["form_response"]
    values: dict[str, Any] = {}
    answers = response.get("answers") or []
    if not isinstance(answers, list):
        raise MalformedBody("form_response.answers must be a list")
    for index, answer in enumerate(answers):
        if not isinstance(answer, dict) or not isinstance(answer.get("field"), dict):
            raise MalformedBody(f"form_response.answers[{index}] is not an answer object")
        value = _answer_value(answer)
        ref = answer["field"].get("ref") or answer["field"].get("id")
        if isinstance(ref, str) and ref:
            values[ref] = value
        values.setdefault(f"type:{answer.get('type')}", value)
    hidden = response.get("hidden") or {}
    if isinstance(hidden, dict):
        values.update({f"hidden.{k}": scalar(v) for k, v in hidden.items()})
    for key in ("form_id", "token", "submitted_at"):
        if key in response:
            values[key] = scalar(response[key])
    return [
        Record(key=event_id, type=str(data.get("event_type") or "form_response"), values=values)
    ]
