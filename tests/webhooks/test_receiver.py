"""The receiver's answers: every refusal code, with a JSON body naming what was wrong, and
nothing recorded from a refused request."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import jsonify
from flask.testing import FlaskClient
from stack import SECRET, signed_headers, write_config

from webhooks.app import create_app
from webhooks.receiver import Receiver
from webhooks.signing import WebhookSecret, sign
from worker.config import Settings, load_config
from worker.contacts_api.sandbox import SandboxServer
from worker.ledger import Ledger, connect
from worker.runtime import Runtime

EVENT = {
    "id": "evt-1",
    "type": "contact.upsert",
    "match": {"email": "a@example.com"},
    "fields": {"firstName": "Ann"},
}


@pytest.fixture
def runtime(tmp_path: Path, sandbox: SandboxServer) -> Iterator[Runtime]:
    config_path = write_config(tmp_path / "contactsync.yaml", sandbox)
    settings = Settings(config=config_path, data_dir=tmp_path / "data")
    built = Runtime(settings, load_config(config_path))
    yield built
    built.ledger.engine.dispose()


@pytest.fixture
def http(runtime: Runtime) -> FlaskClient:
    return create_app(runtime).test_client()


def post(
    http: FlaskClient, body: bytes, headers: dict[str, str] | None = None, source: str = "website"
) -> Any:
    return http.post(
        f"/webhooks/{source}",
        data=body,
        headers=signed_headers(body) if headers is None else headers,
    )


def refused(response: Any, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == error
    assert body["detail"]
    return dict(body)


def test_accepted_event_is_202_with_its_id_and_commands(
    http: FlaskClient, runtime: Runtime
) -> None:
    response = post(http, json.dumps(EVENT).encode())
    assert response.status_code == 202
    body = response.get_json()
    assert body["event_id"] == "evt-1" and body["duplicate"] is False
    (command_id,) = body["commands"]
    row = runtime.ledger.command(command_id)
    assert row is not None and row["state"] == "pending" and row["kind"] == "upsert"


def test_the_accepted_answer_is_what_jsonify_writes(http: FlaskClient) -> None:
    """The answer is written without jsonify's provider, to the byte as it would write it."""
    event = {**EVENT, "id": 'evt-\u00e9"2'}  # escaped as Flask escapes it
    single = post(http, json.dumps(event).encode())
    batch = post(http, json.dumps([{**EVENT, "id": "evt-3"}, {**EVENT, "id": "evt-4"}]).encode())
    with http.application.app_context():
        for response in (single, batch):
            expected = jsonify(response.get_json())
            assert response.get_data() == expected.get_data()
            assert response.headers["Content-Type"] == expected.headers["Content-Type"]
    assert single.get_json()["event_id"] == 'evt-\u00e9"2'
    assert [e["event_id"] for e in batch.get_json()["events"]] == ["evt-3", "evt-4"]


def test_duplicate_is_200_and_records_nothing_new(http: FlaskClient, runtime: Runtime) -> None:
    body = json.dumps(EVENT).encode()
    first = post(http, body).get_json()
    again = post(http, body)
    assert again.status_code == 200
    assert again.get_json() == {**first, "duplicate": True}
    assert sum(runtime.ledger.counts().values()) == 1


def test_unknown_source_is_404(http: FlaskClient) -> None:
    refused(post(http, json.dumps(EVENT).encode(), source="nope"), 404, "unknown_source")


def test_over_the_size_cap_is_413(http: FlaskClient, runtime: Runtime) -> None:
    body = b"[" + b" " * (1024 * 1024) + b"]"
    assert post(http, body).status_code == 413
    assert sum(runtime.ledger.counts().values()) == 0


def test_wrong_content_type_is_415(http: FlaskClient) -> None:
    body = json.dumps(EVENT).encode()
    headers = {**signed_headers(body), "Content-Type": "text/plain"}
    refused(post(http, body, headers), 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        (lambda h: h.pop("webhook-signature"), "missing_headers"),
        (lambda h: h.update({"webhook-signature": "v1,AAAA"}), "invalid_signature"),
        (lambda h: h.update({"webhook-timestamp": str(int(time.time()) - 600)}), "stale_timestamp"),
    ],
)
def test_missing_bad_or_stale_signature_is_401(
    http: FlaskClient, runtime: Runtime, tamper: Any, error: str
) -> None:
    body = json.dumps(EVENT).encode()
    headers = signed_headers(body)
    tamper(headers)
    refused(post(http, body, headers), 401, error)
    assert sum(runtime.ledger.counts().values()) == 0


def test_a_signature_over_other_bytes_is_401(http: FlaskClient) -> None:
    headers = signed_headers(json.dumps(EVENT).encode())
    refused(
        post(http, json.dumps({**EVENT, "id": "evt-2"}).encode(), headers), 401, "invalid_signature"
    )


def test_malformed_body_is_400(http: FlaskClient) -> None:
    refused(post(http, b'{"id": "evt-1",'), 400, "malformed_body")


def test_invalid_event_is_422_naming_the_field(http: FlaskClient, runtime: Runtime) -> None:
    body = json.dumps({**EVENT, "fields": {"locale": "en"}}).encode()
    detail = refused(post(http, body), 422, "invalid_event")
    assert detail["field"] == "fields.locale"
    batch = json.dumps([EVENT, {**EVENT, "id": "evt-2", "type": "contact.merge"}]).encode()
    assert refused(post(http, batch), 422, "invalid_event")["field"] == "[1].type"
    assert sum(runtime.ledger.counts().values()) == 0


def test_ledger_that_cannot_be_written_is_503_with_retry_after(runtime: Runtime) -> None:
    broken = Ledger(connect("postgresql://postgres@127.0.0.1:1/none"))
    receiver = Receiver(runtime.config, broken)
    app = create_app(runtime)
    body = json.dumps(EVENT).encode()
    with app.test_request_context(
        "/webhooks/website", method="POST", data=body, headers=signed_headers(body)
    ):
        from webhooks.errors import Refusal

        with pytest.raises(Refusal) as caught:
            receiver.handle("website")
    assert caught.value.status == 503
    assert caught.value.headers["Retry-After"].isdigit()


def test_health_and_readiness(http: FlaskClient) -> None:
    assert http.get("/healthz").get_json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"ledger": "ok", "broker": "ok"}


def test_unknown_path_and_method_answer_json(http: FlaskClient) -> None:
    assert http.get("/nope").get_json()["error"] == "not_found"
    assert http.get("/webhooks/website").status_code == 405


def test_signing_helper_matches_the_secret() -> None:
    body = b"{}"
    header = sign(WebhookSecret.parse(SECRET), "msg_1", 1_700_000_000, body)
    assert header.startswith("v1,")


def test_a_vendor_source_without_a_secret_is_refused_at_start_up() -> None:
    from webhooks.receiver import build_source
    from worker.config import SourceConfig

    with pytest.raises(ValueError, match=r"sources\.forms\.secret: not set"):
        build_source("forms", SourceConfig(kind="typeform", channel="main"))
    with pytest.raises(ValueError, match=r"sources\.forms\.kind: unknown source kind"):
        build_source("forms", SourceConfig(kind="typo", secret="x"))


def test_forwarded_headers_are_believed_only_when_configured(
    runtime: Runtime, tmp_path: Path
) -> None:
    from flask import request

    def seen_url(app: Any) -> str:
        @app.get("/probe")
        def probe() -> str:
            return request.url

        headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com"}
        return str(app.test_client().get("/probe", headers=headers).get_data(as_text=True))

    assert seen_url(create_app(runtime)).startswith("http://localhost/")
    trusting = Runtime(
        Settings(config=runtime.settings.config, data_dir=tmp_path / "d2", trust_proxy_hops=1),
        runtime.config,
    )
    assert seen_url(create_app(trusting)) == "https://hooks.example.com/probe"
    trusting.ledger.engine.dispose()
