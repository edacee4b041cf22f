"""Typeform: signature, flattening by ref, mapping, end to end to the sandbox."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from source_kit import SourceKit

from webhooks.sources import typeform
from webhooks.sources.base import InboundRequest, SourceRefusal

SECRET = "typeform-test-secret"

PAYLOAD: dict[str, Any] = {
    "event_id": "01HQX9ZJ7N3V6PKGN3R2XWJ6TQ",
    "event_type": "form_response",
    "form_response": {
        "form_id": "lT4Z3j",
        "token": "a3a12ec67a1365927098a606107fac15",
        "submitted_at": "2024-05-01T10:00:00Z",
        "hidden": {"utm_source": "newsletter"},
        "definition": {"id": "lT4Z3j", "title": "Signup", "fields": []},
        "answers": [
            {
                "type": "text",
                "text": "Ann",
                "field": {"id": "f1", "type": "short_text", "ref": "first_name"},
            },
            {
                "type": "email",
                "email": "ann@example.com",
                "field": {"id": "f2", "type": "email", "ref": "work_email"},
            },
            {
                "type": "choice",
                "choice": {"label": "Gold"},
                "field": {"id": "f3", "type": "multiple_choice", "ref": "plan"},
            },
            {
                "type": "boolean",
                "boolean": True,
                "field": {"id": "f4", "type": "yes_no", "ref": "consent"},
            },
        ],
    },
}

CONFIG = {
    "kind": "typeform",
    "secret": SECRET,
    "channel": "main",
    "fields": {"plan": "plan"},
    "tags": ["typeform"],
    "tags_from": ["plan"],
}


def deliver(kit: SourceKit, payload: Any = PAYLOAD, *, secret: str = SECRET) -> Any:
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "Typeform-Signature": typeform.sign(secret, body),
    }
    return kit.post("forms", body, headers)


def test_a_response_reaches_the_sandbox_with_fields_and_tags(source_kit: Any) -> None:
    kit = source_kit({"forms": CONFIG})
    response = deliver(kit)
    assert response.status_code == 202, response.get_json()
    assert kit.apply_all() == ["done"]
    contact = kit.contact("email", "ann@example.com")
    assert contact["custom_fields"]["firstName"] == "Ann"
    assert contact["custom_fields"]["plan"] == "Gold"
    assert contact["tags"] == ["typeform", "Gold"]


def test_a_redelivery_is_a_duplicate(source_kit: Any) -> None:
    kit = source_kit({"forms": CONFIG})
    assert deliver(kit).status_code == 202
    again = deliver(kit)
    assert again.status_code == 200
    assert again.get_json()["events"][0]["duplicate"] is True
    assert len(kit.recorded()) == 1


def test_a_wrong_signature_is_401_and_nothing_is_recorded(source_kit: Any) -> None:
    kit = source_kit({"forms": CONFIG})
    assert deliver(kit, secret="another-secret").status_code == 401
    body = json.dumps(PAYLOAD).encode()
    missing = kit.post("forms", body, {"Content-Type": "application/json"})
    assert missing.status_code == 401 and missing.get_json()["error"] == "missing_headers"
    assert kit.recorded() == []


def test_a_malformed_body_is_400(source_kit: Any) -> None:
    kit = source_kit({"forms": CONFIG})
    body = b'{"event_id": "x", "form_response": 3}'
    headers = {
        "Content-Type": "application/json",
        "Typeform-Signature": typeform.sign(SECRET, body),
    }
    assert kit.post("forms", body, headers).status_code == 400
    assert kit.recorded() == []


def test_a_response_without_the_match_value_is_422_naming_it(source_kit: Any) -> None:
    kit = source_kit({"forms": CONFIG})
    payload = json.loads(json.dumps(PAYLOAD))
    payload["form_response"]["answers"] = payload["form_response"]["answers"][:1]
    response = deliver(kit, payload)
    assert response.status_code == 422
    assert response.get_json()["field"] == "type:email"
    assert kit.recorded() == []


def test_wrong_content_type_is_415(source_kit: Any) -> None:
    kit = source_kit({"forms": CONFIG})
    assert kit.post("forms", b"a=b", {"Content-Type": "text/plain"}).status_code == 415


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=2000), header=st.text(max_size=80))
def test_no_bytes_make_it_raise_anything_but_its_refusals(body: bytes, header: str) -> None:
    request = InboundRequest(
        "POST", "http://x/webhooks/forms", {"typeform-signature": header}, body, "application/json"
    )
    for step in (
        lambda: typeform.verify(request, [SECRET], None, lambda: 0.0),
        lambda: typeform.records(request, None),
    ):
        with contextlib.suppress(SourceRefusal):
            step()


@pytest.mark.parametrize("answers", [[{"type": "text"}], "nope", [3]])
def test_odd_answers_are_refusals_not_crashes(answers: Any) -> None:
    payload = {"event_id": "e", "form_response": {"answers": answers}}
    request = InboundRequest(
        "POST", "http://x", {}, json.dumps(payload).encode(), "application/json"
    )
    with pytest.raises(SourceRefusal):
        typeform.records(request, None)
