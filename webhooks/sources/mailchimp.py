"""Mailchimp: audience webhooks, ``application/x-www-form-urlencoded`` with bracketed keys.

Mailchimp signs nothing and checks a webhook URL with a GET before using it
(``ANSWERS_GET``: the receiver answers that GET with 200, no token needed). Authenticity is
the source's ``secret`` in the URL's query (``?token=…``, option ``token_param``), compared
in constant time on every POST.

Keys: ``data[email]`` -> ``email``, ``data[merges][FNAME]`` -> ``merges.FNAME``, deeper
brackets joined with dots; ``type`` and ``fired_at`` as they are. What each type becomes:

- ``subscribe``, ``profile``: an upsert of the contact;
- ``upemail``: an upsert of the contact with the new address (``data[new_email]``);
- ``unsubscribe``, ``cleaned``: an untag, removing the source's configured tags;
- ``campaign`` and types Mailchimp may add: nothing (the delivery is answered 200).

Mailchimp sends no event id: a delivery's key is the SHA-256 (hex) of its raw body, which
holds ``fired_at``, so a retry of the same event is a duplicate.
Docs: https://mailchimp.com/developer/marketing/guides/sync-audience-data-webhooks/
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from webhooks.sources.base import (
    Action,
    InboundRequest,
    InvalidRecord,
    MalformedBody,
    Record,
    SourceOptions,
    check_token,
)

KIND = "mailchimp"
CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded"})
DEFAULT_FIELDS = {
    "email": "email",
    "merges.FNAME": "firstName",
    "merges.LNAME": "lastName",
    "merges.PHONE": "phone",
}
DEFAULT_MATCH = "email"
ANSWERS_GET = True

ACTIONS: Mapping[str, Action] = {
    "subscribe": "upsert",
    "profile": "upsert",
    "upemail": "upsert",
    "unsubscribe": "untag",
    "cleaned": "untag",
}
"""Event types that change a contact; any other type is recorded as nothing."""
BRACKETED = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
"""``data[merges][FNAME]``: a name, then any number of ``[part]`` groups."""


class Options(SourceOptions):
    """Where the shared secret travels in the webhook URL."""

    token_param: str = "token"  # noqa: S105 (a parameter name)
    """The URL query parameter holding the secret."""


def may_untag(options: Options) -> bool:
    """Unsubscribes remove the source's tags: it must configure some."""
    return True


def verify(
    request: InboundRequest, secrets: Sequence[str], options: Any, now: Callable[[], float]
) -> None:
    """Check the query's token against any of ``secrets``."""
    param = options.token_param if isinstance(options, Options) else Options().token_param
    given = request.query.get(param)
    check_token([given] if given else [], secrets, missing=f"missing the {param!r} query parameter")


def key_path(name: str) -> str:
    """``data[merges][FNAME]`` -> ``merges.FNAME``; other keys joined with dots."""
    found = BRACKETED.match(name)
    if found is None:
        return name
    parts = [found.group(1), *re.findall(r"\[([^\[\]]*)\]", found.group(2))]
    if parts[0] == "data" and len(parts) > 1:
        parts = parts[1:]
    return ".".join(parts)


def records(request: InboundRequest, options: Any) -> list[Record]:
    """One record for a change to a member; none for campaign and unknown types."""
    if not request.form:
        raise MalformedBody("not a Mailchimp webhook: no form fields")
    event_type = request.form.get("type", "").strip()
    if not event_type:
        raise MalformedBody("not a Mailchimp webhook: no type field", field="type")
    action = ACTIONS.get(event_type)
    if action is None:
        return []
    values = {key_path(name): value for name, value in request.form.items()}
    if event_type == "upemail":
        new_email = values.get("new_email", "").strip()
        if not new_email:
            raise InvalidRecord("an upemail needs data[new_email]", field="data[new_email]")
        values["email"] = new_email
    return [
        Record(
            key=hashlib.sha256(request.body).hexdigest(),
            type=event_type,
            values=values,
            action=action,
        )
    ]
