"""A plain HTML form posting straight from a browser, or Google Forms via Apps Script.

Bodies: ``application/x-www-form-urlencoded`` or ``multipart/form-data`` (text fields; files
are ignored) from a browser, or a JSON object (Apps Script's ``UrlFetchApp``). Fields are
kept as posted (``email``, ``first_name``…); a nested JSON object is flattened with dots.

Authenticity is a shared secret: a hidden field (option ``secret_field``, default
``_token``) or the query parameter (option ``token_param``, default ``token``), compared in
constant time; the field never reaches the record. A secret in a public page is visible to
anyone who reads the page: it keeps stray posts out, not a determined sender.

Spam: with ``honeypot_field`` set, a post that fills that (hidden) field is answered as if it
were accepted and records nothing, so a bot learns nothing. With ``redirect_url`` set, the
answer is ``303 See Other`` to that page, for a browser to land on a thank-you page.

Deduplication: the value of ``id_field`` (``responseId`` from Apps Script) when configured,
else the SHA-256 of the submitted fields (without the secret): a double click is recorded once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import field_validator

from webhooks.sources.base import (
    InboundRequest,
    InvalidRecord,
    MalformedBody,
    Record,
    SourceOptions,
    as_bytes,
    check_token,
    load_json,
    scalar,
)

KIND = "html_form"
CONTENT_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "application/json"}
)
DEFAULT_FIELDS = {
    "email": "email",
    "name": "firstName",
    "first_name": "firstName",
    "last_name": "lastName",
    "phone": "phone",
}
"""``first_name`` comes after ``name``, so it wins when a form posts both."""
DEFAULT_MATCH = "email"
MAX_DEPTH = 4
MAX_KEY_CHARS = 300
"""The ledger's event key column holds 300 characters."""


class Options(SourceOptions):
    """Where the secret travels, spam trap, thank-you page and deduplication field."""

    secret_field: str = "_token"  # noqa: S105 (a field name)
    """The (hidden) form field holding the secret; removed from the record."""
    token_param: str = "token"  # noqa: S105 (a parameter name)
    """The URL query parameter that may hold the secret instead."""
    honeypot_field: str | None = None
    """A field humans leave empty; a post that fills it is accepted and recorded as nothing."""
    redirect_url: str | None = None
    """Answer ``303`` with this ``Location`` instead of JSON (a browser's thank-you page)."""
    id_field: str | None = None
    """A field that identifies the submission (``responseId``); it must then be present."""

    @field_validator("redirect_url")
    @classmethod
    def _a_page(cls, url: str | None) -> str | None:
        if url is not None and (
            not url.startswith(("https://", "http://", "/"))
            or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url)
        ):
            raise ValueError("redirect_url must be an http(s) URL or a path, without spaces")
        return url


def _options(options: Any) -> Options:
    return options if isinstance(options, Options) else Options()


def _flatten(prefix: str, value: Any, into: dict[str, Any], depth: int = 0) -> None:
    if isinstance(value, dict):
        if depth < MAX_DEPTH:
            for key, part in value.items():
                _flatten(f"{prefix}.{key}" if prefix else str(key), part, into, depth + 1)
        return
    into[prefix] = scalar(value)


def fields(request: InboundRequest) -> dict[str, Any]:
    """The posted fields: the form's, or a JSON object's flattened."""
    if request.mimetype != "application/json":
        return dict(request.form)
    data = load_json(request.body)
    if not isinstance(data, dict):
        raise MalformedBody("a JSON body must be an object of field names to values")
    flat: dict[str, Any] = {}
    _flatten("", data, flat)
    return flat


def verify(
    request: InboundRequest, secrets: Sequence[str], options: Any, now: Callable[[], float]
) -> None:
    """Check the secret field or the query's token against any of ``secrets``."""
    options = _options(options)
    posted = fields(request).get(options.secret_field)
    given = [
        value
        for value in (posted, request.query.get(options.token_param))
        if isinstance(value, str) and value
    ]
    check_token(
        given,
        secrets,
        missing=f"missing the {options.secret_field!r} field or {options.token_param!r} parameter",
    )


def records(request: InboundRequest, options: Any) -> list[Record]:
    """One record per submission; none when the honeypot is filled."""
    options = _options(options)
    values = fields(request)
    values.pop(options.secret_field, None)
    if options.honeypot_field is not None:
        bait = values.pop(options.honeypot_field, None)
        if bait not in (None, ""):
            return []
    if options.id_field is not None:
        key = values.get(options.id_field)
        key = "" if key is None else str(key).strip()
        if not key or len(key) > MAX_KEY_CHARS:
            raise InvalidRecord(
                f"{options.id_field!r} must be 1 to {MAX_KEY_CHARS} characters",
                field=options.id_field,
            )
    else:
        canonical = json.dumps(values, sort_keys=True, ensure_ascii=False)
        key = hashlib.sha256(as_bytes(canonical)).hexdigest()
    return [Record(key=key, type="submission", values=values)]


def answer(recorded: Sequence[Any], options: Any) -> tuple[str, int, Mapping[str, str]] | None:
    """``303`` to ``redirect_url`` when one is set; else the receiver's JSON answer."""
    url = _options(options).redirect_url
    if url is None:
        return None
    return "", 303, {"Location": url}
