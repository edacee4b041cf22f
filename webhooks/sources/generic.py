"""The generic source: contactsync's own event format, turned into commands.

Owns the canonical JSON event format (one object, or an array of 1 to 100) and its
validation: every refusal names the offending part of the body. It is pure: it takes the
already-verified raw body and plain values, and does no I/O; it knows nothing of Flask,
the ledger or signatures (see :mod:`webhooks.signing`).

Errors::

    PayloadError            the body cannot become events
     ├── MalformedBody      not UTF-8, not JSON, or JSON we will not read (NaN, duplicate keys,
     │                      absurd nesting)                                   -> HTTP 400
     └── EventError         valid JSON that breaks the format; ``field`` names where, as
                            ``type``, ``match.email``, ``[3].tags[0]``; ``$`` is the whole body
                                                                              -> HTTP 422
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from webhooks.sources.base import InvalidRecord, MalformedBody, load_json
from worker.commands import (
    MAX_MATCH_CHARS,
    Command,
    CommandError,
    ContactRef,
    make_command,
)
from worker.contacts_api import limits

__all__ = ["EventError", "InboundEvent", "MalformedBody", "load_json", "parse_events"]

MAX_BATCH = 100
MAX_ID_CHARS = 200
ROOT = "$"
"""The ``field`` of an error about the body as a whole."""

EVENT_TYPES: Mapping[str, str] = {
    "contact.upsert": "upsert",
    "contact.tag": "tag",
    "contact.untag": "untag",
}
"""Event type -> command kind."""

EVENT_KEYS = frozenset(
    {"id", "type", "channel", "match", "contact_id", "fields", "tags", "occurred_at"}
)

_SHOWN_CHARS = 64  # how much of a sender's name or value an error message repeats


class EventError(InvalidRecord):
    """The JSON breaks the event format; ``field`` is a JSON-path-like name of the part."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail, field=field)
        self.field = field


_Fail = Callable[[str, str], EventError]


@dataclass(frozen=True)
class InboundEvent:
    """One accepted event: its idempotency key, what it was, and the commands it asks for."""

    key: str
    source: str
    type: str
    commands: list[Command]
    raw: dict[str, Any]


def _shown(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def parse_events(
    body: bytes,
    *,
    webhook_id: str,
    source: str,
    default_channel: str | None,
    channels: Mapping[str, frozenset[str] | None],
) -> list[InboundEvent]:
    """Turn a verified generic-source body into events, or refuse it naming the field.

    ``channels`` maps each known channel to its custom field keys (None: any well-formed
    key). Raises :class:`MalformedBody` or :class:`EventError`.
    """
    if not webhook_id or len(webhook_id) > MAX_ID_CHARS:
        raise EventError("webhook-id", f"must be 1 to {MAX_ID_CHARS} characters")
    data = load_json(body)
    if isinstance(data, dict):
        elements, batched = [data], False
    elif isinstance(data, list):
        if not 1 <= len(data) <= MAX_BATCH:
            raise EventError(ROOT, f"a batch holds 1 to {MAX_BATCH} events, not {len(data)}")
        elements, batched = data, True
    else:
        raise EventError(ROOT, "must be an event object or an array of event objects")

    events: list[InboundEvent] = []
    owners: dict[str, int] = {}  # key -> index of the element that has it
    for index, element in enumerate(elements):
        prefix = f"[{index}]" if batched else ""
        if not isinstance(element, dict):
            raise EventError(prefix or ROOT, "must be an event object")
        command = _parse_event(element, prefix, source, default_channel, channels)
        explicit = "id" in element
        if explicit:
            key: str = element["id"]  # a non-empty string: _parse_event checked it
        else:
            key = f"{webhook_id}:{index}" if batched else webhook_id
        if key in owners:
            # Name an element that carries an explicit id: that is what the sender can fix.
            culprit = index if explicit else owners[key]
            raise EventError(
                f"[{culprit}].id", f"repeats the key of another event in this batch: {key!r}"
            )
        owners[key] = index
        events.append(InboundEvent(key, source, element["type"], [command], element))
    return events


def _path(prefix: str, name: str) -> str:
    if not prefix:
        return name
    return f"{prefix}{name}" if name.startswith("[") else f"{prefix}.{name}"


def _parse_event(
    element: dict[str, Any],
    prefix: str,
    source: str,
    default_channel: str | None,
    channels: Mapping[str, frozenset[str] | None],
) -> Command:
    def fail(name: str, detail: str) -> EventError:
        return EventError(_path(prefix, name), detail)

    for name in element:
        if name not in EVENT_KEYS:
            raise fail(_shown(name), f"unknown key; allowed: {', '.join(sorted(EVENT_KEYS))}")

    if "id" in element:
        event_id = element["id"]
        if not isinstance(event_id, str) or not event_id.strip():
            raise fail("id", "must be a non-empty string")
        if len(event_id) > MAX_ID_CHARS:
            raise fail("id", f"longer than {MAX_ID_CHARS} characters")

    event_type = element.get("type")
    if not isinstance(event_type, str):
        raise fail("type", f"required: one of {', '.join(EVENT_TYPES)}")
    if event_type not in EVENT_TYPES:
        raise fail(
            "type", f"unknown type {_shown(event_type)!r}; expected one of {', '.join(EVENT_TYPES)}"
        )

    channel = element.get("channel", default_channel)
    if channel is None:
        raise fail("channel", f"required: source {source!r} has no default channel")
    if not isinstance(channel, str):
        raise fail("channel", "must be a string")
    if channel not in channels:
        raise fail("channel", f"unknown channel {_shown(channel)!r}")
    custom_fields = channels[channel]

    contact = _contact(element, fail)

    if "occurred_at" in element:
        _check_occurred_at(element["occurred_at"], fail)
    fields = element.get("fields", {})
    if not isinstance(fields, dict):
        raise fail("fields", "must be an object of field name to value")
    tags = element.get("tags", [])
    if not isinstance(tags, list):
        raise fail("tags", "must be an array of strings")

    try:
        return make_command(
            EVENT_TYPES[event_type],
            channel,
            contact,
            fields=fields,
            tags=tags,
            custom_fields=custom_fields,
        )
    except CommandError as error:
        raise fail(_command_field(error.field), error.detail) from None


def _command_field(name: str) -> str:
    """``fields.<name>`` as make_command spells it, with a sender's long name shortened."""
    head, dot, rest = name.partition(".")
    return f"{head}.{_shown(rest)}" if dot else name


def _contact(element: dict[str, Any], fail: _Fail) -> ContactRef:
    has_match, has_id = "match" in element, "contact_id" in element
    if has_match and has_id:
        raise fail("contact_id", "name the contact by match or by contact_id, not both")
    if has_id:
        contact_id = element["contact_id"]
        if isinstance(contact_id, bool) or not isinstance(contact_id, str | int):
            raise fail("contact_id", "must be a non-empty string or an integer")
        text = str(contact_id)
        if not text.strip():
            raise fail("contact_id", "must be a non-empty string or an integer")
        if len(text) > MAX_ID_CHARS:
            raise fail("contact_id", f"longer than {MAX_ID_CHARS} characters")
        return ContactRef(contact_id=text)
    if not has_match:
        raise fail("match", "required: name the contact by match or by contact_id")
    match = element["match"]
    if not isinstance(match, dict) or len(match) != 1:
        raise fail("match", 'must be an object with exactly one field, as {"email": "..."}')
    ((name, value),) = match.items()
    where = f"match.{_shown(name)}"
    if limits.invalid_field_names([name]):
        raise fail(where, "not a contact field or custom field key")
    if value is None or not isinstance(value, str | int | float | bool):
        raise fail(where, "must be a non-empty string, number or boolean")
    text = limits.wire_value(value)
    if not text.strip():
        raise fail(where, "must not be empty")
    if len(text) > MAX_MATCH_CHARS:
        raise fail(where, f"longer than {MAX_MATCH_CHARS} characters")
    return ContactRef(match_field=name, match_value=text)


def _check_occurred_at(value: Any, fail: _Fail) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return  # json.loads already refused NaN and infinities
    if isinstance(value, str) and len(value) <= 64:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return
    raise fail("occurred_at", "must be an ISO 8601 date-time string or a Unix time in seconds")
