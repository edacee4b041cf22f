"""What every source module shares: the request it sees, the records it yields, the typed
refusals it may raise, and the contract a source module fulfils.

A source module does two things and nothing else (mapping and enqueueing are shared):

- ``verify(request, secrets, options, now)``: check authenticity exactly as its vendor signs,
  on the raw bytes, in constant time, with the vendor's encoding and replay window;
- ``records(request, options)``: flatten the payload into :class:`Record` values, one per
  item for batched senders, of plain key → value.

Refusals::

    SourceRefusal(status, error, detail, field=None)
     ├── Unauthenticated     401: missing, bad or stale signature / credentials
     ├── MalformedBody       400: not the encoding or shape the vendor sends
     └── InvalidRecord       422: well-formed but unusable (names the field)

Each module also declares ``KIND`` (its config ``kind``), ``CONTENT_TYPES`` (accepted
mimetypes), ``DEFAULT_FIELDS`` (record key → contact field), ``DEFAULT_MATCH`` (the contact
field that names the contact), and ``Options`` (a pydantic model of its own config keys).
"""

from __future__ import annotations

import hmac
import json
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

MAX_RECORDS = 100

Action = Literal["upsert", "tag", "untag"]


class SourceRefusal(Exception):
    """A delivery we refuse; ``status`` and ``error`` become the HTTP answer."""

    status = 400
    error = "refused"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class Unauthenticated(SourceRefusal):
    """401: the delivery is not proven to come from the vendor."""

    status = 401
    error = "invalid_signature"

    def __init__(self, detail: str, *, error: str | None = None) -> None:
        super().__init__(detail)
        if error is not None:
            self.error = error


class MalformedBody(SourceRefusal):
    """400: the body is not what this vendor sends."""

    status = 400
    error = "malformed_body"


class InvalidRecord(SourceRefusal):
    """422: the body is well-formed but a record cannot become a command."""

    status = 422
    error = "invalid_event"


@dataclass(frozen=True)
class InboundRequest:
    """A delivery as a source sees it: plain values, no Flask."""

    method: str
    url: str
    """The full external URL the sender called (scheme and host as seen from outside,
    query string in its original order)."""
    headers: Mapping[str, str]
    """Lower-cased header names."""
    body: bytes
    mimetype: str
    query: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] = field(default_factory=dict)
    """Parsed urlencoded or multipart fields (text parts only)."""

    def header(self, name: str) -> str | None:
        """A header's value by case-insensitive name."""
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Record:
    """One item of a delivery, flattened."""

    key: str
    """Identifies the delivery of this item, for deduplication (unique per source)."""
    type: str
    """The vendor's event type (``contact.propertyChange``, ``form_response``…)."""
    values: Mapping[str, Any]
    """Plain key → scalar value; the source's mapping turns keys into contact fields."""
    action: Action = "upsert"
    tags: Sequence[str] = ()
    """Tags the source itself implies for this record (besides the configured ones)."""


class SourceOptions(BaseModel):
    """Base of a source kind's own config keys (none by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceModule(Protocol):
    """What a source module provides (modules satisfy this structurally)."""

    KIND: str
    CONTENT_TYPES: frozenset[str]
    DEFAULT_FIELDS: Mapping[str, str]
    DEFAULT_MATCH: str
    Options: type[SourceOptions]

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Any,
        now: Callable[[], float],
    ) -> None: ...

    def records(self, request: InboundRequest, options: Any) -> list[Record]: ...


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key[:64]!r} appears twice in one object")
        result[key] = value
    return result


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""A JSON escape of a UTF-16 surrogate (``\\ud800`` to ``\\udfff``); a decoded body holds
no other way to write one (UTF-8 cannot encode a surrogate)."""


_decoders = threading.local()


def _decoder() -> json.JSONDecoder:
    """This thread's strict decoder: ``json.loads`` with hooks builds one per call. One
    per thread, as the C scanner keeps a memo of keys for the document it reads, and the
    hooks (Python) let another thread run in the middle of a document."""
    decoder: json.JSONDecoder | None = getattr(_decoders, "decoder", None)
    if decoder is None:
        decoder = _decoders.decoder = json.JSONDecoder(
            parse_float=_finite_float,
            parse_constant=_no_constants,
            object_pairs_hook=_unique_keys,
        )
    return decoder


def load_json(body: bytes) -> Any:
    """Parse a body strictly: UTF-8, no NaN/Infinity, no repeated keys, bounded nesting."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBody("body is not UTF-8") from None
    try:
        if text.startswith("\ufeff"):  # what json.loads checks before its decoder
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        data = _decoder().decode(text)
        # An escaped lone surrogate ("\ud800") parses but can never be sent on as UTF-8;
        # only a body with such an escape can hold one.
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(data, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise MalformedBody("body is nested too deeply") from None
    except UnicodeEncodeError:
        raise MalformedBody("body holds an unpaired surrogate escape") from None
    except ValueError as error:  # JSONDecodeError, and the hooks' refusals
        raise MalformedBody(f"body is not valid JSON: {str(error)[:200]}") from None
    return data


def as_bytes(text: str) -> bytes:
    """Text as bytes for a constant-time comparison (``hmac.compare_digest`` refuses
    non-ASCII ``str``); lone surrogates from a hostile header survive the encoding."""
    return text.encode("utf-8", "surrogatepass")


def check_token(given: Sequence[str], secrets: Sequence[str], *, missing: str) -> None:
    """A shared secret sent in a URL, header or form field: any of ``given`` must equal
    one of ``secrets``, compared in constant time. ``missing`` says where it was expected."""
    if not given:
        raise Unauthenticated(missing, error="missing_token")
    if not secrets:
        raise Unauthenticated("the source has no secret configured", error="invalid_token")
    if not any(
        hmac.compare_digest(as_bytes(value), as_bytes(secret))
        for value in given
        for secret in secrets
    ):
        raise Unauthenticated("the token does not match", error="invalid_token")


def scalar(value: Any) -> Any:
    """A record value: scalars as they are, lists of scalars joined with ", ", else None."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ", ".join(str(v) for v in value)
    return None
