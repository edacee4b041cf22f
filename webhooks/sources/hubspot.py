"""HubSpot: app webhooks (``contact.*`` subscriptions), a JSON array of up to 100 events.

Signatures (checked on the raw body, in constant time, with the app's client secret):

- ``v3`` (default): ``X-HubSpot-Signature-v3`` = base64(HMAC-SHA256(secret, method + URI +
  body + timestamp)), ``X-HubSpot-Request-Timestamp`` in milliseconds, refused when more than
  5 minutes away from now. The URI is the full URL HubSpot called, with the escapes HubSpot
  lists (``%3A %2F %3F %40 %21 %24 %27 %28 %29 %2A %2C %3B``) decoded;
- ``v1`` / ``v2`` (only when ``signature_versions`` allows them): ``X-HubSpot-Signature`` =
  hex SHA-256 of secret + body (v1) or secret + method + URI + body (v2), named by
  ``X-HubSpot-Signature-Version``. Neither has a timestamp, so neither has a replay window.

Events: ``contact.creation`` and ``contact.propertyChange`` are upserts (a property change
carries the one changed property, keyed by its HubSpot name); ``contact.deletion`` and
``contact.privacyDeletion`` follow ``on_delete`` (the Contacts API cannot delete: by default
the contact is tagged ``hubspot-deleted``). Every other subscription type (``deal.*``,
``company.*``, ``contact.merge``…) is ignored and logged, never refused: HubSpot retries a
whole batch on any non-2xx answer. The HubSpot object id is the record key ``hubspot_id``.
Docs: https://developers.hubspot.com/docs/api/webhooks/validating-requests
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, field_validator

from webhooks.sources.base import (
    MAX_RECORDS,
    InboundRequest,
    InvalidRecord,
    MalformedBody,
    Record,
    SourceOptions,
    Unauthenticated,
    load_json,
    scalar,
)

log = logging.getLogger(__name__)

KIND = "hubspot"
CONTENT_TYPES = frozenset({"application/json"})
DEFAULT_FIELDS = {
    "hubspot_id": "hubspot_id",
    "email": "email",
    "firstname": "firstName",
    "lastname": "lastName",
    "phone": "phone",
    "hs_language": "language",
}
DEFAULT_MATCH = "hubspot_id"

V3_HEADER = "x-hubspot-signature-v3"
TIMESTAMP_HEADER = "x-hubspot-request-timestamp"
SIGNATURE_HEADER = "x-hubspot-signature"
VERSION_HEADER = "x-hubspot-signature-version"
MAX_AGE_MS = 5 * 60 * 1000
_MAX_TIMESTAMP_DIGITS = 15

_UPSERTS = frozenset({"contact.creation", "contact.propertyChange"})
_DELETIONS = frozenset({"contact.deletion", "contact.privacyDeletion"})
_V3_DECODED = {
    "%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$",
    "%27": "'", "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";",
}  # fmt: skip
_V3_ESCAPES = re.compile("|".join(_V3_DECODED), re.IGNORECASE)


class Options(SourceOptions):
    """HubSpot's own config keys."""

    signature_versions: tuple[Literal["v1", "v2", "v3"], ...] = Field(("v3",), min_length=1)
    """Signature versions accepted; v1 and v2 have no replay window, enable them only for
    apps that do not send v3."""
    public_url: str | None = None
    """The exact target URL configured in HubSpot, when the receiver sees another one
    (behind a proxy that rewrites the scheme, host or path)."""
    on_delete: Literal["tag", "ignore"] = "tag"
    """What a deleted HubSpot contact does: add ``deleted_tag``, or nothing (logged)."""
    deleted_tag: str = Field("hubspot-deleted", min_length=1, max_length=255)

    @field_validator("public_url")
    @classmethod
    def _absolute(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError("public_url must be an absolute http(s) URL")
        return url


def as_uri(url: str) -> str:
    """``url`` as a URI: what the WSGI layer decoded for display is escaped again."""
    try:
        parts = urlsplit(url)
        path = quote(parts.path, safe="!$&'()*+,/:;=@%")
        query = quote(parts.query, safe="!$&'()*+,/:;=?@%")
    except ValueError:  # a malformed netloc, or text that is not Unicode (UnicodeError)
        raise Unauthenticated("the request URL cannot be parsed") from None
    return f"{parts.scheme}://{parts.netloc}{path}" + (f"?{query}" if query else "")


def v3_uri(url: str) -> str:
    """The URI as a v3 signature covers it: HubSpot's listed escapes decoded, in one pass."""
    return _V3_ESCAPES.sub(lambda match: _V3_DECODED[match.group().upper()], as_uri(url))


def sign_v3(secret: str, method: str, url: str, body: bytes, timestamp: str) -> str:
    """The ``X-HubSpot-Signature-v3`` value for a request to ``url``."""
    message = method.encode() + v3_uri(url).encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def sign_legacy(version: str, secret: str, method: str, url: str, body: bytes) -> str:
    """The ``X-HubSpot-Signature`` value for ``version`` ``v1`` or ``v2``."""
    if version == "v1":
        return hashlib.sha256(secret.encode() + body).hexdigest()
    message = secret.encode() + method.encode() + as_uri(url).encode() + body
    return hashlib.sha256(message).hexdigest()


def verify(
    request: InboundRequest, secrets: Sequence[str], options: Options, now: Callable[[], float]
) -> None:
    """Check the newest signature the request carries that ``signature_versions`` allows."""
    url = options.public_url or request.url
    allowed = options.signature_versions
    v3 = request.header(V3_HEADER)
    if "v3" in allowed and v3:
        timestamp = (request.header(TIMESTAMP_HEADER) or "").strip()
        if not timestamp:
            raise Unauthenticated("missing X-HubSpot-Request-Timestamp", error="missing_headers")
        if not (timestamp.isascii() and timestamp.isdigit()) or (
            len(timestamp) > _MAX_TIMESTAMP_DIGITS
        ):
            raise Unauthenticated("X-HubSpot-Request-Timestamp is not ms", error="stale_timestamp")
        if abs(now() * 1000 - int(timestamp)) > MAX_AGE_MS:
            raise Unauthenticated(
                "X-HubSpot-Request-Timestamp is more than 5 minutes away", error="stale_timestamp"
            )
        given = v3.strip().encode("utf-8", "surrogatepass")
        if not any(
            hmac.compare_digest(
                sign_v3(s, request.method, url, request.body, timestamp).encode(), given
            )
            for s in secrets
        ):
            raise Unauthenticated("X-HubSpot-Signature-v3 does not match the request")
        return
    legacy = request.header(SIGNATURE_HEADER)
    version = (request.header(VERSION_HEADER) or "").strip().lower()
    if legacy and version in ("v1", "v2"):
        if version not in allowed:
            raise Unauthenticated(
                f"signature version {version} is not accepted (signature_versions: "
                f"{', '.join(allowed)})"
            )
        given = legacy.strip().lower().encode("utf-8", "surrogatepass")
        if not any(
            hmac.compare_digest(
                sign_legacy(version, s, request.method, url, request.body).encode(), given
            )
            for s in secrets
        ):
            raise Unauthenticated(f"X-HubSpot-Signature ({version}) does not match the request")
        return
    wanted = "X-HubSpot-Signature-v3" if "v3" in allowed else "X-HubSpot-Signature"
    raise Unauthenticated(f"missing {wanted} header", error="missing_headers")


def _id(event: dict[str, Any], name: str, index: int) -> str:
    value = event.get(name)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value.strip() and len(value) <= 64:
        return value
    raise InvalidRecord(f"{name} must be a non-negative integer", field=f"[{index}].{name}")


def _record(index: int, event: Any, options: Options) -> Record | None:
    if not isinstance(event, dict):
        raise MalformedBody(f"[{index}] is not an event object", field=f"[{index}]")
    kind = event.get("subscriptionType")
    if not isinstance(kind, str) or not kind:
        raise MalformedBody(
            "subscriptionType must be a string", field=f"[{index}].subscriptionType"
        )
    if kind not in _UPSERTS and (kind not in _DELETIONS or options.on_delete == "ignore"):
        return None
    key = ":".join(_id(event, name, index) for name in ("portalId", "eventId", "occurredAt"))
    values: dict[str, Any] = {}
    if kind == "contact.propertyChange":
        name = event.get("propertyName")
        if not isinstance(name, str) or not name:
            raise InvalidRecord(
                "a propertyChange needs a propertyName", field=f"[{index}].propertyName"
            )
        values[name] = scalar(event.get("propertyValue"))
    values["portalId"] = scalar(event.get("portalId"))
    values["changeSource"] = scalar(event.get("changeSource"))
    values["hubspot_id"] = _id(event, "objectId", index)  # last: a property cannot shadow it
    if kind in _DELETIONS:
        return Record(key=key, type=kind, values=values, action="tag", tags=(options.deleted_tag,))
    return Record(key=key, type=kind, values=values)


def records(request: InboundRequest, options: Options) -> list[Record]:
    """One record per contact event; other events are counted in the log and skipped."""
    data = load_json(request.body)
    if not isinstance(data, list):
        raise MalformedBody("not a HubSpot webhook: the body must be a JSON array of events")
    if len(data) > MAX_RECORDS:
        raise InvalidRecord(f"{len(data)} events in one delivery; HubSpot sends {MAX_RECORDS}")
    found: list[Record] = []
    ignored: Counter[str] = Counter()
    for index, event in enumerate(data):
        record = _record(index, event, options)
        if record is None:
            ignored[str(event["subscriptionType"])[:64]] += 1
        else:
            found.append(record)
    if ignored:
        log.info(
            "ignored %d HubSpot event(s) this source does not use: %s",
            sum(ignored.values()),
            ", ".join(f"{kind} x{count}" for kind, count in sorted(ignored.items())),
        )
    return found
