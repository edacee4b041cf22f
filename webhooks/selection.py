"""An operator's choice of dead letters, from what they typed: CLI options, a query string
or a JSON body. Turns it into a :class:`~worker.deadletter.DeadLetterFilter`, or refuses
with a :class:`SelectionError` naming the parameter. The CLI and the admin API share it,
so both accept the same values; it does no I/O.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from worker.deadletter import DeadLetterFilter

FILTER_KEYS = ("channel", "reason", "source", "since")
MAX_IDS = 10_000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


class SelectionError(ValueError):
    """A parameter of a selection is not valid; ``param`` names it."""

    def __init__(self, param: str, detail: str) -> None:
        super().__init__(f"{param}: {detail}")
        self.param = param
        self.detail = detail


def parse_since(text: str, *, now: float | None = None) -> float:
    """Epoch seconds from ``90s``/``15m``/``2h``/``3d``/``1w`` (ago), an ISO 8601 date or
    time (UTC unless it names an offset), or epoch seconds; ValueError otherwise."""
    value = text.strip()
    relative = _RELATIVE.fullmatch(value.lower())
    if relative:
        return (time.time() if now is None else now) - float(relative[1]) * _UNITS[relative[2]]
    try:
        epoch = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(epoch) and epoch >= 0:
            return epoch
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use 2h or 3d (ago), 2024-06-01, 2024-06-01T12:00Z "
            "or epoch seconds"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def filter_from(
    values: Mapping[str, Any],
    *,
    ids: list[int] | None = None,
    prefix: str = "",
    now: float | None = None,
) -> DeadLetterFilter:
    """A filter from ``channel``, ``reason``, ``source`` (text) and ``since`` (text as
    :func:`parse_since` reads it, or epoch seconds); ``prefix`` goes before names in errors."""
    for key in values:
        if key not in FILTER_KEYS:
            raise SelectionError(
                f"{prefix}{key}", f"unknown filter; expected {', '.join(FILTER_KEYS)}"
            )
    text: dict[str, str | None] = {}
    for key in ("channel", "reason", "source"):
        value = values.get(key)
        if key in values and (not isinstance(value, str) or not 0 < len(value) <= 100):
            raise SelectionError(f"{prefix}{key}", "must be a non-empty string of 100 at most")
        if isinstance(value, str) and "\x00" in value:  # PostgreSQL text cannot hold NUL
            raise SelectionError(f"{prefix}{key}", "must not contain a NUL character")
        text[key] = value
    since = values.get("since")
    if "since" in values:  # null too: a filter of nulls must not select everything
        since = _since(since, f"{prefix}since", now)
    return DeadLetterFilter(
        channel=text["channel"], reason=text["reason"], source=text["source"], since=since, ids=ids
    )


def _since(value: Any, param: str, now: float | None) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value >= 0:
            return float(value)
        raise SelectionError(param, "must be a time: epoch seconds cannot be negative")
    if not isinstance(value, str):
        raise SelectionError(param, "must be a time such as 2h, 3d or 2024-06-01")
    try:
        return parse_since(value, now=now)
    except ValueError as error:
        raise SelectionError(param, str(error)) from None


def parse_ids(value: Any, param: str = "ids") -> list[int]:
    """A non-empty list of positive command ids (at most :data:`MAX_IDS`)."""
    if not isinstance(value, list) or not value:
        raise SelectionError(param, "must be a non-empty list of dead letter ids")
    if len(value) > MAX_IDS:
        raise SelectionError(param, f"at most {MAX_IDS} ids; select more with a filter")
    for item in value:
        if not isinstance(item, int) or isinstance(item, bool) or not 1 <= item < 2**63:
            raise SelectionError(param, f"{item!r} is not a dead letter id (a positive integer)")
    return list(value)


def selection_from_body(body: Any) -> DeadLetterFilter:
    """A replay or purge body: exactly one of ``{"ids": [...]}``, ``{"all": true}`` or
    ``{"filter": {...}}`` (a non-empty filter)."""
    if not isinstance(body, dict):
        raise SelectionError(
            "body", 'expected a JSON object: {"ids": [...]}, {"all": true} or {"filter": {...}}'
        )
    for key in body:
        if key not in ("ids", "all", "filter"):
            raise SelectionError(key, "unknown key; expected ids, all or filter")
    if len(body) != 1:
        raise SelectionError("body", "give exactly one of ids, all or filter")
    if "ids" in body:
        return DeadLetterFilter(ids=parse_ids(body["ids"]))
    if "all" in body:
        if body["all"] is not True:
            raise SelectionError("all", "must be true (to select every dead letter)")
        return DeadLetterFilter()
    criteria = body["filter"]
    if not isinstance(criteria, dict) or not criteria:
        raise SelectionError("filter", f"must be an object with some of {', '.join(FILTER_KEYS)}")
    return filter_from(criteria, prefix="filter.")
