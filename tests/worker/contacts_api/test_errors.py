"""Reading error bodies and Retry-After, and mapping failures onto the error tree.

Responses are built in memory: this is parsing, not a stand-in for the API.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator

import pytest
import requests

from worker.contacts_api.errors import (
    ConnectionFailed,
    ContactsApiError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PermanentError,
    RateLimited,
    ServerError,
    Timeout,
    TransientError,
    Unauthorized,
    UnexpectedResponse,
    ValidationError,
    api_message,
    map_error,
    parse_retry_after,
)

NOW = 1_700_000_000.0


def response(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> requests.Response:
    made = requests.Response()
    made.status_code = status
    made._content = body
    made.encoding = "utf-8"
    made.headers.update(headers or {})
    return made


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"status": "error", "message": "no such contact"}', "no such contact"),
        (b'{"status": "error", "message": ["a is bad", "b is bad"]}', "a is bad; b is bad"),
        (b'{"message": "Too Many Attempts."}', "Too Many Attempts."),
        (b'{"error": "invalid token"}', "invalid token"),
        (b'{"message": 42}', "42"),
        (b'["odd"]', '["odd"]'),
        (b"<html><h1>502 Bad Gateway</h1></html>", "<html><h1>502 Bad Gateway</h1></html>"),
        (b"   ", "HTTP 500"),
        (b"", "HTTP 500"),
    ],
)
def test_api_message_reads_any_body(body: bytes, message: str) -> None:
    assert api_message(response(500, body)) == message


def test_api_message_cuts_long_text() -> None:
    assert len(api_message(response(500, b"x" * 5000))) == 300


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("30", 30.0),
        (" 2 ", 2.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-5", 0.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("inf", None),
        ("nan", None),
        ("1e999", None),
    ],
)
def test_retry_after_as_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=lambda: NOW) == seconds


def test_retry_after_as_an_http_date() -> None:
    header = email.utils.formatdate(NOW + 90, usegmt=True)
    assert parse_retry_after(header, now=lambda: NOW) == pytest.approx(90)


@pytest.fixture
def local_time_not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in a zone far from UTC, so that reading a date as local time shows."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_time_not_utc")
def test_retry_after_as_a_date_without_zone_is_read_as_utc() -> None:
    header = email.utils.formatdate(NOW + 90).rsplit(" ", 1)[0] + " -0000"
    assert parse_retry_after(header, now=lambda: NOW) == pytest.approx(90)


def test_retry_after_date_in_the_past_is_zero() -> None:
    header = email.utils.formatdate(NOW - 600, usegmt=True)
    assert parse_retry_after(header, now=lambda: NOW) == 0.0


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, b'{"status": "error", "message": "Unauthenticated."}', Unauthorized),
        (403, b'{"status": "error", "message": "Maximum 30 fields"}', Forbidden),
        (403, b'{"status": "error", "message": "No such contact"}', NotFound),
        (403, b'{"status": "error", "message": ["no such contact"]}', NotFound),
        (405, b'{"status": "error", "message": "Method not allowed"}', MethodNotAllowed),
        (429, b'{"message": "Too Many Attempts."}', RateLimited),
        (500, b"", ServerError),
        (502, b"<html>bad gateway</html>", ServerError),
        (503, b'{"message": "down"}', ServerError),
        (404, b"", UnexpectedResponse),
        (418, b"teapot", UnexpectedResponse),
    ],
)
def test_statuses_map_to_their_class(status: int, body: bytes, kind: type) -> None:
    error = map_error(response(status, body), what="GET /contact/{id}")
    assert type(error) is kind
    assert error.status == status
    assert error.message.startswith("GET /contact/{id}: ")


def test_429_carries_retry_after() -> None:
    error = map_error(response(429, headers={"Retry-After": "17"}), what="x")
    assert isinstance(error, RateLimited)
    assert error.retry_after == 17


def test_429_without_header_has_no_retry_after() -> None:
    error = map_error(response(429), what="x")
    assert isinstance(error, RateLimited)
    assert error.retry_after is None


@pytest.mark.parametrize(
    "exception",
    [
        requests.exceptions.MissingSchema(),
        requests.exceptions.InvalidURL(),
        requests.exceptions.InvalidSchema(),
        requests.exceptions.InvalidHeader(),
    ],
)
def test_a_request_that_cannot_be_sent_is_permanent(exception: requests.RequestException) -> None:
    assert type(map_error(exception, what="GET /contact/{id}")) is ValidationError


@pytest.mark.parametrize(
    ("exception", "kind"),
    [
        (requests.ConnectTimeout(), Timeout),
        (requests.ReadTimeout(), Timeout),
        (requests.ConnectionError(), ConnectionFailed),
        (requests.exceptions.ChunkedEncodingError(), ConnectionFailed),
        (requests.exceptions.SSLError(), ConnectionFailed),
        (requests.RequestException(), ConnectionFailed),
    ],
)
def test_requests_exceptions_map_to_transient_errors(
    exception: requests.RequestException, kind: type
) -> None:
    error = map_error(exception, what="GET /contact/{id}")
    assert type(error) is kind
    assert isinstance(error, TransientError)


@pytest.mark.parametrize(
    ("kind", "parent"),
    [
        (RateLimited, TransientError),
        (ServerError, TransientError),
        (Timeout, TransientError),
        (ConnectionFailed, TransientError),
        (Unauthorized, PermanentError),
        (Forbidden, PermanentError),
        (NotFound, Forbidden),
        (MethodNotAllowed, PermanentError),
        (ValidationError, PermanentError),
        (UnexpectedResponse, PermanentError),
        (TransientError, ContactsApiError),
        (PermanentError, ContactsApiError),
    ],
)
def test_error_tree(kind: type, parent: type) -> None:
    assert issubclass(kind, parent)


def test_repr_names_the_class_message_and_status() -> None:
    assert repr(Forbidden("no", status=403)) == "Forbidden('no', status=403)"
