"""Hostile input against every source endpoint and the admin API.

One receiver is configured with a source of every kind (valid secrets and options), and a
corpus of nasty requests is thrown at each: forged and stale signatures, replays, bodies
over the cap (honest, lying ``Content-Length``, chunked), 100k-deep JSON, batches past the
cap, invalid UTF-8, wrong content types, CR/LF in header values (raw WSGI environ: the test
client refuses them), SQL and path characters in match values, odd Viber ids end to end to
the sandbox, XML bombs, multipart edge cases; then hypothesis throws random bytes, headers,
content types and mutated-but-signed payloads.

The one rule every case checks (:func:`check`): the answer is a typed refusal (4xx, JSON
``{"error", "detail"}``) or an accepted / duplicate 2xx, never a 5xx; a refused request
leaves the ledger's ``events`` and ``commands`` exactly as they were; no response header
carries CR/LF or an injected header. Most cases also pin the status and error they expect.

Set ``CONTACTSYNC_HOSTILE_REPORT=path.json`` to save what each case was answered
(docs/reliability.md's "Hostile input" table is made from it).
"""

from __future__ import annotations

import base64
import copy
import hmac
import itertools
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from xml.sax.saxutils import escape

import pytest
import yaml
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from stack import SECRET as GENERIC_SECRET
from werkzeug.test import EnvironBuilder, run_wsgi_app

import webhooks.admin
from webhooks.app import create_app
from webhooks.signing import WebhookSecret, sign
from webhooks.sources import calendly, hubspot, pipedrive, tally, typeform
from worker.config import Settings, load_config
from worker.contacts_api.sandbox import SandboxServer
from worker.contacts_api.sandbox_state import StoredContact
from worker.ledger.schema import commands, events
from worker.runtime import Runtime
from worker.tasks import run_command

CAP = 1024 * 1024
"""Every source's ``max_body_bytes`` (the default)."""
ADMIN_TOKEN = "hostile-admin-token-0123456789"
ORG = "00Dn00000008y2tEAA"
PIPEDRIVE_USER = "contactsync"
OTHER_WHSEC = "whsec_" + base64.b64encode(b"not-the-right-key-but-32-bytes!!").decode()

SECRETS = {
    "generic": GENERIC_SECRET,
    "hubspot": "hubspot-client-secret",
    "typeform": "typeform-test-secret",
    "tally": "tally-test-secret",
    "pipedrive": "pipedrive-test-password",
    "calendly": "calendly-test-signing-key",
    "jotform": "jotform-test-secret",
    "mailchimp": "mailchimp-test-secret",
    "html_form": "html-form-test-secret",
    "salesforce": "salesforce-url-token",
}
SOURCES: dict[str, dict[str, Any]] = {
    "generic": {"kind": "generic", "channel": "main"},
    "hubspot": {"kind": "hubspot", "channel": "crm", "tags": ["hubspot"]},
    "typeform": {"kind": "typeform", "channel": "main"},
    "tally": {"kind": "tally", "channel": "main"},
    "pipedrive": {"kind": "pipedrive", "channel": "main", "username": PIPEDRIVE_USER},
    "calendly": {"kind": "calendly", "channel": "main", "tags": ["calendly"]},
    "jotform": {"kind": "jotform", "channel": "main"},
    "mailchimp": {"kind": "mailchimp", "channel": "main", "tags": ["newsletter"]},
    "html_form": {"kind": "html_form", "channel": "main"},
    "salesforce": {"kind": "salesforce", "channel": "main", "organization_id": ORG},
}
"""Source name = kind, so a case's id names both."""
ALL = list(SOURCES)
JSON_SOURCES = ["generic", "hubspot", "typeform", "tally", "pipedrive", "calendly"]
TOKEN_IN_QUERY = {"jotform", "mailchimp", "html_form", "salesforce"}
CONTENT_TYPE = {
    **dict.fromkeys(JSON_SOURCES, "application/json"),
    "jotform": "multipart/form-data; boundary=hostileBoundary42",
    "mailchimp": "application/x-www-form-urlencoded",
    "html_form": "application/x-www-form-urlencoded",
    "salesforce": "text/xml; charset=utf-8",
}

SEEN: dict[str, dict[str, dict[str, str]]] = {}
"""ledger backend -> case -> source -> what was answered (for the docs' table)."""

_serial = itertools.count(int(time.time() * 1000) % 10**9)


# -- the receiver ---------------------------------------------------------------------------


class Kit:
    """A receiver with one source of every kind, its ledger, and the sandbox behind it."""

    def __init__(self, tmp: Path, sandbox: SandboxServer, database_url: str | None) -> None:
        fast = {"calls": 100_000, "period_s": 60}
        document = {
            "contacts_api": {
                "base_url": sandbox.api_url,
                "connect_timeout_s": 1,
                "read_timeout_s": 2,
            },
            "channels": {
                name: {
                    "token": sandbox.token(name),
                    "platform": sandbox.state.channel(name).platform,
                    "rate_limit": fast,
                }
                for name in ("main", "crm", "viber")
            },
            "sources": {name: {**spec, "secret": SECRETS[name]} for name, spec in SOURCES.items()},
            "admin": {"token": ADMIN_TOKEN},
        }
        path = tmp / "contactsync.yaml"
        path.write_text(yaml.safe_dump(document))
        self.sandbox = sandbox
        self.backend = "postgresql" if database_url else "sqlite"
        settings = Settings(config=path, data_dir=tmp / "data", database_url=database_url)
        self.runtime = Runtime(settings, load_config(path))
        self.app: Flask = create_app(self.runtime)

    def rows(self) -> tuple[int, int]:
        """How many events and commands the ledger holds."""
        with self.runtime.ledger.engine.connect() as connection:
            return (
                connection.execute(select(func.count()).select_from(events)).scalar_one(),
                connection.execute(select(func.count()).select_from(commands)).scalar_one(),
            )

    def apply(self, command_ids: list[int]) -> list[str]:
        """Run these commands through the worker's code (real HTTP to the sandbox)."""
        return [run_command(command_id, self.runtime) for command_id in command_ids]

    def state(self, command_id: int) -> str:
        row = self.runtime.ledger.command(command_id)
        assert row is not None
        return str(row["state"])


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def kit(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sandbox_server: SandboxServer,
) -> Iterator[Kit]:
    """The receiver on SQLite, then on PostgreSQL (its own database; skipped when down)."""
    database_url = None
    if request.param == "postgresql":
        database_url = request.getfixturevalue("postgres_url")
    sandbox_server.state.reset()
    sandbox_server.state.set_rate(100_000, 60)
    made = Kit(tmp_path_factory.mktemp("hostile"), sandbox_server, database_url)
    yield made
    made.runtime.ledger.engine.dispose()
    sandbox_server.state.reset()
    report = os.environ.get("CONTACTSYNC_HOSTILE_REPORT")
    if report:
        Path(report).write_text(json.dumps(SEEN, indent=1, sort_keys=True))


# -- requests, sent as raw WSGI environs ----------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One request to ``/webhooks/<source>``: bytes, headers, query, and environ overrides."""

    source: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    query: str = ""
    environ: dict[str, Any] = field(default_factory=dict)
    """Set on the WSGI environ as they are (CR/LF in values, a lying CONTENT_LENGTH…)."""
    path: str | None = None

    def with_headers(self, **headers: str) -> Delivery:
        return replace(self, headers={**self.headers, **headers})


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: list[tuple[str, str]]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str | None:
        try:
            return str(self.json().get("error"))
        except (ValueError, AttributeError):
            return None


def environ_for(delivery: Delivery) -> dict[str, Any]:
    builder = EnvironBuilder(
        path=delivery.path or f"/webhooks/{delivery.source}",
        method="POST",
        query_string=delivery.query or None,
        data=delivery.body,
    )
    environ = builder.get_environ()
    builder.close()
    environ.pop("CONTENT_TYPE", None)
    for name, value in delivery.headers.items():
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
        else:
            environ[f"HTTP_{key}"] = value
    environ.update(delivery.environ)
    return environ


def call(app: Flask, environ: dict[str, Any]) -> Answer:
    """Run one request through the whole WSGI app, as a server would."""
    body, status, headers = run_wsgi_app(app, environ, buffered=True)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return Answer(int(status.split()[0]), data, list(headers.items()))


def check(kit: Kit, delivery: Delivery, case: str | None = None) -> Answer:
    """Send ``delivery``; assert the rule every hostile input must keep; return the answer."""
    before = kit.rows()
    answer = call(kit.app, environ_for(delivery))
    assert answer.status < 500, (case, delivery.source, answer.status, answer.body[:500])
    for name, value in answer.headers:
        assert "\r" not in value and "\n" not in value, (name, value)
        assert name.lower() != "x-injected", answer.headers
    if 200 <= answer.status < 400:
        if answer.status >= 300:
            assert answer.status == 303 and delivery.source == "html_form"
    else:
        assert 400 <= answer.status < 500
        body = answer.json()
        assert isinstance(body.get("error"), str) and body["error"], body
        assert isinstance(body.get("detail"), str) and body["detail"], body
        assert kit.rows() == before, f"{case}: a refused request changed the ledger"
    if case is not None:
        seen = str(answer.status) + (f" {answer.error}" if answer.status >= 400 else "")
        SEEN.setdefault(kit.backend, {}).setdefault(case, {})[delivery.source] = seen
    return answer


def expect(answer: Answer, status: int, error: str | None = None) -> None:
    assert answer.status == status, (answer.status, answer.body[:300])
    if error is not None:
        assert answer.error == error, answer.body[:300]


def accepted_ids(answer: Answer) -> list[int]:
    """The command ids of a 2xx JSON answer."""
    body = answer.json()
    items = body.get("events", [body])
    return [command for item in items for command in item["commands"]]


# -- what each vendor sends -----------------------------------------------------------------


def now_s() -> int:
    return int(time.time())


def multipart(fields: list[tuple[str, str]], boundary: str = "hostileBoundary42") -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields
    ]
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


def sf_envelope(*notifications: str, org: str = ORG) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        '<soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
        f"<OrganizationId>{org}</OrganizationId>" + "".join(notifications) + "</notifications>"
        "</soapenv:Body></soapenv:Envelope>"
    ).encode()


def sf_notification(notification_id: str, record_id: str, email: str) -> str:
    return (
        f"<Notification><Id>{notification_id}</Id>"
        '<sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
        f"<sf:Id>{escape(record_id)}</sf:Id><sf:Email>{escape(email)}</sf:Email>"
        "</sObject></Notification>"
    )


def hubspot_event(n: int, value: str, prop: str = "email") -> dict[str, Any]:
    return {
        "eventId": n,
        "subscriptionId": 1,
        "portalId": 62515,
        "appId": 1,
        "occurredAt": 1720000000000,
        "subscriptionType": "contact.propertyChange",
        "attemptNumber": 0,
        "objectId": n,
        "changeSource": "CRM",
        "propertyName": prop,
        "propertyValue": value,
    }


def payload(source: str, uid: str, email: str) -> Any:
    """A well-formed delivery's content (JSON-able, or form pairs, or XML text)."""
    n = next(_serial)
    if source == "generic":
        return {
            "id": f"hostile-{uid}",
            "type": "contact.upsert",
            "match": {"email": email},
            "fields": {"firstName": "Ann"},
        }
    if source == "hubspot":
        return [hubspot_event(n, email)]
    if source == "typeform":
        return {
            "event_id": uid,
            "event_type": "form_response",
            "form_response": {
                "answers": [
                    {"type": "email", "email": email, "field": {"id": "f2", "type": "email"}},
                    {"type": "text", "text": "Ann", "field": {"id": "f1", "ref": "first_name"}},
                ],
            },
        }
    if source == "tally":
        field_ = {"key": "question_e", "label": "Email", "type": "INPUT_EMAIL", "value": email}
        return {"eventId": uid, "eventType": "FORM_RESPONSE", "data": {"fields": [field_]}}
    if source == "pipedrive":
        return {
            "meta": {"id": uid, "entity": "person", "action": "create", "entity_id": str(n)},
            "data": {"id": n, "first_name": "Ann", "emails": [{"value": email, "primary": True}]},
            "previous": None,
        }
    if source == "calendly":
        return {
            "event": "invitee.created",
            "payload": {
                "uri": f"https://api.calendly.com/scheduled_events/E/invitees/{uid}",
                "email": email,
                "first_name": "Ann",
            },
        }
    if source == "jotform":
        raw = json.dumps({"q3_email": email, "q4_name": {"first": "Ann"}})
        return [("formID", "2412"), ("submissionID", uid), ("rawRequest", raw)]
    if source == "mailchimp":
        return [
            ("type", "subscribe"),
            ("fired_at", f"2024-05-01 10:00:00 {uid}"),
            ("data[email]", email),
            ("data[merges][FNAME]", "Ann"),
        ]
    if source == "html_form":
        return [("email", email), ("first_name", "Ann"), ("uid", uid)]
    if source == "salesforce":
        return sf_notification(f"04l{n:015d}"[:18], f"003{uid}"[:40], email)
    raise AssertionError(source)


def encode(source: str, content: Any) -> bytes:
    if source == "jotform":
        return multipart(content)
    if source in ("mailchimp", "html_form"):
        return urlencode(content).encode()
    if source == "salesforce":
        return sf_envelope(content) if isinstance(content, str) else bytes(content)
    return json.dumps(content).encode()


def authenticate(
    source: str,
    body: bytes,
    content_type: str | None = None,
    *,
    forged: bool = False,
    at: float | None = None,
) -> Delivery:
    """``body`` with the credentials its vendor sends (``forged``: the wrong ones)."""
    secret = "wrong-secret" if forged else SECRETS[source]
    content_type = CONTENT_TYPE[source] if content_type is None else content_type
    stamp = now_s() if at is None else int(at)
    headers = {"Content-Type": content_type} if content_type else {}
    query = ""
    if source == "generic":
        key = WebhookSecret.parse(OTHER_WHSEC if forged else secret)
        msg_id = f"msg_{uuid.uuid4().hex}"
        headers |= {
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(key, msg_id, stamp, body),
        }
    elif source == "hubspot":
        millis = str(int((time.time() if at is None else at) * 1000))
        url = f"http://localhost/webhooks/{source}"
        headers |= {
            "X-HubSpot-Signature-v3": hubspot.sign_v3(secret, "POST", url, body, millis),
            "X-HubSpot-Request-Timestamp": millis,
        }
    elif source == "typeform":
        headers["Typeform-Signature"] = typeform.sign(secret, body)
    elif source == "tally":
        headers["Tally-Signature"] = tally.sign(secret, body)
    elif source == "calendly":
        headers["Calendly-Webhook-Signature"] = calendly.sign(secret, body, stamp)
    elif source == "pipedrive":
        headers["Authorization"] = pipedrive.authorization(PIPEDRIVE_USER, secret)
    else:
        query = urlencode({"token": secret})
    return Delivery(source, body, headers, query)


def valid(source: str, email: str = "ann@example.com", uid: str | None = None) -> Delivery:
    uid = uid or uuid.uuid4().hex
    return authenticate(source, encode(source, payload(source, uid, email)))


# -- the corpus: every source ---------------------------------------------------------------


@pytest.mark.parametrize("source", ALL)
def test_a_valid_delivery_is_accepted_and_its_replay_is_a_duplicate(kit: Kit, source: str) -> None:
    delivery = valid(source)
    first = check(kit, delivery, "valid delivery")
    assert first.status in (200, 202), first.body[:300]
    rows = kit.rows()
    again = check(kit, delivery, "replayed delivery (same bytes and headers)")
    assert again.status == 200, again.body[:300]
    if source != "salesforce":  # Salesforce is answered with its SOAP Ack either way
        assert all(item["duplicate"] for item in again.json().get("events", [again.json()]))
    assert kit.rows() == rows, "a replay recorded something again"
    if source in ("generic", "hubspot", "typeform", "tally", "calendly"):
        # Signed afresh (new timestamp / webhook-id): still the same event, still no effect.
        resigned = authenticate(source, delivery.body)
        expect(check(kit, resigned, "replayed event, re-signed"), 200)
        assert kit.rows() == rows


@pytest.mark.parametrize("source", ALL)
def test_forged_credentials_are_401(kit: Kit, source: str) -> None:
    delivery = valid(source)
    forged = authenticate(source, delivery.body, forged=True)
    answer = check(kit, forged, "forged signature / wrong token")
    expect(answer, 401)
    stripped = Delivery(source, delivery.body, {"Content-Type": delivery.headers["Content-Type"]})
    expect(check(kit, stripped, "no credentials at all"), 401)


@pytest.mark.parametrize(
    ("source", "offset_s"),
    [
        ("generic", -301),
        ("generic", 301),
        ("generic", -86400 * 365),
        ("hubspot", -301),
        ("hubspot", 301),
        ("calendly", -181),
        ("calendly", 181),
    ],
)
def test_stale_or_future_signatures_are_401(kit: Kit, source: str, offset_s: int) -> None:
    body = encode(source, payload(source, uuid.uuid4().hex, "ann@example.com"))
    delivery = authenticate(source, body, at=time.time() + offset_s)
    expect(check(kit, delivery, "stale / future timestamp"), 401, "stale_timestamp")


@pytest.mark.parametrize("source", ALL)
def test_oversized_bodies_are_413_however_their_length_is_told(kit: Kit, source: str) -> None:
    big = b"x" * (CAP + 1)
    honest = authenticate(source, big)
    expect(check(kit, honest, "body over max_body_bytes"), 413)
    claims_huge = replace(honest, body=b"{}", environ={"CONTENT_LENGTH": str(10 * CAP)})
    expect(check(kit, claims_huge, "Content-Length over the cap, small body"), 413)
    chunked = replace(
        honest,
        body=b"x" * (2 * CAP),
        environ={
            "CONTENT_LENGTH": "",
            "HTTP_TRANSFER_ENCODING": "chunked",
            "wsgi.input_terminated": True,
        },
    )
    expect(check(kit, chunked, "chunked body over the cap"), 413)


@pytest.mark.parametrize("source", ALL)
def test_a_lying_content_length_never_passes_as_the_real_body(kit: Kit, source: str) -> None:
    delivery = valid(source)
    short = replace(delivery, environ={"CONTENT_LENGTH": str(len(delivery.body) // 2)})
    answer = check(kit, short, "Content-Length shorter than the body")
    if source in ("generic", "hubspot", "typeform", "tally", "calendly"):
        expect(answer, 401)  # the signature covers the whole body
    elif source in ("pipedrive", "salesforce"):
        expect(answer, 400, "malformed_body")  # half a JSON document / XML message
    # A form whose token is in the URL: what Content-Length covers is the request, whole.
    long = replace(delivery, environ={"CONTENT_LENGTH": str(len(delivery.body) + 1000)})
    answer = check(kit, long, "Content-Length longer than the body")
    assert 400 <= answer.status < 500


@pytest.mark.parametrize("source", ALL)
def test_a_chunked_delivery_within_the_cap_is_read_whole(kit: Kit, source: str) -> None:
    delivery = valid(source)
    chunked = replace(
        delivery,
        environ={
            "CONTENT_LENGTH": "",
            "HTTP_TRANSFER_ENCODING": "chunked",
            "wsgi.input_terminated": True,
        },
    )
    answer = check(kit, chunked, "chunked, within the cap")
    assert answer.status in (200, 202), answer.body[:300]


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("source", ALL)
@pytest.mark.parametrize("depth", [100_000, 5_000, 900])
def test_deeply_nested_bodies_are_refused_or_flattened_never_a_crash(
    kit: Kit, source: str, depth: int
) -> None:
    case = f"nested {depth} levels"
    if source in JSON_SOURCES:
        for body in (nested(depth), b"[" * depth + b"]" * depth):
            answer = check(kit, authenticate(source, body), case)
            if depth >= 5_000:
                expect(answer, 400, "malformed_body")
            else:
                assert answer.status in (400, 422), answer.body[:300]
    elif source == "html_form":
        answer = check(kit, authenticate(source, nested(depth), "application/json"), case)
        assert answer.status in (400, 422)
        if depth >= 5_000:
            expect(answer, 400, "malformed_body")
    elif source == "jotform":
        raw = '{"q3_email": "ann@example.com", "q4_x": ' + nested(depth).decode() + "}"
        fields = [("submissionID", uuid.uuid4().hex), ("rawRequest", raw)]
        answer = check(kit, authenticate(source, multipart(fields)), case)
        if depth == 5_000:
            expect(answer, 400, "malformed_body")
        elif depth == 100_000:  # a 500 kB form field: over Flask's MAX_FORM_MEMORY_SIZE
            expect(answer, 413)
    elif source == "mailchimp":
        pairs = [("type", "subscribe"), ("data[email]", "deep@example.com")]
        pairs.append(("data" + "[a]" * depth, "1"))
        pairs.append(("fired_at", uuid.uuid4().hex))
        check(kit, authenticate(source, urlencode(pairs).encode()), case)
    elif source == "salesforce":
        deep = "<x>" * depth + "</x>" * depth
        body = sf_envelope(
            "<Notification><Id>04l000000000001</Id>"
            f"<sObject><sf:Email xmlns:sf='urn:x'>{deep}</sf:Email></sObject></Notification>"
        )
        check(kit, authenticate(source, body), case)


@pytest.mark.parametrize("source", ["generic", "hubspot", "salesforce"])
def test_batches_past_the_cap_are_422_and_at_the_cap_accepted(kit: Kit, source: str) -> None:
    def batch(size: int) -> bytes:
        if source == "generic":
            base = payload("generic", "", "batch@example.com")
            return json.dumps(
                [{**base, "id": f"b-{uuid.uuid4().hex}"} for _ in range(size)]
            ).encode()
        if source == "hubspot":
            return json.dumps(
                [hubspot_event(next(_serial), "batch@example.com") for _ in range(size)]
            ).encode()
        return sf_envelope(
            *(
                sf_notification(f"04l{next(_serial):015d}"[:18], "003batch", "b@example.com")
                for _ in range(size)
            )
        )

    for size in (101, 1000):
        expect(check(kit, authenticate(source, batch(size)), f"batch of {size}"), 422)
    answer = check(kit, authenticate(source, batch(100)), "batch of 100 (the cap)")
    assert answer.status in (200, 202), answer.body[:300]
    if source == "generic":
        assert len(accepted_ids(answer)) == 100


INVALID_UTF8 = [b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"]


@pytest.mark.parametrize("source", ALL)
@pytest.mark.parametrize("bad", INVALID_UTF8, ids=lambda b: b.hex())
def test_invalid_utf8_is_refused_or_read_with_replacement(
    kit: Kit, source: str, bad: bytes
) -> None:
    case = "invalid UTF-8 in the body"
    if source in JSON_SOURCES or source == "salesforce":
        body = encode(source, payload(source, uuid.uuid4().hex, "utf8@example.com"))
        body = body.replace(b"utf8@", b"utf8" + bad + b"@")
        expect(check(kit, authenticate(source, body), case), 400, "malformed_body")
    else:
        # Form bodies are decoded with replacement characters: accepted or refused, no crash.
        body = encode(source, payload(source, uuid.uuid4().hex, "utf8@example.com"))
        body = body.replace(b"utf8", b"utf8" + quote(bad).encode() + bad)
        check(kit, authenticate(source, body), case)
    lone = b'{"x": "\\ud800"}'
    if source in JSON_SOURCES:
        answer = check(kit, authenticate(source, lone), "escaped lone surrogate")
        expect(answer, 400, "malformed_body")


WRONG_TYPES = [
    "text/plain",
    "application/octet-stream",
    "",
    "application/json-patch+json",
    "image/png",
    "application/x-www-form-urlencoded",
    "application/json",
    "text/xml",
]


@pytest.mark.parametrize("source", ALL)
def test_wrong_content_types_are_415(kit: Kit, source: str) -> None:
    body = valid(source).body
    accepted = {
        "html_form": {
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "application/json",
        },
        "jotform": {"multipart/form-data", "application/x-www-form-urlencoded"},
        "salesforce": {"text/xml", "application/xml"},
    }.get(source, {CONTENT_TYPE[source]})
    for content_type in WRONG_TYPES:
        if content_type in accepted:
            continue
        answer = check(kit, authenticate(source, body, content_type), "wrong Content-Type")
        expect(answer, 415, "unsupported_media_type")
    own = CONTENT_TYPE[source].split(";")[0]
    for odd in (
        own.upper(),
        f"{own}; charset=utf-16",
        f"{own};;;charset=",
        f'{own}; charset="\x00"; boundary=hostileBoundary42',
        f"{own}, text/plain",
        f" {own} ",
    ):
        answer = check(kit, authenticate(source, body, odd), "odd parameters on its own type")
        if source != "jotform":  # multipart needs its boundary parameter
            assert answer.status in (200, 202, 415), answer.body[:300]


INJECTED = "x\r\nX-Injected: 1"


@pytest.mark.parametrize("source", ALL)
def test_crlf_in_header_values_is_data_never_a_header(kit: Kit, source: str) -> None:
    delivery = valid(source)
    # An irrelevant header carrying CR/LF: just data; the delivery is still accepted.
    harmless = replace(
        delivery,
        environ={
            "HTTP_X_CUSTOM": INJECTED,
            "HTTP_USER_AGENT": "a\r\n\r\n<script>",
            "HTTP_X_FORWARDED_HOST": "evil.example\r\nX-Injected: 1",
        },
    )
    answer = check(kit, harmless, "CR/LF in an unrelated header")
    assert answer.status in (200, 202), answer.body[:300]
    # CR/LF inside the credentials header: refused.
    name = {
        "generic": "HTTP_WEBHOOK_SIGNATURE",
        "hubspot": "HTTP_X_HUBSPOT_SIGNATURE_V3",
        "typeform": "HTTP_TYPEFORM_SIGNATURE",
        "tally": "HTTP_TALLY_SIGNATURE",
        "calendly": "HTTP_CALENDLY_WEBHOOK_SIGNATURE",
        "pipedrive": "HTTP_AUTHORIZATION",
    }.get(source)
    fresh = valid(source)
    if name is not None:
        value = environ_for(fresh)[name]
        tampered = replace(fresh, environ={name: "\r\nX-Injected: 1\r\n" + value + INJECTED})
        expect(check(kit, tampered, "CR/LF in the credentials header"), 401)
    else:
        tampered = replace(fresh, query=urlencode({"token": SECRETS[source] + INJECTED}))
        expect(check(kit, tampered, "CR/LF in the URL token"), 401)
    if source == "generic":
        for header in ("HTTP_WEBHOOK_ID", "HTTP_WEBHOOK_TIMESTAMP"):
            bad = replace(fresh, environ={header: environ_for(fresh)[header] + INJECTED})
            expect(check(kit, bad, "CR/LF in webhook-id / webhook-timestamp"), 401)
    # CR/LF in the content type.
    crlf_type = replace(fresh, environ={"CONTENT_TYPE": CONTENT_TYPE[source] + INJECTED})
    check(kit, crlf_type, "CR/LF in Content-Type")
    # NUL and non-Latin-1 text in a header (a WSGI server passes them as latin-1 strings).
    odd = replace(fresh, environ={"HTTP_X_ODD": "\x00\xff\u00e9", "HTTP_ACCEPT": "\x00"})
    check(kit, odd, "NUL / high bytes in a header")


SQL_AND_PATHS = [
    "' OR 1=1 --",
    '"; DROP TABLE commands; --',
    "../../../etc/passwd",
    "..%2F..%2Fadmin",
    "a/b/c",
    "%2F",
    "x%00y",
    "?page=2&name=email#frag",
    "+60123456789",
]


@pytest.mark.parametrize("source", ALL)
def test_sql_and_path_characters_in_match_values_reach_the_sandbox_verbatim(
    kit: Kit, source: str
) -> None:
    channel = "crm" if source == "hubspot" else "main"
    for value in SQL_AND_PATHS:
        tables = kit.rows()
        answer = check(kit, valid(source, email=value), "SQL / path characters in match values")
        assert answer.status in (200, 202), (value, answer.body[:300])
        assert kit.rows()[1] == tables[1] + 1
        if source == "salesforce" or (source != "generic" and value not in SQL_AND_PATHS[1:3]):
            continue  # Salesforce's answer is its SOAP Ack, without ids; keep the run short
        ids = accepted_ids(answer)
        assert len(ids) == 1
        assert set(kit.apply(ids)) <= {"done", "skipped"}, value
        assert kit.state(ids[0]) == "done"
        found = [
            c
            for c in kit.sandbox.state.contacts(channel)
            if c["custom_fields"].get("email") == value
        ]
        assert found, f"{source}: no contact with email {value!r}"
    with kit.runtime.ledger.engine.connect() as connection:  # the tables are all still there
        assert connection.execute(select(func.count()).select_from(commands)).scalar_one() > 0


ODD_IDS = [
    "a/b",
    "100%",
    "%2F%2e%2e",
    "..",
    "../../etc/passwd",
    "ünïcødé-🚀-中文",
    "+/=",
    "a b\tc",
    "?x=1#y",
    "\\..\\",
    "' OR 1=1 --",
    "x" * 200,
]


def plant(kit: Kit, channel: str, contact_id: str) -> None:
    """A contact with exactly this id in the sandbox (ids the sandbox itself would not make)."""
    state = kit.sandbox.state
    created = state.create_contact(channel, {"email": f"{uuid.uuid4().hex}@odd.example"})
    with state._lock:
        contacts = state._channel(channel).contacts
        del contacts[created.id]
        contacts[contact_id] = StoredContact(
            contact_id, created.custom_fields, [], created.created_at
        )


@pytest.mark.parametrize("contact_id", ODD_IDS, ids=lambda s: repr(s[:20]))
def test_odd_viber_ids_go_end_to_end_base64_and_percent_encoded(kit: Kit, contact_id: str) -> None:
    plant(kit, "viber", contact_id)
    events_ = [
        {"id": f"odd-{uuid.uuid4().hex}", "type": "contact.upsert", "channel": "viber",
         "contact_id": contact_id, "fields": {"firstName": "Odd"}},
        {"id": f"odd-{uuid.uuid4().hex}", "type": "contact.tag", "channel": "viber",
         "contact_id": contact_id, "tags": ["odd"]},
    ]  # fmt: skip
    answer = check(kit, authenticate("generic", json.dumps(events_).encode()), "odd Viber ids")
    expect(answer, 202)
    ids = accepted_ids(answer)
    assert set(kit.apply(ids)) <= {"done", "skipped"}
    assert [kit.state(i) for i in ids] == ["done", "done"]
    contact = kit.sandbox.state.contact("viber", contact_id)
    assert contact is not None
    assert contact.custom_fields["firstName"] == "Odd" and contact.tags == ["odd"]
    paths = [call_.path for call_ in kit.sandbox.state.calls("viber")][-3:]
    encoded = quote(base64.b64encode(contact_id.encode()).decode(), safe="")
    assert any(encoded in p or base64.b64encode(contact_id.encode()).decode() in p for p in paths)


@pytest.mark.parametrize("contact_id", ["x" * 201, "", "   ", True, 1.5, None, [], {}])
def test_contact_ids_that_cannot_be_ids_are_422(kit: Kit, contact_id: Any) -> None:
    event = {"type": "contact.tag", "channel": "viber", "contact_id": contact_id, "tags": ["t"]}
    answer = check(kit, authenticate("generic", json.dumps(event).encode()), "unusable contact_id")
    expect(answer, 422, "invalid_event")
    assert answer.json()["field"] == "contact_id"


XML_BOMBS = {
    "billion laughs": (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(
            f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'
            for i in range(1, 10)
        )
        + "]><lolz>&lol9;</lolz>"
    ),
    "external entity (XXE)": (
        '<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        "<foo>&xxe;</foo>"
    ),
    "external DTD": '<?xml version="1.0"?><!DOCTYPE foo SYSTEM "http://127.0.0.1:1/x.dtd"><foo/>',
    "parameter entity": (
        '<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY % p SYSTEM "http://127.0.0.1:1/p">%p;]><foo/>'
    ),
    "quadratic blowup": (
        f'<?xml version="1.0"?><!DOCTYPE q [<!ENTITY a "{"a" * 50_000}">]><q>{"&a;" * 10_000}</q>'
    ),
    "undeclared entity": "<foo>&xxe;</foo>",
    "entity inside the envelope": None,  # built below
    "XInclude": (
        '<x xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="file:///etc/passwd"/></x>'
    ),
    "UTF-7 declaration": '<?xml version="1.0" encoding="UTF-7"?><x/>',
    "not XML": '{"json": true}',
    "empty": "",
    "unclosed": "<soapenv:Envelope",
}


@pytest.mark.parametrize("name", list(XML_BOMBS))
def test_xml_bombs_are_refused_before_expansion(kit: Kit, name: str) -> None:
    text = XML_BOMBS[name]
    if text is None:
        body = sf_envelope(sf_notification("04l000000000009", "003x", "&xxe;")).replace(
            b"&amp;xxe;", b"&xxe;"
        )
        body = body.replace(
            b"<soapenv:Envelope",
            b'<!DOCTYPE soapenv:Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            b"<soapenv:Envelope",
        )
    else:
        body = text.encode()
    started = time.monotonic()
    answer = check(kit, authenticate("salesforce", body), f"XML: {name}")
    assert time.monotonic() - started < 2, "no entity expansion"
    assert answer.status in (400, 401), answer.body[:300]
    if "DOCTYPE" in (text or "<!DOCTYPE") or name == "undeclared entity":
        expect(answer, 400, "malformed_body")
    assert b"root:" not in answer.body


def test_a_utf16_message_is_read_or_refused_never_a_crash(kit: Kit) -> None:
    text = valid("salesforce").body.decode().replace('encoding="UTF-8"', 'encoding="UTF-16"')
    check(kit, authenticate("salesforce", text.encode("utf-16")), "XML: UTF-16 message")


MULTIPART_EDGES: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "no boundary parameter": ("multipart/form-data", lambda b: b),
    "boundary not in the body": ("multipart/form-data; boundary=other", lambda b: b),
    "truncated before the closing boundary": (
        "multipart/form-data; boundary=hostileBoundary42",
        lambda b: b[: len(b) // 2],
    ),
    "no closing boundary": (
        "multipart/form-data; boundary=hostileBoundary42",
        lambda b: b.replace(b"--hostileBoundary42--\r\n", b""),
    ),
    "empty body": ("multipart/form-data; boundary=hostileBoundary42", lambda b: b""),
    "a part without Content-Disposition": (
        "multipart/form-data; boundary=hostileBoundary42",
        lambda b: b.replace(b"Content-Disposition: form-data; ", b"X-Nothing: ", 1),
    ),
    "fields sent as files": (
        "multipart/form-data; boundary=hostileBoundary42",
        lambda b: b.replace(b'"\r\n\r\n', b'"; filename="a.txt"\r\n\r\n'),
    ),
    "a 200-character boundary": (
        "multipart/form-data; boundary=" + "b" * 200,
        lambda b: b.replace(b"hostileBoundary42", b"b" * 200),
    ),
    "quoted boundary with odd characters": (
        'multipart/form-data; boundary="a\'()+_,-./:=? b"',
        lambda b: b.replace(b"hostileBoundary42", b"a'()+_,-./:=? b"),
    ),
    "NUL in a field name": (
        "multipart/form-data; boundary=hostileBoundary42",
        lambda b: b.replace(b'name="', b'name="\x00', 1),
    ),
    "part charset utf-16": (
        "multipart/form-data; boundary=hostileBoundary42",
        lambda b: b.replace(b"\r\n\r\n", b"\r\nContent-Type: text/plain; charset=utf-16\r\n\r\n"),
    ),
    "preamble and epilogue": (
        "multipart/form-data; boundary=hostileBoundary42",
        lambda b: b"preamble\r\n" + b + b"epilogue",
    ),
}


def form_fields(source: str) -> list[tuple[str, str]]:
    uid = uuid.uuid4().hex
    fields = payload(source, uid, f"{uid}@multipart.example")
    assert isinstance(fields, list)
    return fields


@pytest.mark.parametrize("source", ["jotform", "html_form"])
@pytest.mark.parametrize("edge", list(MULTIPART_EDGES))
def test_multipart_edge_cases(kit: Kit, source: str, edge: str) -> None:
    content_type, mangle = MULTIPART_EDGES[edge]
    body = mangle(multipart(form_fields(source)))
    check(kit, authenticate(source, body, content_type), f"multipart: {edge}")


@pytest.mark.parametrize("source", ["jotform", "html_form"])
def test_multipart_floods_are_413(kit: Kit, source: str) -> None:
    many = form_fields(source) + [(f"f{i}", "v") for i in range(2000)]
    content_type = "multipart/form-data; boundary=hostileBoundary42"
    answer = check(
        kit, authenticate(source, multipart(many), content_type), "multipart: 2000 parts"
    )
    expect(answer, 413)
    huge = [*form_fields(source), ("blob", "z" * 600_000)]
    answer = check(
        kit, authenticate(source, multipart(huge), content_type), "multipart: 600 kB field"
    )
    expect(answer, 413)
    twice = [*form_fields(source), ("rawRequest", "{}"), ("email", "b@example.com")]
    check(kit, authenticate(source, multipart(twice), content_type), "multipart: repeated fields")


def test_unknown_sources_and_odd_paths_are_404(kit: Kit) -> None:
    body = valid("generic").body
    for path in (
        "/webhooks/nope",
        "/webhooks/..%2Fadmin",
        "/webhooks/%0D%0AX-Injected:%201",
        "/webhooks/' OR 1=1 --",
        "/webhooks/" + "a" * 5000,
    ):
        delivery = replace(authenticate("generic", body), path=path)
        answer = check(kit, delivery, "unknown source / odd path")
        expect(answer, 404)


# -- the admin API --------------------------------------------------------------------------


def admin(
    kit: Kit, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
) -> Answer:
    builder = EnvironBuilder(path=f"/admin/api{path}", method=method, headers=headers, **kw)
    environ = builder.get_environ()
    builder.close()
    before = kit.rows()
    answer = call(kit.app, environ)
    assert answer.status < 500, (path, answer.body[:300])
    if answer.status >= 400:
        assert answer.json()["error"] and answer.json()["detail"]
        assert kit.rows() == before
    return answer


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {base64.b64encode(f'admin:{ADMIN_TOKEN}'.encode()).decode()}",
        f"Token {ADMIN_TOKEN}",
        "Bearer wrong-token",
        f"Bearer {ADMIN_TOKEN[:-1]}",
        f"Bearer {ADMIN_TOKEN}x",
        f"Bearer {ADMIN_TOKEN.upper()}",
        f"Bearer {ADMIN_TOKEN[:-1]}\u00e9",
        "Bearer ' OR 1=1 --",
    ],
)
def test_the_admin_api_refuses_without_the_right_token(kit: Kit, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in (
        ("GET", "/dead-letters"),
        ("GET", "/dead-letters/1"),
        ("POST", "/dead-letters/replay"),
        ("POST", "/dead-letters/purge"),
        ("DELETE", "/dead-letters/1"),
    ):
        answer = admin(kit, method, path, headers, json={"all": True})
        expect(answer, 401, "unauthorized")
        assert any(name == "WWW-Authenticate" for name, _ in answer.headers)
    query = admin(kit, "GET", "/dead-letters", query_string={"token": ADMIN_TOKEN})
    expect(query, 401, "unauthorized")


def test_the_admin_token_is_compared_with_hmac_compare_digest(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(webhooks.admin.hmac, "compare_digest", spy)
    expect(admin(kit, "GET", "/dead-letters", {"Authorization": "Bearer guess"}), 401)
    assert (b"guess", ADMIN_TOKEN.encode()) in calls
    calls.clear()
    expect(admin(kit, "GET", "/dead-letters", {"Authorization": f"Bearer {ADMIN_TOKEN}"}), 200)
    assert (ADMIN_TOKEN.encode(), ADMIN_TOKEN.encode()) in calls
    # And its answer is the decision: nothing else (no ==) compares the token.
    monkeypatch.setattr(webhooks.admin.hmac, "compare_digest", lambda a, b: True)
    expect(admin(kit, "GET", "/dead-letters", {"Authorization": "Bearer anything"}), 200)
    monkeypatch.setattr(webhooks.admin.hmac, "compare_digest", lambda a, b: False)
    expect(admin(kit, "GET", "/dead-letters", {"Authorization": f"Bearer {ADMIN_TOKEN}"}), 401)


@pytest.mark.parametrize("value", [*SQL_AND_PATHS, "9" * 40, "-1", "ünï", "\x01\x7f"])
def test_hostile_admin_parameters_are_named_refusals_or_empty_answers(kit: Kit, value: str) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    rows = kit.rows()
    for key in ("channel", "source", "reason", "since", "limit", "offset", "ids", "bogus"):
        answer = admin(kit, "GET", "/dead-letters", auth, query_string={key: value})
        assert answer.status in (200, 400), (key, answer.body[:300])
        if answer.status == 200:
            assert answer.json()["items"] == []
    for body in (
        {"filter": {"channel": value}},
        {"filter": {"source": value, "reason": value}},
        {"ids": [value]},
        {"all": value},
    ):
        answer = admin(kit, "POST", "/dead-letters/purge", auth, json=body)
        assert answer.status in (200, 400), (body, answer.body[:300])
        if answer.status == 200:
            assert answer.json() == {"purged": 0}
        answer = admin(kit, "POST", "/dead-letters/replay", auth, json=body)
        assert answer.status in (200, 400), (body, answer.body[:300])
    for path in (f"/dead-letters/{quote(value, safe='')}", "/dead-letters/99999999999999999999999"):
        assert admin(kit, "GET", path, auth).status in (404, 405)
        assert admin(kit, "DELETE", path, auth).status in (404, 405)
    raw = admin(
        kit,
        "POST",
        "/dead-letters/purge",
        auth,
        data=value.encode(),
        content_type="application/json",
    )
    expect(raw, 400)
    assert kit.rows() == rows


def test_a_nul_in_an_admin_filter_is_a_named_refusal(kit: Kit) -> None:
    """PostgreSQL text cannot hold a NUL: the filter refuses it (this answered 500 there)."""
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for key in ("channel", "source", "reason"):
        answer = admin(kit, "GET", "/dead-letters", auth, query_string={key: "a\x00b"})
        expect(answer, 400, "invalid_parameter")
        body = {"filter": {key: "a\x00b"}}
        expect(admin(kit, "POST", "/dead-letters/purge", auth, json=body), 400)
        expect(admin(kit, "POST", "/dead-letters/replay", auth, json=body), 400)


# -- fuzzing --------------------------------------------------------------------------------

HEADER_NAMES = [
    "Content-Type",
    "Authorization",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "X-HubSpot-Signature-v3",
    "X-HubSpot-Request-Timestamp",
    "X-HubSpot-Signature",
    "X-HubSpot-Signature-Version",
    "Typeform-Signature",
    "Tally-Signature",
    "Calendly-Webhook-Signature",
    "X-Form-Token",
    "Transfer-Encoding",
    "X-Forwarded-Host",
]
CONTENT_TYPES = [
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "multipart/form-data; boundary=x",
    "text/xml",
    "application/xml; charset=latin-1",
    "text/plain",
    "",
]
header_text = st.text(st.characters(codec="latin-1"), max_size=120)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    source=st.sampled_from(ALL),
    body=st.binary(max_size=3000),
    content_type=st.one_of(st.sampled_from(CONTENT_TYPES), header_text),
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES[1:]), header_text, max_size=5),
    query=st.one_of(st.just(""), st.text(max_size=60), st.just("token=")),
)
def test_fuzz_random_bytes_headers_and_content_types(
    kit: Kit,
    source: str,
    body: bytes,
    content_type: str,
    headers: dict[str, str],
    query: str,
) -> None:
    delivery = Delivery(source, body, {**headers, "Content-Type": content_type}, query)
    check(kit, delivery)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, part in value.items():
            yield from paths_of(part, (*prefix, key))
    elif isinstance(value, list):
        for index, part in enumerate(value):
            yield from paths_of(part, (*prefix, index))


def put(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copied = copy.copy(value)
    copied[path[0]] = put(value[path[0]], path[1:], new)
    return copied


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(source=st.sampled_from(ALL), data=st.data())
def test_fuzz_signed_payloads_with_one_part_replaced(kit: Kit, source: str, data: Any) -> None:
    """Past authentication: the vendor's own shape with any one part swapped for any JSON."""
    content = payload(source, uuid.uuid4().hex, "fuzz@example.com")
    if source == "salesforce":
        text = data.draw(st.text(max_size=40))
        content = content.replace("fuzz@example.com", escape(text))
        check(kit, authenticate(source, encode(source, content)))
        return
    if isinstance(content, list) and content and isinstance(content[0], tuple):
        index = data.draw(st.integers(0, len(content) - 1))
        name, _ = content[index]
        new = data.draw(st.one_of(st.text(max_size=40), json_values.map(json.dumps)))
        if source == "jotform" and name == "rawRequest":
            raw = json.loads(content[index][1])
            path = data.draw(st.sampled_from(list(paths_of(raw))))
            new = json.dumps(put(raw, path, data.draw(json_values)))
        content = [*content[:index], (name, new), *content[index + 1 :]]
        check(kit, authenticate(source, encode(source, content)))
        return
    path = data.draw(st.sampled_from(list(paths_of(content))))
    mutated = put(content, path, data.draw(json_values))
    check(kit, authenticate(source, json.dumps(mutated).encode()))


@pytest.mark.parametrize("source", ALL)
@pytest.mark.parametrize(
    "value", ["nul\x00byte@example.com", "l" * 4096], ids=["NUL", "4096 chars"]
)
def test_values_a_database_column_cannot_hold_are_422_not_500(
    kit: Kit, source: str, value: str
) -> None:
    """A match value past 500 characters is refused naming it, on every backend; PostgreSQL
    refuses NUL in text (SQLite keeps it): the receiver answers 422 ``unstorable_value``,
    never 500, and records nothing."""
    answer = check(kit, valid(source, email=value), "NUL / 4096-character match value")
    matches_on_email = source not in ("hubspot", "salesforce")
    if source == "salesforce" and "\x00" in value:
        expect(answer, 400, "malformed_body")  # XML cannot carry a NUL at all
    elif matches_on_email and len(value) > 500:
        expect(answer, 422, "invalid_event")  # the match value names the contact: bounded
    elif kit.backend == "postgresql" and matches_on_email:
        expect(answer, 422, "unstorable_value")  # the match value is a column of its own
    else:
        assert answer.status in (200, 202), answer.body[:300]


@pytest.mark.parametrize("length", [100, 101, 5000])
def test_long_vendor_event_types(kit: Kit, length: int) -> None:
    """The event's type is a 100-character column; Typeform and Salesforce send any text."""
    content = payload("typeform", uuid.uuid4().hex, "type@example.com")
    content["event_type"] = "t" * length
    body = json.dumps(content).encode()
    typeform_answer = check(kit, authenticate("typeform", body), "event type over 100 characters")
    xsi_type = f'xsi:type="sf:{"C" * length}"'.encode()
    body = valid("salesforce").body.replace(b'xsi:type="sf:Contact"', xsi_type)
    sf_answer = check(kit, authenticate("salesforce", body), "event type over 100 characters")
    for answer in (typeform_answer, sf_answer):
        if kit.backend == "postgresql" and length > 100:
            expect(answer, 422, "unstorable_value")
        else:
            assert answer.status in (200, 202), answer.body[:300]


@pytest.mark.parametrize("length", [300, 301, 5000])
def test_long_typeform_event_ids(kit: Kit, length: int) -> None:
    """The event key is a 300-character column; Typeform's ``event_id`` has no bound."""
    content = payload("typeform", "k" * length, "key@example.com")
    answer = check(kit, authenticate("typeform", json.dumps(content).encode()), "event id over 300")
    if kit.backend == "postgresql" and length > 300:
        expect(answer, 422, "unstorable_value")
    else:
        assert answer.status in (200, 202), answer.body[:300]
