"""The Flask side of the baseline: ``POST /events`` queues one task per event.

The request is checked with a plain HMAC of the Standard Webhooks kind (``webhook-id``,
``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``,
timestamp within five minutes), the body may be one event or a list, each is checked for a
type and a match, and queued with ``apply_event.delay``. Answers 202 once queued.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from typing import Any

from flask import Flask, jsonify, request

from ops.bench.baseline.tasks import apply_event

TYPES = ("contact.upsert", "contact.tag", "contact.untag")


def verified(secret: str, headers: Any, body: bytes) -> bool:
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    if not msg_id or not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    offered = headers.get("webhook-signature", "").split()
    return any(hmac.compare_digest(expected, signature) for signature in offered)


def create_app(secret: str | None = None) -> Flask:
    app = Flask(__name__)
    secret = secret or os.environ["BASELINE_SECRET"]

    @app.post("/events")
    def events() -> Any:
        body = request.get_data()
        if not verified(secret, request.headers, body):
            return jsonify(error="invalid_signature"), 401
        payload = request.get_json(silent=True)
        batch = payload if isinstance(payload, list) else [payload]
        for event in batch:
            if (
                not isinstance(event, dict)
                or event.get("type") not in TYPES
                or not isinstance(event.get("match"), dict)
                or len(event["match"]) != 1
            ):
                return jsonify(error="invalid_event"), 422
        for event in batch:
            apply_event.delay(event)
        return jsonify(queued=len(batch)), 202

    return app
