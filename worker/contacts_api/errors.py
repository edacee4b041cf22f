"""The Contacts API's error tree, and the one function that builds it from the wire.

::

    ContactsApiError
    ├── TransientError               worth trying again later
    │   ├── RateLimited              429, with ``retry_after`` seconds when the API sent it
    │   ├── ServerError              5xx
    │   ├── Timeout                  connect or read timeout
    │   └── ConnectionFailed         refused, reset, DNS, TLS
    └── PermanentError               trying again cannot help
        ├── Unauthorized             401: the channel's token is missing or wrong
        ├── Forbidden                403 with the API's message ("General")
        │   └── NotFound             403 "no such contact"
        ├── MethodNotAllowed         405
        ├── ValidationError          refused by us before any call (also a malformed URL)
        └── UnexpectedResponse       any other status, or a success body we cannot read

Only :func:`map_error` looks at status codes and ``requests`` exceptions. No message built
here carries the token: messages come from the API's body and the request's method and path.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import math
import time
from collections.abc import Callable

import requests


class ContactsApiError(Exception):
    """Any failure of a Contacts API call."""

    status: int | None = None
    reason = "error"
    created_contact_id: str | None = None
    """Set when a create succeeded before a later call of the same request failed."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status})"


class TransientError(ContactsApiError):
    """A failure that may pass: the same call can succeed later."""


class RateLimited(TransientError):
    """429 Too Many Requests; ``retry_after`` is in seconds when the API said."""

    status = 429
    reason = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, status=429)
        self.retry_after = retry_after


class ServerError(TransientError):
    """A 5xx answer."""

    reason = "server_error"


class Timeout(TransientError):
    """No answer within the client's connect or read timeout."""

    reason = "timeout"


class ConnectionFailed(TransientError):
    """The API could not be reached (refused, reset, name resolution, TLS)."""

    reason = "connection_failed"


class PermanentError(ContactsApiError):
    """A refusal that the same call will meet again."""


class Unauthorized(PermanentError):
    """401: the channel's token is missing, unknown or revoked."""

    status = 401
    reason = "unauthorized"


class Forbidden(PermanentError):
    """403 "General": the API refused the request; ``message`` says why."""

    status = 403
    reason = "forbidden"


class NotFound(Forbidden):
    """403 "no such contact": the contact id names no contact on this channel."""

    reason = "no_such_contact"


class MethodNotAllowed(PermanentError):
    """405: the method is not served on that path."""

    status = 405
    reason = "method_not_allowed"


class ValidationError(PermanentError):
    """A request we refuse to send: it breaks one of the API's documented rules."""

    reason = "invalid"


class UnexpectedResponse(PermanentError):
    """A status the API does not document, or a success body that cannot be read."""

    reason = "unexpected_response"


def api_message(response: requests.Response) -> str:
    """The API's own words from an error body, read tolerantly.

    Accepts ``{"status": "error", "message": str | [str]}``, ``{"message": ...}``,
    ``{"error": ...}`` and bodies that are not JSON at all.
    """
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        text = response.text.strip()
        return text[:300] if text else (response.reason or f"HTTP {response.status_code}")
    if isinstance(body, dict):
        message = body.get("message", body.get("error"))
        if isinstance(message, list):
            return "; ".join(str(part) for part in message)
        if message is not None:
            return str(message)
    return json.dumps(body)[:300]


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a delta in seconds or an HTTP date.

    Returns ``None`` when the header is absent or unreadable, and never a negative number.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000": an HTTP date is always UTC, never local time
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now())


_UNSENDABLE = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.URLRequired,
)


def map_error(
    outcome: requests.Response | requests.RequestException,
    *,
    what: str,
    now: Callable[[], float] = time.time,
) -> ContactsApiError:
    """Translate a failed response or a ``requests`` exception into our error tree.

    ``what`` names the call (method and path, never the token) for the message.
    """
    if isinstance(outcome, requests.RequestException):
        if isinstance(outcome, _UNSENDABLE):
            # A malformed base URL or header: trying again cannot help.
            return ValidationError(f"{what}: cannot send the request ({type(outcome).__name__})")
        if isinstance(outcome, requests.Timeout):
            return Timeout(f"{what}: timed out")
        if isinstance(outcome, requests.ConnectionError):
            return ConnectionFailed(f"{what}: could not connect ({type(outcome).__name__})")
        return ConnectionFailed(f"{what}: request failed ({type(outcome).__name__})")

    status = outcome.status_code
    message = api_message(outcome)
    if status == 429:
        retry_after = parse_retry_after(outcome.headers.get("Retry-After"), now=now)
        return RateLimited(f"{what}: {message}", retry_after=retry_after)
    if status == 401:
        return Unauthorized(f"{what}: {message}", status=401)
    if status == 403:
        if "no such contact" in message.lower():
            return NotFound(f"{what}: {message}", status=403)
        return Forbidden(f"{what}: {message}", status=403)
    if status == 405:
        return MethodNotAllowed(f"{what}: {message}", status=405)
    if status >= 500:
        return ServerError(f"{what}: {message}", status=status)
    return UnexpectedResponse(f"{what}: HTTP {status}: {message}", status=status)
