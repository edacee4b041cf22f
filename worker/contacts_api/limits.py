"""The Contacts API's documented limits, and the pure functions that keep requests within them.

Owns: the writable field names, the per-request caps (30 fields, 10 tags), field-name
validation, value encoding and the splitting of oversized writes into calls. Does no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

MAX_FIELDS_PER_CALL = 30
MAX_TAGS_PER_CALL = 10
PAGE_SIZE = 10

STANDARD_FIELDS: frozenset[str] = frozenset(
    {"firstName", "lastName", "profilePic", "language", "phone", "email"}
)
"""The six standard contact fields the API lets a caller write."""

READ_ONLY_FIELDS: frozenset[str] = frozenset({"locale", "timezone", "gender"})
"""Fields the API shows on a contact but does not let a caller write."""

CUSTOM_FIELD_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
"""What a custom field key looks like: the Contact Field module's identifiers."""

T = TypeVar("T")


def invalid_field_names(
    names: Iterable[str], custom_fields: frozenset[str] | None = None
) -> list[str]:
    """Return the names that may not be written, in the order given.

    A name may be written when it is a standard field or a custom field key. When the
    channel's custom fields are known (``custom_fields``), only those keys count; otherwise
    any well-formed key that is not a read-only standard field does.
    """
    bad = []
    for name in names:
        if name in STANDARD_FIELDS:
            continue
        well_formed = name not in READ_ONLY_FIELDS and CUSTOM_FIELD_KEY.match(name) is not None
        declared = custom_fields is None or name in custom_fields
        if not (well_formed and declared):
            bad.append(name)
    return bad


def wire_value(value: Any) -> str:
    """Render a field value as the API expects it: booleans as ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """Yield consecutive slices of at most ``size`` items, in order, each item once."""
    if size < 1:
        raise ValueError("size must be at least 1")
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def field_chunks(fields: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Split fields into groups of at most 30, keeping their order."""
    return [dict(group) for group in chunks(list(fields.items()), MAX_FIELDS_PER_CALL)]


def tag_chunks(tags: Sequence[str]) -> list[list[str]]:
    """Split tags into groups of at most 10, keeping their order and dropping repeats."""
    unique = list(dict.fromkeys(tags))
    return list(chunks(unique, MAX_TAGS_PER_CALL))


def calls_for_fields(field_count: int) -> int:
    """How many calls writing ``field_count`` fields takes (create or update)."""
    return -(-field_count // MAX_FIELDS_PER_CALL)


def calls_for_tags(tag_count: int) -> int:
    """How many calls adding or removing ``tag_count`` distinct tags takes."""
    return -(-tag_count // MAX_TAGS_PER_CALL)
