"""Pipedrive: webhooks v2 for persons, authenticated with HTTP Basic auth.

Pipedrive signs nothing: the webhook is created with ``http_auth_user`` and
``http_auth_password``, and every delivery carries ``Authorization: Basic …``. The user name
is the ``username`` option, the password the source's secret; both are compared in
constant time. There is no timestamp to check: redelivery is caught by ``meta.id``.

A v2 body is ``{"meta": {...}, "data": {...}, "previous": {...}}``; ``data`` is the object
as it is now (``null`` for ``delete``, where ``previous`` holds its last state). Only
``person`` events become records; any other entity (deal, organization…) is acknowledged
and ignored, so one ``*.*`` webhook does no harm. A deleted person becomes a ``tag`` with
``deleted_tag`` by default (``on_delete``: ``tag``, ``untag`` the configured tags, or
``ignore``); the delete half of a merge (``meta.merged_to_id``) is ignored.
Docs: https://pipedrive.readme.io/docs/guide-for-webhooks-v2
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field

from webhooks.sources.base import (
    Action,
    InboundRequest,
    InvalidRecord,
    MalformedBody,
    Record,
    SourceOptions,
    Unauthenticated,
    load_json,
    scalar,
)

KIND = "pipedrive"
CONTENT_TYPES = frozenset({"application/json"})
DEFAULT_FIELDS = {
    "first_name": "firstName",
    "last_name": "lastName",
    "email": "email",
    "phone": "phone",
}
DEFAULT_MATCH = "email"
ENTITY = "person"
ACTIONS = frozenset({"create", "change", "delete"})
MAX_KEY_CHARS = 300
_REFUSED = "invalid_credentials"


class Options(SourceOptions):
    """Pipedrive's keys: the Basic auth user name, and what a deleted person does."""

    username: str = Field(min_length=1, max_length=200)
    """``http_auth_user`` of the webhook (the password is the source's ``secret``)."""
    on_delete: Literal["tag", "untag", "ignore"] = "tag"
    """``tag``: add ``deleted_tag``; ``untag``: remove the configured tags; ``ignore``."""
    deleted_tag: str = Field(default="pipedrive-deleted", min_length=1, max_length=255)


def may_untag(options: Options) -> bool:
    """Whether a record can remove tags (then the source must configure some)."""
    return options.on_delete == "untag"


def authorization(username: str, password: str) -> str:
    """The ``Authorization`` header value Pipedrive sends for these credentials."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return f"Basic {token}"


def _credentials(header: str) -> tuple[bytes, bytes]:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        raise Unauthenticated("Authorization is not Basic credentials", error=_REFUSED)
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Unauthenticated("Authorization is not valid base64", error=_REFUSED) from None
    username, colon, password = decoded.partition(b":")
    if not colon:
        raise Unauthenticated("Authorization holds no user:password pair", error=_REFUSED)
    return username, password


def verify(
    request: InboundRequest, secrets: Sequence[str], options: Any, now: Callable[[], float]
) -> None:
    """Check the Basic credentials against ``options.username`` and any of ``secrets``."""
    header = request.header("authorization")
    if not header:
        raise Unauthenticated("missing Authorization header", error=_REFUSED)
    username, password = _credentials(header)
    user_ok = hmac.compare_digest(username, options.username.encode())
    password_ok = False
    for secret in secrets:
        # No early exit: the time taken does not depend on which secret matched.
        password_ok |= hmac.compare_digest(password, secret.encode())
    if not (user_ok and password_ok):
        raise Unauthenticated("wrong Basic auth user name or password", error=_REFUSED)


def _pick(items: Any) -> Any:
    """The primary entry's value of ``[{"value", "primary"}…]``, else the first's."""
    if isinstance(items, str):
        return items
    if not isinstance(items, list):
        return None
    entries = [i for i in items if isinstance(i, dict) and isinstance(i.get("value"), str)]
    entries = [i for i in entries if i["value"].strip()]
    primary = [i for i in entries if i.get("primary") is True]
    chosen = primary or entries
    return chosen[0]["value"] if chosen else None


def _custom_value(value: Any) -> Any:
    # v2 custom fields may be plain values or objects such as {"value": …, "currency": …}.
    if isinstance(value, dict):
        return scalar(value.get("value"))
    return scalar(value)


def _flatten(person: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {
        "pipedrive_id": scalar(person.get("id", meta.get("entity_id"))),
        "name": scalar(person.get("name")),
        "first_name": scalar(person.get("first_name")),
        "last_name": scalar(person.get("last_name")),
        # v2 says "emails"/"phones"; v1-shaped objects say "email"/"phone".
        "email": _pick(person.get("emails", person.get("email"))),
        "phone": _pick(person.get("phones", person.get("phone"))),
    }
    for key in ("org_id", "owner_id", "label_ids"):
        if key in person:
            values[key] = scalar(person[key])
    custom = person.get("custom_fields")
    if isinstance(custom, dict):
        values.update({f"custom.{k}": _custom_value(v) for k, v in custom.items()})
    for key in ("action", "change_source", "user_id", "timestamp"):
        if key in meta:
            values[f"meta.{key}"] = scalar(meta[key])
    return values


def _deletion(options: Any) -> tuple[Action, tuple[str, ...]] | None:
    if options.on_delete == "ignore":
        return None
    if options.on_delete == "untag":
        return "untag", ()
    return "tag", (options.deleted_tag,)


def records(request: InboundRequest, options: Any) -> list[Record]:
    """One record per person event; other entities and actions give none."""
    data = load_json(request.body)
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict):
        raise MalformedBody("not a Pipedrive v2 webhook: no meta object")
    meta = data["meta"]
    event_id = meta.get("id")
    if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_KEY_CHARS:
        raise InvalidRecord(
            f"meta.id must be a non-empty string of at most {MAX_KEY_CHARS} characters",
            field="meta.id",
        )
    entity, action = meta.get("entity"), meta.get("action")
    if not isinstance(entity, str) or not isinstance(action, str):
        raise MalformedBody("meta.entity and meta.action must be strings")
    if entity != ENTITY or action not in ACTIONS:
        return []
    # ``data`` is null on delete; the person's last state is then in ``previous``.
    source = "previous" if action == "delete" else "data"
    person = data.get(source)
    if not isinstance(person, dict):
        raise MalformedBody(f"a person {action} needs a {source} object")
    values = _flatten(person, meta)
    kind = f"{entity}.{action}"
    if action != "delete":
        return [Record(key=event_id, type=kind, values=values)]
    deletion = _deletion(options)
    if deletion is None or meta.get("merged_to_id"):
        # A merge deletes one person and changes the other, who may share the email:
        # the change event keeps the surviving contact up to date, the delete must not tag it.
        return []
    verb, tags = deletion
    return [Record(key=event_id, type=kind, values=values, action=verb, tags=tags)]
