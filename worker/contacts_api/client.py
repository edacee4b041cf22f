"""A client for one channel of the Contacts API.

Owns the six requests and their wire format: bearer auth, JSON bodies, pagination by
``links.next``, Base64 contact ids on Viber channels, booleans as ``true``/``false`` and
properly encoded query values. Writes that exceed the documented limits are split into
several calls, in order, each item sent once. Field names are checked before any call.

It does not retry, sleep or pace itself: a ``before_call`` hook, run before every HTTP
request, is where a rate limiter plugs in, and the retry policy lives in the worker.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter

from worker.contacts_api import limits
from worker.contacts_api.errors import (
    ContactsApiError,
    UnexpectedResponse,
    ValidationError,
    map_error,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (3.05, 10.0)
MAX_PAGES = 1000
"""A lookup that would follow more pages than this is refused: a server bug, not data."""


@dataclass(frozen=True)
class Contact:
    """A contact as the API returns it."""

    id: str
    custom_fields: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    created_at: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> Contact:
        """Read a contact object, tolerating absent optional parts."""
        if not isinstance(data, dict) or data.get("id") in (None, ""):
            raise UnexpectedResponse(f"not a contact object: {str(data)[:200]}")
        fields = data.get("custom_fields") or {}
        tags = data.get("tags") or []
        created = data.get("created_at")
        return cls(
            id=str(data["id"]),
            custom_fields=dict(fields) if isinstance(fields, dict) else {},
            tags=[str(tag) for tag in tags] if isinstance(tags, list) else [],
            created_at=created if isinstance(created, int) else None,
        )


class ContactsClient:
    """One channel's view of the Contacts API, over one pooled ``requests.Session``."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        platform: str = "whatsapp",
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        custom_fields: frozenset[str] | None = None,
        before_call: Callable[[], None] | None = None,
        session: requests.Session | None = None,
        pool_size: int = 10,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.platform = platform.lower()
        self.timeout = timeout
        self.custom_fields = custom_fields
        self.before_call = before_call
        self.session = session or requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._token = token
        origin = urlsplit(self.base_url)
        self._origin = (origin.scheme, origin.netloc)

    def __repr__(self) -> str:
        return f"ContactsClient(base_url={self.base_url!r}, platform={self.platform!r})"

    def close(self) -> None:
        """Release the pooled connections."""
        self.session.close()

    # -- the six requests -------------------------------------------------------------

    def find_by_custom_field(self, name: str, value: Any) -> list[Contact]:
        """Every contact whose field ``name`` equals ``value``, across all pages."""
        self._check_field_names([name])
        url = f"{self.base_url}/contact/by_custom_field"
        params: dict[str, str] | None = {"name": name, "value": limits.wire_value(value)}
        found: list[Contact] = []
        for _ in range(MAX_PAGES):
            body = self._call("GET", url, params=params, what="GET /contact/by_custom_field")
            if not isinstance(body, dict) or not isinstance(body.get("data"), list):
                raise UnexpectedResponse("GET /contact/by_custom_field: no data list in page")
            found.extend(Contact.from_json(item) for item in body["data"])
            links = body.get("links")
            next_url = self._next_page(links.get("next") if isinstance(links, dict) else None)
            if next_url is None:
                return found
            url, params = next_url, None  # links.next carries the query, page included
        raise UnexpectedResponse(f"GET /contact/by_custom_field: more than {MAX_PAGES} pages")

    def get(self, contact_id: str) -> Contact:
        """The contact with this id; :class:`NotFound` when there is none."""
        body = self._call("GET", self._contact_url(contact_id), what="GET /contact/{id}")
        if not isinstance(body, dict):
            raise UnexpectedResponse("GET /contact/{id}: body is not an object")
        return Contact.from_json(body.get("data"))

    def update(self, contact_id: str, fields: Mapping[str, Any]) -> int:
        """Write ``fields`` on the contact, 30 a call; returns the number of calls made."""
        self._check_field_names(fields)
        groups = limits.field_chunks(fields)
        for group in groups:
            self._update_group(contact_id, group)
        return len(groups)

    def add_tags(self, contact_id: str, tags: Sequence[str]) -> int:
        """Add tags to the contact, 10 a call; returns the number of calls made."""
        return self._tags("POST", contact_id, tags)

    def remove_tags(self, contact_id: str, tags: Sequence[str]) -> int:
        """Remove tags from the contact, 10 a call; returns the number of calls made."""
        return self._tags("DELETE", contact_id, tags)

    def create(self, fields: Mapping[str, Any]) -> str:
        """Create a contact with ``fields`` and return its id.

        More than 30 fields become a create of the first 30 and updates of the rest. When a
        follow-up update fails, the error carries the new id in ``created_contact_id`` so
        that a retry updates the contact instead of creating it again.
        """
        self._check_field_names(fields)
        if not fields:
            raise ValidationError("a contact is created with at least one field")
        first, *rest = limits.field_chunks(fields)
        body = self._call(
            "POST", f"{self.base_url}/contact", json=_custom_fields(first), what="POST /contact"
        )
        new_id = _data_id(body, "POST /contact")
        try:
            for group in rest:
                self._update_group(new_id, group)
        except ContactsApiError as error:
            error.created_contact_id = new_id
            raise
        return new_id

    # -- helpers ----------------------------------------------------------------------

    def path_id(self, contact_id: str) -> str:
        """The contact id as it goes in a path: Base64 on Viber, always percent-encoded."""
        raw = str(contact_id)
        if not raw:
            raise ValidationError("a contact id is required")
        if self.platform == "viber":
            raw = base64.b64encode(raw.encode("utf-8")).decode("ascii")
        return quote(raw, safe="")

    def _contact_url(self, contact_id: str) -> str:
        return f"{self.base_url}/contact/{self.path_id(contact_id)}"

    def _update_group(self, contact_id: str, group: dict[str, Any]) -> None:
        body = self._call(
            "PUT",
            self._contact_url(contact_id),
            json=_custom_fields(group),
            what="PUT /contact/{id}",
        )
        _data_id(body, "PUT /contact/{id}")

    def _tags(self, method: str, contact_id: str, tags: Sequence[str]) -> int:
        if isinstance(tags, str):
            raise ValidationError("tags must be a list of strings, not one string")
        bad = [tag for tag in tags if not isinstance(tag, str) or not tag.strip()]
        if bad:
            raise ValidationError(f"tags must be non-empty strings: {bad[:5]!r}")
        groups = limits.tag_chunks(tags)
        if not groups:
            raise ValidationError("at least one tag is required")
        url = f"{self._contact_url(contact_id)}/tags"
        for group in groups:
            self._call(method, url, json={"tags": group}, what=f"{method} /contact/{{id}}/tags")
        return len(groups)

    def _check_field_names(self, names: Any) -> None:
        bad = limits.invalid_field_names(list(names), self.custom_fields)
        if bad:
            raise ValidationError(f"fields that cannot be written: {', '.join(bad)}")

    def _next_page(self, next_url: Any) -> str | None:
        if not next_url:
            return None
        parts = urlsplit(str(next_url))
        if (parts.scheme, parts.netloc) != self._origin:
            # Never send the token to another host, whatever a response says.
            raise UnexpectedResponse("GET /contact/by_custom_field: links.next leaves the API")
        return str(next_url)

    def _call(
        self,
        method: str,
        url: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> Any:
        if self.before_call is not None:
            self.before_call()
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        started = time.monotonic()
        try:
            response = self.session.request(
                method, url, params=params, json=json, headers=headers, timeout=self.timeout
            )
        except requests.RequestException as exc:
            error = map_error(exc, what=what)
            log.info("contacts_api %s failed: %s", what, error.reason)
            raise error from None
        elapsed_ms = (time.monotonic() - started) * 1000
        log.info("contacts_api %s -> %s in %.0f ms", what, response.status_code, elapsed_ms)
        if response.status_code != 200:
            raise map_error(response, what=what)
        try:
            return response.json()
        except ValueError:
            raise UnexpectedResponse(f"{what}: success body is not JSON") from None


def _custom_fields(fields: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
    return {
        "custom_fields": [
            {"name": name, "value": limits.wire_value(value)} for name, value in fields.items()
        ]
    }


def _data_id(body: Any, what: str) -> str:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or data.get("id") in (None, ""):
        raise UnexpectedResponse(f"{what}: no data.id in the answer")
    return str(data["id"])
