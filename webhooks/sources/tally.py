"""Tally: ``FORM_RESPONSE`` webhooks, signed ``Tally-Signature: <base64>``.

Signed bytes: the raw body, HMAC-SHA256 with the webhook's signing secret, base64, no
prefix. Tally sends no timestamp, so there is no replay window: redelivery is caught by the
``eventId`` instead. Answers are keyed by their field's ``key`` (``question_xxxx``, stable
while the question exists); choice answers carry option ids, mapped here to the options'
text. A ``CHECKBOXES`` question also arrives as one boolean field per option (key
``<question key>_<option id>``); those repeat the question's answer and are skipped.
Docs: https://tally.so/help/webhooks
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

KIND = "tally"
CONTENT_TYPES = frozenset({"application/json"})
DEFAULT_FIELDS = {
    "type:INPUT_EMAIL": "email",
    "type:INPUT_PHONE_NUMBER": "phone",
}
DEFAULT_MATCH = "email"
SIGNATURE_HEADER = "tally-signature"
EVENT_TYPE = "FORM_RESPONSE"
MAX_KEY_CHARS = 300
_CHECKBOXES = "CHECKBOXES"
_RESPONSE_KEYS = ("formId", "formName", "responseId", "submissionId", "respondentId", "createdAt")


class Options(SourceOptions):
    """Tally has no options of its own."""


def sign(secret: str, body: bytes) -> str:
    """The ``Tally-Signature`` header value for ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify(
    request: InboundRequest, secrets: Sequence[str], options: Any, now: Callable[[], float]
) -> None:
    """Check ``Tally-Signature`` against the raw body with any of ``secrets``."""
    header = request.header(SIGNATURE_HEADER)
    if not header:
        raise Unauthenticated(f"missing {SIGNATURE_HEADER} header", error="missing_headers")
    given = header.strip().encode()
    matched = False
    for secret in secrets:
        # No early exit: the time taken does not depend on which secret matched.
        matched |= hmac.compare_digest(sign(secret, request.body).encode(), given)
    if not matched:
        raise Unauthenticated("Tally-Signature does not match the body")


def _option_texts(field: dict[str, Any]) -> dict[str, Any]:
    options = field.get("options")
    if not isinstance(options, list):
        return {}
    return {
        option["id"]: option.get("text")
        for option in options
        if isinstance(option, dict) and isinstance(option.get("id"), str)
    }


def _field_value(field: dict[str, Any]) -> Any:
    value = field.get("value")
    texts = _option_texts(field)
    if texts and isinstance(value, str | list):
        chosen = value if isinstance(value, list) else [value]
        # An id with no option (an "other" answer, say) is kept as sent.
        return scalar([texts.get(v) or v if isinstance(v, str) else v for v in chosen])
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        # File uploads: [{"name", "url", ...}] -> their URLs.
        return scalar([v["url"] for v in value if isinstance(v.get("url"), str)])
    return scalar(value)


def _per_option_keys(fields: list[Any]) -> set[str]:
    """Keys of the boolean per-option copies of ``CHECKBOXES`` answers."""
    parents = {
        f["key"]: _option_texts(f)
        for f in fields
        if isinstance(f, dict)
        and f.get("type") == _CHECKBOXES
        and isinstance(f.get("key"), str)
        and not isinstance(f.get("value"), bool)
    }
    copies = {f"{key}_{option}" for key, texts in parents.items() for option in texts}
    return {
        f["key"]
        for f in fields
        if isinstance(f, dict)
        and f.get("type") == _CHECKBOXES
        and isinstance(f.get("value"), bool)
        and isinstance(f.get("key"), str)
        # Option ids are UUIDs (no "_"), so the question's key is what precedes the last "_".
        and (f["key"] in copies or f["key"].rpartition("_")[0] in parents)
    }


def _flatten(fields: list[Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    skip = _per_option_keys(fields)
    for index, field in enumerate(fields):
        if not isinstance(field, dict) or not isinstance(field.get("key"), str):
            raise MalformedBody(f"data.fields[{index}] is not a field object with a key")
        key = field["key"]
        if key in skip:
            continue
        value = _field_value(field)
        kind = field.get("type")
        label = field.get("label")
        if kind == "HIDDEN_FIELDS" and isinstance(label, str) and label:
            values[f"hidden.{label}"] = value
        if key:
            values[key] = value
        if isinstance(kind, str) and kind:
            values.setdefault(f"type:{kind}", value)
        if isinstance(label, str) and label:
            values.setdefault(f"label:{label}", value)
    return values


def records(request: InboundRequest, options: Any) -> list[Record]:
    """One record per form response; other event types are acknowledged and ignored."""
    data = load_json(request.body)
    if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
        raise MalformedBody("not a Tally webhook: no data object")
    event_id = data.get("eventId")
    if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_KEY_CHARS:
        raise InvalidRecord(
            f"eventId must be a non-empty string of at most {MAX_KEY_CHARS} characters",
            field="eventId",
        )
    event_type = data.get("eventType", EVENT_TYPE)
    if not isinstance(event_type, str):
        raise MalformedBody("eventType must be a string")
    if event_type != EVENT_TYPE:
        return []
    response = data["data"]
    fields = response.get("fields") or []
    if not isinstance(fields, list):
        raise MalformedBody("data.fields must be a list")
    values = _flatten(fields)
    for key in _RESPONSE_KEYS:
        if key in response:
            values[key] = scalar(response[key])
    return [Record(key=event_id, type=event_type, values=values)]
