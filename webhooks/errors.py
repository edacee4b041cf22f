"""Refusals as the receiver answers them: a status code and ``{"error", "detail"}``."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger("webhooks.refusals")


class Refusal(Exception):
    """Stop handling a request and answer ``status`` with a JSON error body."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.field = field
        self.headers = headers or {}

    def response(self) -> Response:
        """The JSON answer."""
        body: dict[str, Any] = {"error": self.error, "detail": self.detail}
        if self.field is not None:
            body["field"] = self.field
        response = jsonify(body)
        response.status_code = self.status
        response.headers.update(self.headers)
        return response


def install_error_handlers(app: Flask) -> None:
    """Answer every error, Flask's own included, with the JSON refusal body."""

    @app.errorhandler(Refusal)
    def _refusal(refusal: Refusal) -> Response:
        source = (request.view_args or {}).get("source")
        log.info(
            "refused %s %s: %s",
            refusal.status,
            refusal.error,
            refusal.detail,
            extra={"source": source} if source else None,
        )
        return refusal.response()

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        code = error.code or 500
        name = (error.name or "error").lower().replace(" ", "_")
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}  # Allow
        return Refusal(code, name, error.description or name, headers=headers).response()

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        app.logger.exception("unhandled error")
        return Refusal(500, "internal_error", "the server failed; nothing was recorded").response()
