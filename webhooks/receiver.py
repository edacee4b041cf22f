"""``POST /webhooks/<source>``: verify, parse, record, answer.

The order of checks is the order of the refusals a sender can fix: unknown source (404),
too big (413), wrong content type (415), bad or stale signature (401), not JSON (400),
not a valid event (422). Only then are the events and their commands written to the
ledger in one transaction; the answer is 202 once that commit is done (200 with
``"duplicate": true`` for keys already recorded), or 503 with ``Retry-After`` when the
ledger cannot be written, so the sender retries and nothing is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery
from flask import Blueprint, Response, jsonify, request

from webhooks.errors import Refusal
from webhooks.signing import SignatureError, WebhookSecret, verify
from webhooks.sources.generic import EventError, MalformedBody, parse_events
from worker.config import AppConfig, SourceConfig
from worker.ledger import Ledger, LedgerUnavailable
from worker.ledger.store import NewEvent, Recorded
from worker.runtime import Runtime
from worker.submit import record_and_publish

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Source:
    """A configured source, ready to verify requests."""

    name: str
    config: SourceConfig
    secrets: tuple[WebhookSecret, ...]


class Receiver:
    """Everything the webhook endpoint needs, built once at start-up."""

    def __init__(self, config: AppConfig, ledger: Ledger, celery: Celery) -> None:
        self.config = config
        self.ledger = ledger
        self.celery = celery
        self.channels: Mapping[str, frozenset[str] | None] = {
            name: frozenset(channel.custom_fields) if channel.custom_fields else None
            for name, channel in config.channels.items()
        }
        self.sources = {name: _source(name, spec) for name, spec in config.sources.items()}

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> Receiver:
        """Build on a process runtime."""
        return cls(runtime.config, runtime.ledger, runtime.celery)

    def largest_cap(self) -> int:
        """The largest body any source accepts."""
        return max((s.config.max_body_bytes for s in self.sources.values()), default=1 << 20)

    def handle(self, source_name: str) -> tuple[Response, int]:
        """Answer one delivery to ``source_name``."""
        source = self.sources.get(source_name)
        if source is None:
            raise Refusal(404, "unknown_source", f"no source named {source_name!r}")
        cap = source.config.max_body_bytes
        if request.content_length is not None and request.content_length > cap:
            raise Refusal(413, "too_large", f"the body is over {cap} bytes")
        if request.mimetype != "application/json":
            raise Refusal(415, "unsupported_media_type", "Content-Type must be application/json")
        body = request.get_data(cache=True)
        if len(body) > cap:
            raise Refusal(413, "too_large", f"the body is over {cap} bytes")
        try:
            verify(source.secrets, request.headers, body)
        except SignatureError as error:
            raise Refusal(401, error.code, error.detail) from None
        try:
            inbound = parse_events(
                body,
                webhook_id=request.headers.get("webhook-id", ""),
                source=source.name,
                default_channel=source.config.channel,
                channels=self.channels,
            )
        except MalformedBody as error:
            raise Refusal(400, "malformed_body", error.detail) from None
        except EventError as error:
            raise Refusal(422, "invalid_event", error.detail, field=error.field) from None
        batch = [NewEvent(e.key, e.type, e.raw, e.commands) for e in inbound]
        try:
            recorded = record_and_publish(self.ledger, self.celery, source.name, batch)
        except LedgerUnavailable as error:
            log.warning("ledger unavailable, answering 503: %s", error)
            raise Refusal(
                503,
                "ledger_unavailable",
                "the event could not be recorded; nothing was kept, send it again later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        for item in recorded:
            log.info(
                "event %s from %s: %s, commands %s",
                item.key,
                source.name,
                "duplicate" if item.duplicate else "accepted",
                item.command_ids,
            )
        return _answer(recorded, batched=body.lstrip().startswith(b"["))


def _source(name: str, spec: SourceConfig) -> Source:
    if spec.secret is None:
        raise ValueError(f"sources.{name}.secret: not set")
    try:
        secret = WebhookSecret.parse(spec.secret.get_secret_value())
    except ValueError as error:
        raise ValueError(f"sources.{name}.secret: {error}") from None
    return Source(name, spec, (secret,))


def _describe(item: Recorded) -> dict[str, Any]:
    return {"event_id": item.key, "commands": item.command_ids, "duplicate": item.duplicate}


def _answer(recorded: list[Recorded], *, batched: bool) -> tuple[Response, int]:
    status = 200 if all(item.duplicate for item in recorded) else 202
    if batched:
        return jsonify({"events": [_describe(item) for item in recorded]}), status
    return jsonify(_describe(recorded[0])), status


def receiver_blueprint(receiver: Receiver) -> Blueprint:
    """The ``/webhooks`` routes on ``receiver``."""
    blueprint = Blueprint("receiver", __name__)

    @blueprint.post("/webhooks/<source>")
    def receive(source: str) -> tuple[Response, int]:
        return receiver.handle(source)

    return blueprint
