"""The Contacts API: a client per channel, its error tree, its documented limits, and a
faithful local sandbox of the API for tests, benchmarks and the demo mode."""

from worker.contacts_api.client import Contact, ContactsClient
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
)

__all__ = [
    "ConnectionFailed",
    "Contact",
    "ContactsApiError",
    "ContactsClient",
    "Forbidden",
    "MethodNotAllowed",
    "NotFound",
    "PermanentError",
    "RateLimited",
    "ServerError",
    "Timeout",
    "TransientError",
    "Unauthorized",
    "UnexpectedResponse",
    "ValidationError",
]
