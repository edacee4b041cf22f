"""Jotform: one webhook per form submission, ``multipart/form-data`` (urlencoded accepted).

Jotform signs nothing. Authenticity is a shared secret the sender repeats: the source's
``secret`` put in the webhook URL's query (``?token=…``, option ``token_param``) or, when a
proxy in front adds one, a header (option ``token_header``); compared in constant time.
The answers are in the ``rawRequest`` field, a JSON object keyed ``q<N>_<name>``
(``q3_email``); a record keys each answer by the part after ``q<N>_`` (the question's
unique name, stable when questions are reordered), compound answers flattened with dots
(``name.first``, ``phoneNumber.full``). Redelivery is caught by ``submissionID``.
Docs: https://www.jotform.com/help/245-how-to-setup-a-webhook-with-jotform/
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import model_validator

from webhooks.sources.base import (
    InboundRequest,
    InvalidRecord,
    MalformedBody,
    Record,
    SourceOptions,
    check_token,
    load_json,
    scalar,
)

KIND = "jotform"
CONTENT_TYPES = frozenset({"multipart/form-data", "application/x-www-form-urlencoded"})
DEFAULT_FIELDS = {
    "email": "email",
    "name.first": "firstName",
    "name.last": "lastName",
    "phoneNumber.full": "phone",
}
DEFAULT_MATCH = "email"

QUESTION_KEY = re.compile(r"^q\d+_(.+)$")
"""``q3_email`` -> ``email``: Jotform's answer keys are the question number and name."""
META_FIELDS = ("formID", "submissionID", "formTitle", "ip")
"""Top-level fields kept in the record besides the answers."""
MAX_DEPTH = 4
"""Compound answers nest a level or two (address, name); deeper parts are dropped."""
MAX_KEY_CHARS = 300
"""The ledger's event key column holds 300 characters."""


class Options(SourceOptions):
    """Where the shared secret travels: a query parameter, a header, or both."""

    token_param: str | None = "token"  # noqa: S105 (a parameter name)
    """The URL query parameter holding the secret (``None``: not from the query)."""
    token_header: str | None = None
    """A header holding the secret, when something in front of us sets one."""

    @model_validator(mode="after")
    def _somewhere(self) -> Options:
        if not self.token_param and not self.token_header:
            raise ValueError("set token_param or token_header: the secret must travel somewhere")
        return self


def verify(
    request: InboundRequest, secrets: Sequence[str], options: Any, now: Callable[[], float]
) -> None:
    """Check the shared secret from the query or header against any of ``secrets``."""
    options = options if isinstance(options, Options) else Options()
    given = [
        value
        for value in (
            request.query.get(options.token_param) if options.token_param else None,
            request.header(options.token_header) if options.token_header else None,
        )
        if value
    ]
    check_token(given, secrets, missing="missing the source's token")


def flatten(prefix: str, value: Any, into: dict[str, Any], depth: int = 0) -> None:
    """Put ``value`` into ``into`` under ``prefix``, objects as ``prefix.key`` entries."""
    if isinstance(value, dict):
        if depth < MAX_DEPTH:
            for key, part in value.items():
                flatten(f"{prefix}.{key}", part, into, depth + 1)
        return
    into[prefix] = scalar(value)


def records(request: InboundRequest, options: Any) -> list[Record]:
    """One record per submission."""
    raw = request.form.get("rawRequest")
    if raw is None:
        raise MalformedBody("not a Jotform webhook: no rawRequest field")
    try:
        answers = load_json(raw.encode("utf-8", "surrogatepass"))
    except MalformedBody as error:
        raise MalformedBody(f"rawRequest: {error.detail}", field="rawRequest") from None
    if not isinstance(answers, dict):
        raise MalformedBody("rawRequest must be a JSON object")
    submission = request.form.get("submissionID", "").strip()
    if not submission or len(submission) > MAX_KEY_CHARS:
        raise InvalidRecord(
            f"submissionID must be 1 to {MAX_KEY_CHARS} characters", field="submissionID"
        )
    values: dict[str, Any] = {key: request.form[key] for key in META_FIELDS if key in request.form}
    for key, answer in answers.items():
        found = QUESTION_KEY.match(key)
        if found is not None:
            flatten(found.group(1), answer, values)
    return [Record(key=submission, type="submission", values=values)]
