"""``POST /webhooks/<source>``: verify, parse, record, answer.

The order of checks is the order of the refusals a sender can fix: unknown source (404),
too big (413), wrong content type (415), bad or stale signature (401), not the vendor's
format (400), a record that cannot become a command (422). Only then are the events and
their commands written to the ledger in one transaction (with the outbox rows from which a
worker's relay publishes them); the answer is 202 once that commit is done (200 with
``"duplicate": true`` for keys already recorded), or 503 with ``Retry-After`` when the
ledger cannot be written, so the sender retries and nothing is lost.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, jsonify, request

from webhooks.errors import Refusal
from webhooks.mapping import SourceMapping, to_commands
from webhooks.metrics import note_recorded
from webhooks.signing import SignatureError, WebhookSecret, verify
from webhooks.sources import module_for
from webhooks.sources.base import InboundRequest, SourceModule, SourceRefusal
from webhooks.sources.generic import parse_events
from worker.config import AppConfig, SourceConfig
from worker.ledger import Ledger, LedgerUnavailable, UnstorableValue
from worker.ledger.store import NewEvent, Recorded
from worker.logs import log_context
from worker.runtime import Runtime
from worker.submit import record

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
_ALLOW = {"Allow": "POST"}  # RFC 9110: a 405 names the methods that are allowed


@dataclass(frozen=True)
class Source:
    """A configured source, ready to take deliveries."""

    name: str
    config: SourceConfig
    secrets: tuple[str, ...]
    module: SourceModule | None = None
    """The vendor module; ``None`` for the generic source."""
    options: Any = None
    mapping: SourceMapping | None = None
    webhook_secrets: tuple[WebhookSecret, ...] = ()


def build_source(name: str, spec: SourceConfig) -> Source:
    """Validate a source's config against its kind; ``ValueError`` names the key."""
    where = f"sources.{name}"
    secrets = (spec.secret.get_secret_value(),) if spec.secret is not None else ()
    if spec.kind == "generic":
        if not secrets:
            raise ValueError(f"{where}.secret: not set")
        if spec.options:
            raise ValueError(f"{where}: unknown keys for kind generic: {', '.join(spec.options)}")
        try:
            parsed = tuple(WebhookSecret.parse(secret) for secret in secrets)
        except ValueError as error:
            raise ValueError(f"{where}.secret: {error}") from None
        return Source(name, spec, secrets, webhook_secrets=parsed)
    try:
        module = module_for(spec.kind)
    except ValueError as error:
        raise ValueError(f"{where}.kind: {error}") from None
    if not secrets:
        raise ValueError(f"{where}.secret: not set (every {spec.kind} source needs one)")
    try:
        options = module.Options.model_validate(spec.options)
    except Exception as error:
        raise ValueError(f"{where}: {str(error).splitlines()[0]} ({error})") from None
    may_untag = getattr(module, "may_untag", None)
    if may_untag is not None and may_untag(options) and not (spec.tags or spec.tags_from):
        raise ValueError(
            f"{where}.tags: a {spec.kind} source removes its tags on some events "
            "(unsubscribe, cancel, delete): configure tags or tags_from"
        )
    mapping = SourceMapping.build(
        spec, default_fields=module.DEFAULT_FIELDS, default_match=module.DEFAULT_MATCH, where=where
    )
    return Source(name, spec, secrets, module, options, mapping)


class Receiver:
    """Everything the webhook endpoint needs, built once at start-up."""

    def __init__(self, config: AppConfig, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger
        self.channels: Mapping[str, frozenset[str] | None] = {
            name: frozenset(channel.custom_fields) if channel.custom_fields else None
            for name, channel in config.channels.items()
        }
        self.sources = {name: build_source(name, spec) for name, spec in config.sources.items()}

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> Receiver:
        """Build on a process runtime."""
        return cls(runtime.config, runtime.ledger)

    def largest_cap(self) -> int:
        """The largest body any source accepts."""
        return max((s.config.max_body_bytes for s in self.sources.values()), default=1 << 20)

    def source(self, name: str) -> Source:
        """The source named in the URL, or 404."""
        source = self.sources.get(name)
        if source is None:
            raise Refusal(404, "unknown_source", f"no source named {name!r}")
        return source

    def handle(self, source_name: str) -> Response:
        """Answer one delivery to ``source_name``."""
        with log_context(source=source_name):
            return self._handle(source_name)

    def _handle(self, source_name: str) -> Response:
        source = self.source(source_name)
        cap = source.config.max_body_bytes
        if request.content_length is not None and request.content_length > cap:
            raise Refusal(413, "too_large", f"the body is over {cap} bytes")
        accepted = source.module.CONTENT_TYPES if source.module else {"application/json"}
        if request.mimetype not in accepted:
            raise Refusal(
                415,
                "unsupported_media_type",
                f"Content-Type must be {' or '.join(sorted(accepted))}",
            )
        body = request.get_data(cache=True)
        if len(body) > cap:
            raise Refusal(413, "too_large", f"the body is over {cap} bytes")
        try:
            batch = (
                self._generic(source, body) if source.module is None else self._vendor(source, body)
            )
        except SourceRefusal as error:
            raise Refusal(error.status, error.error, error.detail, field=error.field) from None
        recorded = self._record(source, batch)
        answer = getattr(source.module, "answer", None)
        if answer is not None:
            custom = answer(recorded, source.options)
            if custom is not None:
                text, status, headers = custom
                return Response(text, status=status, headers=headers)
        return _answer(recorded, batched=source.module is not None or body.lstrip()[:1] == b"[")

    def _generic(self, source: Source, body: bytes) -> list[NewEvent]:
        try:
            verify(source.webhook_secrets, request.headers, body)
        except SignatureError as error:
            raise Refusal(401, error.code, error.detail) from None
        inbound = parse_events(
            body,
            webhook_id=request.headers.get("webhook-id", ""),
            source=source.name,
            default_channel=source.config.channel,
            channels=self.channels,
        )
        return [NewEvent(e.key, e.type, e.raw, e.commands) for e in inbound]

    def _vendor(self, source: Source, body: bytes) -> list[NewEvent]:
        assert source.module is not None and source.mapping is not None
        inbound = inbound_request(body)
        source.module.verify(inbound, source.secrets, source.options, time.time)
        records = source.module.records(inbound, source.options)
        return [
            NewEvent(
                record.key,
                record.type,
                dict(record.values),
                to_commands(
                    record,
                    source.mapping,
                    self.channels,
                    where=f"[{index}]." if len(records) > 1 else "",
                ),
            )
            for index, record in enumerate(records)
        ]

    def _record(self, source: Source, batch: list[NewEvent]) -> list[Recorded]:
        try:
            recorded = record(self.ledger, source.name, batch)
        except LedgerUnavailable as error:
            log.warning("ledger unavailable, answering 503: %s", error)
            raise Refusal(
                503,
                "ledger_unavailable",
                "the event could not be recorded; nothing was kept, send it again later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        except UnstorableValue as error:  # the database refuses a value: resending cannot help
            log.warning("ledger refused a value, answering 422: %s", str(error)[:200])
            raise Refusal(
                422,
                "unstorable_value",
                "a value cannot be stored (a NUL character, or longer than the ledger keeps); "
                "nothing was recorded",
            ) from None
        note_recorded(recorded)  # counted by outcome when the answer goes out
        for item in recorded:
            log.info(
                "event %s %s, commands %s",
                item.key,
                "duplicate" if item.duplicate else "accepted",
                item.command_ids,
                extra={"event_id": item.event_id},
            )
        return recorded


def inbound_request(body: bytes) -> InboundRequest:
    """The current Flask request as a source sees it."""
    form: dict[str, str] = {}
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        # A field sent several times (checkboxes sharing a name) keeps every value.
        form = {key: ", ".join(values) for key, values in request.form.lists()}
    return InboundRequest(
        method=request.method,
        url=request.url,
        headers={key.lower(): value for key, value in request.headers.items()},
        body=body,
        mimetype=request.mimetype,
        query=dict(request.args.items(multi=False)),
        form=form,
    )


def _describe(item: Recorded) -> dict[str, Any]:
    return {"event_id": item.key, "commands": item.command_ids, "duplicate": item.duplicate}


def _answer(recorded: list[Recorded], *, batched: bool) -> Response:
    status = 200 if all(item.duplicate for item in recorded) else 202
    body = {"events": [_describe(item) for item in recorded]} if batched else _describe(recorded[0])
    # What jsonify writes (Flask's compact, sorted form), without its provider's steps: the
    # answer every accepted event gets.
    text = json.dumps(body, separators=(",", ":"), sort_keys=True)
    return Response(f"{text}\n", status=status, mimetype="application/json")


def receiver_blueprint(receiver: Receiver) -> Blueprint:
    """The ``/webhooks`` routes on ``receiver``."""
    blueprint = Blueprint("receiver", __name__)

    @blueprint.post("/webhooks/<source>")
    def receive(source: str) -> Response:
        return receiver.handle(source)

    @blueprint.get("/webhooks/<source>")
    def probe(source: str) -> tuple[Response, int]:
        # Some vendors (Mailchimp) check a webhook URL with a GET before using it.
        found = receiver.source(source)
        if not getattr(found.module, "ANSWERS_GET", False):
            raise Refusal(405, "method_not_allowed", "this source takes POST only", headers=_ALLOW)
        return jsonify({"status": "ok", "source": source}), 200

    return blueprint
