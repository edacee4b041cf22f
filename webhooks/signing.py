"""Standard Webhooks signatures: signing secrets, ``sign`` and ``verify``.

Owns the symmetric (``v1``, HMAC-SHA256) scheme of https://www.standardwebhooks.com/: the
``whsec_`` secret format, the signed content ``{webhook-id}.{webhook-timestamp}.{body}``, the
``±5 min`` replay window and the space-separated signature list used for key rotation.
It works on the raw body bytes and plain header values; it does not parse the body, know
about Flask, or decide what the HTTP answer is.

Errors (every malformed input becomes one of these, never anything else)::

    SignatureError                  the request is not authentically from the sender
     ├── MissingHeaders             webhook-id, webhook-timestamp or webhook-signature absent
     ├── StaleTimestamp             timestamp unparseable or outside the tolerance window
     └── InvalidSignature           malformed id or signature list, or no signature matches

A secret that cannot be decoded is a configuration error: :class:`ValueError`, whose message
never contains the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
MIN_SECRET_BYTES = 24
"""The specification asks for at least 24 random bytes (192 bits)."""
DEFAULT_TOLERANCE_S = 300
MAX_WEBHOOK_ID_CHARS = 256

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"

_SIGNATURE_VERSION = "v1"
_DIGEST_BYTES = hashlib.sha256().digest_size
_MAX_TIMESTAMP_DIGITS = 12  # seconds since 1970 stay below 10**12 until the year 33658


class SignatureError(Exception):
    """The request failed authentication; ``code`` is a stable machine-readable reason."""

    code = "invalid_signature"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class MissingHeaders(SignatureError):
    """One of the three Standard Webhooks headers is absent or empty."""

    code = "missing_headers"


class StaleTimestamp(SignatureError):
    """``webhook-timestamp`` is not an integer or lies outside the tolerance window."""

    code = "stale_timestamp"


class InvalidSignature(SignatureError):
    """The id or the signature list is malformed, or no signature matches any secret."""

    code = "invalid_signature"


class WebhookSecret:
    """A symmetric signing key. Its repr and str never show the key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(
                f"webhook secret too short: {len(key)} bytes, "
                f"Standard Webhooks requires at least {MIN_SECRET_BYTES}"
            )
        self._key = bytes(key)

    @classmethod
    def parse(cls, text: str) -> WebhookSecret:
        """Read ``whsec_<base64>`` (the prefix is optional, padding may be left out)."""
        encoded = text.strip().removeprefix(SECRET_PREFIX)
        if not encoded:
            raise ValueError("webhook secret is empty")
        encoded += "=" * (-len(encoded) % 4)
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            # ``from None``: the decoder's message may quote part of the secret.
            raise ValueError(
                "webhook secret is not valid base64 (expected whsec_ followed by base64)"
            ) from None
        return cls(key)

    @classmethod
    def generate(cls, nbytes: int = 32) -> WebhookSecret:
        """A new random secret."""
        return cls(_random.token_bytes(nbytes))

    def reveal(self) -> str:
        """The secret in its shareable ``whsec_<base64>`` form; handle the result with care."""
        return SECRET_PREFIX + base64.b64encode(self._key).decode("ascii")

    def digest(self, content: bytes) -> bytes:
        """HMAC-SHA256 of ``content`` under this key."""
        return hmac.new(self._key, content, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "WebhookSecret(<hidden>)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WebhookSecret):
            return NotImplemented
        return hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(self._key).digest())


class HeaderItems(Protocol):
    """Anything with ``items()`` yielding (name, value): a dict, werkzeug's ``Headers``."""

    def items(self) -> Iterable[tuple[str, str]]: ...


def _check_webhook_id(msg_id: str) -> str | None:
    """Why ``msg_id`` cannot be signed, or None.

    The signed content is ``id.timestamp.body``; an id holding a ``.`` would let one
    signature stand for a different (id, timestamp, body) split, so the spec forbids it.
    """
    if len(msg_id) > MAX_WEBHOOK_ID_CHARS:
        return f"webhook-id longer than {MAX_WEBHOOK_ID_CHARS} characters"
    if not (msg_id.isascii() and msg_id.isprintable()) or " " in msg_id:
        return "webhook-id must be printable ASCII without spaces"
    if "." in msg_id:
        return "webhook-id must not contain '.'"
    return None


def _signed_content(msg_id: str, timestamp: str, body: bytes) -> bytes:
    return f"{msg_id}.{timestamp}.".encode("ascii") + body


def sign(secret: WebhookSecret, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value ``v1,<base64>`` for one message.

    Raises :class:`ValueError` for an id the receiver would refuse or a negative timestamp.
    """
    problem = _check_webhook_id(msg_id) if msg_id else "webhook-id is empty"
    if problem:
        raise ValueError(problem)
    if timestamp < 0:
        raise ValueError("timestamp must not be negative")
    digest = secret.digest(_signed_content(msg_id, str(timestamp), body))
    return f"{_SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def _collect_headers(headers: HeaderItems) -> dict[str, list[str]]:
    wanted = {ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER}
    found: dict[str, list[str]] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in wanted:
            found.setdefault(lowered, []).append(value)
    return found


def _single(found: dict[str, list[str]], name: str) -> str:
    values = [value.strip() for value in found.get(name, [])]
    values = [value for value in values if value]
    if not values:
        raise MissingHeaders(f"missing {name} header")
    if len(values) > 1:
        raise InvalidSignature(f"{name} header given more than once")
    return values[0]


def _parse_timestamp(text: str) -> int:
    # int() alone would accept '+5', ' 5', '1_000' and non-ASCII digits; the spec says integer.
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_TIMESTAMP_DIGITS:
        raise StaleTimestamp("webhook-timestamp is not an integer number of seconds")
    return int(text)


def _v1_signatures(header: str) -> Iterable[bytes]:
    """The decoded ``v1`` signatures in the header; other versions and junk are skipped."""
    for entry in header.split():
        version, comma, encoded = entry.partition(",")
        if not comma or version != _SIGNATURE_VERSION:
            continue
        try:
            decoded = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(decoded) == _DIGEST_BYTES:
            yield decoded


def verify(
    secrets: WebhookSecret | Sequence[WebhookSecret],
    headers: HeaderItems,
    body: bytes,
    *,
    now: Callable[[], float] = time.time,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> None:
    """Check that ``body`` was signed by a holder of one of ``secrets``, recently.

    ``headers`` are matched case-insensitively. The signature header may hold several
    space-separated ``v1,<base64>`` entries; one matching any secret is enough. Returns
    None, or raises a :class:`SignatureError` subclass.
    """
    keys = [secrets] if isinstance(secrets, WebhookSecret) else list(secrets)
    if not keys:
        raise ValueError("verify needs at least one secret")

    found = _collect_headers(headers)
    msg_id = _single(found, ID_HEADER)
    timestamp_text = _single(found, TIMESTAMP_HEADER)
    # Several signature headers are read as one list, as if joined by spaces.
    signature_header = " ".join(found.get(SIGNATURE_HEADER, []))
    if not signature_header.strip():
        raise MissingHeaders(f"missing {SIGNATURE_HEADER} header")

    problem = _check_webhook_id(msg_id)
    if problem:
        raise InvalidSignature(problem)
    timestamp = _parse_timestamp(timestamp_text)
    skew = now() - timestamp
    if skew > tolerance_s:
        raise StaleTimestamp("webhook-timestamp is too old")
    if skew < -tolerance_s:
        raise StaleTimestamp("webhook-timestamp is too far in the future")

    # The header text as sent, not str(int): '0017' was signed as '0017'.
    content = _signed_content(msg_id, timestamp_text, body)
    expected = [key.digest(content) for key in keys]
    matched = False
    for given in _v1_signatures(signature_header):
        for digest in expected:
            # No early exit: the time taken does not depend on which entry matched.
            matched |= hmac.compare_digest(digest, given)
    if not matched:
        raise InvalidSignature("no matching signature")
