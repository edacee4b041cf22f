"""Commands: what an accepted event asks the Contacts API to do, as plain values.

A webhook source turns a vendor payload into :class:`Command` values; the ledger stores
them; the worker applies them. This module owns their shape and their validation rules
(the same writable-field rules the client enforces), and does no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from worker.contacts_api import limits

CommandKind = Literal["upsert", "tag", "untag"]
COMMAND_KINDS: tuple[CommandKind, ...] = ("upsert", "tag", "untag")

MAX_FIELDS_PER_COMMAND = 200
MAX_TAGS_PER_COMMAND = 100
MAX_VALUE_CHARS = 4096
MAX_MATCH_CHARS = 500
"""A match value names the contact in the ledger's keys: it is kept shorter than a field."""

Scalar = str | int | float | bool | None


class CommandError(ValueError):
    """A command that cannot be built; ``field`` names the offending part."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


@dataclass(frozen=True)
class ContactRef:
    """Names a contact: by its API id, or by one field and the value it must have."""

    contact_id: str | None = None
    match_field: str | None = None
    match_value: str | None = None

    def __post_init__(self) -> None:
        if self.contact_id is not None and not str(self.contact_id).strip():
            raise CommandError("contact_id", "must not be empty")
        by_id = self.contact_id is not None
        by_match = self.match_field is not None or self.match_value is not None
        if by_id == by_match:
            raise CommandError("contact", "name the contact by contact_id or by match, not both")
        if by_match and (not self.match_field or self.match_value in (None, "")):
            raise CommandError("match", "needs a field and a non-empty value")
        if by_match and len(str(self.match_value)) > MAX_MATCH_CHARS:
            raise CommandError(
                f"match.{self.match_field}", f"longer than {MAX_MATCH_CHARS} characters"
            )
        if self.contact_id is not None and len(str(self.contact_id)) > 200:
            raise CommandError("contact_id", "longer than 200 characters")

    @property
    def key(self) -> str:
        """Identifies the contact within a channel, for ordering and the id cache."""
        if self.contact_id is not None:
            return f"id:{self.contact_id}"
        return f"match:{self.match_field}={self.match_value}"


@dataclass(frozen=True)
class Command:
    """One change to one contact on one channel."""

    kind: CommandKind
    channel: str
    contact: ContactRef
    fields: Mapping[str, Scalar] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    def payload(self) -> dict[str, Any]:
        """The command's body as stored in the ledger (JSON-serialisable)."""
        return {"fields": dict(self.fields), "tags": list(self.tags)}


def check_scalar(where: str, value: Any) -> Scalar:
    """A field value must be a JSON scalar of bounded size."""
    if value is not None and not isinstance(value, str | int | float | bool):
        raise CommandError(where, "must be a string, number, boolean or null")
    if value is not None and len(str(value)) > MAX_VALUE_CHARS:
        raise CommandError(where, f"longer than {MAX_VALUE_CHARS} characters")
    if isinstance(value, float) and not math.isfinite(value):
        raise CommandError(where, "must be a finite number")
    return value


def make_command(
    kind: str,
    channel: str,
    contact: ContactRef,
    *,
    fields: Mapping[str, Any] | None = None,
    tags: Any = None,
    custom_fields: frozenset[str] | None = None,
) -> Command:
    """Build and validate a command; raises :class:`CommandError` naming what is wrong."""
    if kind not in COMMAND_KINDS:
        raise CommandError("type", f"unknown command kind {kind!r}")
    if fields is not None and not isinstance(fields, Mapping):
        raise CommandError("fields", "must be an object of field names to values")
    fields = dict(fields or {})
    if len(fields) > MAX_FIELDS_PER_COMMAND:
        raise CommandError("fields", f"more than {MAX_FIELDS_PER_COMMAND} fields")
    bad = limits.invalid_field_names(fields, custom_fields)
    if bad:
        raise CommandError(f"fields.{bad[0]}", "not a writable contact field or custom field key")
    checked = {name: check_scalar(f"fields.{name}", value) for name, value in fields.items()}
    if contact.match_field is not None:
        bad = limits.invalid_field_names([contact.match_field], custom_fields)
        if bad:
            raise CommandError(f"match.{bad[0]}", "not a contact field or custom field key")
    tag_list = _check_tags(tags)
    if kind == "upsert":
        if not checked and not tag_list:
            raise CommandError("fields", "an upsert needs at least one field or tag")
    elif not tag_list:
        raise CommandError("tags", f"a {kind} needs at least one tag")
    elif checked:
        raise CommandError("fields", f"a {kind} carries tags only")
    return Command(kind, channel, contact, checked, tag_list)


def _check_tags(tags: Any) -> tuple[str, ...]:
    if tags is None:
        return ()
    if not isinstance(tags, list | tuple):
        raise CommandError("tags", "must be a list of strings")
    if len(tags) > MAX_TAGS_PER_COMMAND:
        raise CommandError("tags", f"more than {MAX_TAGS_PER_COMMAND} tags")
    for index, tag in enumerate(tags):
        if not isinstance(tag, str) or not tag.strip():
            raise CommandError(f"tags[{index}]", "must be a non-empty string")
        if len(tag) > 255:
            raise CommandError(f"tags[{index}]", "longer than 255 characters")
    return tuple(dict.fromkeys(tags))
