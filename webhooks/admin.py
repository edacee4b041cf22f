"""The admin HTTP API under ``/admin/api/``: dead letters to list, read, replay and purge.

Served only when the config has an admin token (``admin.token`` or ``admin.token_env``):
``create_app`` does not register this blueprint otherwise, so every path is a 404. Each
request must carry ``Authorization: Bearer <token>``, compared in constant time; without
it, 401. Views are thin shells around :mod:`worker.deadletter`; every error is a
:class:`~webhooks.errors.Refusal` with the JSON body the receiver also answers with.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, Response, jsonify, request

from webhooks.errors import Refusal
from webhooks.selection import FILTER_KEYS, SelectionError, filter_from, selection_from_body
from worker.deadletter import (
    DeadLetterFilter,
    count_dead,
    get_dead,
    list_dead,
    purge,
    purge_batches,
    replay_batches,
)
from worker.runtime import Runtime

MAX_PAGE = 500
_LIST_PARAMS = (*FILTER_KEYS, "limit", "offset")
_MAX_SQL_INT = 2**63 - 1
"""Command ids and offsets are 64-bit integers in the ledger; larger ones fail in SQL."""
T = TypeVar("T")


def admin_blueprint(runtime: Runtime) -> Blueprint:
    """The admin API for this runtime; its config must have an admin token."""
    token = runtime.config.admin.token
    if token is None:
        raise ValueError("admin.token is not set: the admin API must not be served")
    expected = token.get_secret_value().encode()
    admin = Blueprint("admin", __name__, url_prefix="/admin/api")

    @admin.before_request
    def _authenticate() -> None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise _unauthorized("send the admin token as 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given.strip().encode(), expected):
            raise _unauthorized("the admin token is not valid", invalid=True)

    @admin.before_request
    def _within_sql_integers() -> None:  # ids past a 64-bit SQL integer name nothing
        command_id = (request.view_args or {}).get("command_id", 0)
        if command_id > _MAX_SQL_INT:
            raise _no_such(command_id)

    @admin.get("/dead-letters")
    def list_dead_letters() -> Response:
        args = request.args
        for name in args:
            if name not in _LIST_PARAMS:
                raise _invalid(name, f"unknown parameter; expected {', '.join(_LIST_PARAMS)}")
        given = {key: args[key] for key in FILTER_KEYS if args.get(key)}
        chosen = _refusing(lambda: filter_from(given))
        limit = _int_param("limit", 50, 1, MAX_PAGE)
        offset = _int_param("offset", 0, 0, _MAX_SQL_INT)
        engine = runtime.ledger.engine
        items = list_dead(engine, chosen, limit=limit, offset=offset)
        return jsonify(
            {
                "items": [item.to_json() for item in items],
                "total": count_dead(engine, chosen),
                "limit": limit,
                "offset": offset,
            }
        )

    @admin.get("/dead-letters/<int:command_id>")
    def show_dead_letter(command_id: int) -> Response:
        letter = get_dead(runtime.ledger.engine, command_id)
        if letter is None:
            raise _no_such(command_id)
        return jsonify(letter.to_json())

    @admin.post("/dead-letters/replay")
    def replay_selected() -> Response:
        return _replay(runtime, _refusing(lambda: selection_from_body(_json_body())))

    @admin.post("/dead-letters/purge")
    def purge_selected() -> Response:
        chosen = _refusing(lambda: selection_from_body(_json_body()))
        return jsonify({"purged": sum(purge_batches(runtime.ledger.engine, chosen))})

    @admin.post("/dead-letters/<int:command_id>/replay")
    def replay_one(command_id: int) -> Response:
        return _replay(runtime, DeadLetterFilter(ids=[command_id]), missing=command_id)

    @admin.delete("/dead-letters/<int:command_id>")
    def purge_one(command_id: int) -> Response:
        if not purge(runtime.ledger.engine, [command_id]):
            raise _no_such(command_id)
        return jsonify({"purged": 1})

    return admin


def _replay(runtime: Runtime, chosen: DeadLetterFilter, missing: int | None = None) -> Response:
    ids: list[int] = []
    published = 0
    for batch in replay_batches(runtime, chosen):
        ids += batch.ids
        published += batch.published
    if missing is not None and not ids:
        raise _no_such(missing)
    return jsonify({"replayed": len(ids), "ids": ids, "published": published})


def _json_body() -> Any:
    body = request.get_json(silent=True)
    if body is None:
        raise Refusal(
            400,
            "malformed_body",
            'expected a JSON object (Content-Type: application/json): {"ids": [...]}, '
            '{"all": true} or {"filter": {...}}',
        )
    return body


def _refusing(build: Callable[[], T]) -> T:
    try:
        return build()
    except SelectionError as error:
        raise _invalid(error.param, error.detail) from None


def _int_param(name: str, default: int, low: int, high: int | None) -> int:
    raw = request.args.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _invalid(name, f"{raw!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _invalid(name, f"must be {bounds}")
    return value


def _invalid(param: str, detail: str) -> Refusal:
    return Refusal(400, "invalid_parameter", f"{param}: {detail}", field=param)


def _no_such(command_id: int) -> Refusal:
    return Refusal(404, "not_found", f"no dead letter {command_id} (no such command, or not dead)")


def _unauthorized(detail: str, *, invalid: bool = False) -> Refusal:
    challenge = 'Bearer realm="contactsync-admin"' + (', error="invalid_token"' if invalid else "")
    return Refusal(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})
