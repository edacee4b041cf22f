"""Applying one claimed command to the Contacts API: resolve the contact, then write.

Resolution: the command's contact id if it has one (given by the event, or found by an
earlier attempt), else a lookup on its match field. An upsert of a contact that does not
exist creates it with the match field set; a tag or untag of one is "no such contact".
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.contacts_api import ContactsApiError, ContactsClient, PermanentError, limits
from worker.ledger import Claimed


class NoSuchContact(PermanentError):
    """No contact matches the command's match field and value."""

    reason = "no_such_contact"


@dataclass
class Progress:
    """What an attempt learnt before it ended, kept when it fails so a retry can skip it."""

    contact_id: str | None = None


def estimate_calls(claimed: Claimed) -> int:
    """The calls the command will most likely make, to reserve them in one go (a lookup
    that spans pages reserves the rest as it goes; what is not used is given back)."""
    fields = claimed.payload.get("fields") or {}
    tags = claimed.payload.get("tags") or []
    calls = 1 if claimed.contact_id is None else 0
    if claimed.kind == "upsert":
        writing = len(fields) + (1 if claimed.contact_id is None else 0)
        calls += limits.calls_for_fields(writing) if fields or claimed.contact_id is None else 0
    calls += limits.calls_for_tags(len(set(tags)))
    return max(calls, 1)


def resolve(claimed: Claimed, client: ContactsClient) -> str | None:
    """The contact's id, or ``None`` when no contact matches."""
    if claimed.contact_id is not None:
        return claimed.contact_id
    assert claimed.match_field is not None and claimed.match_value is not None
    matches = client.find_by_custom_field(claimed.match_field, claimed.match_value)
    if not matches:
        return None
    # Several matches: the oldest contact is the one the business has been using.
    oldest = min(matches, key=lambda contact: (contact.created_at or 0, contact.id))
    return oldest.id


def apply(claimed: Claimed, client: ContactsClient, progress: Progress) -> str:
    """Apply the command; returns the contact id. Raises the client's errors."""
    fields = dict(claimed.payload.get("fields") or {})
    tags = list(claimed.payload.get("tags") or [])
    contact_id = progress.contact_id = resolve(claimed, client)
    if claimed.kind == "upsert":
        if contact_id is None:
            assert claimed.match_field is not None
            try:
                contact_id = client.create({claimed.match_field: claimed.match_value, **fields})
            except ContactsApiError as error:
                progress.contact_id = error.created_contact_id
                raise
            progress.contact_id = contact_id
        elif fields:
            client.update(contact_id, fields)
        if tags:
            client.add_tags(contact_id, tags)
        return contact_id
    if contact_id is None:
        raise NoSuchContact(
            f"no such contact: no contact has {claimed.match_field} = {claimed.match_value!r}"
        )
    if claimed.kind == "tag":
        client.add_tags(contact_id, tags)
    elif claimed.kind == "untag":
        client.remove_tags(contact_id, tags)
    else:
        raise ValueError(f"unknown command kind {claimed.kind!r}")
    return contact_id
