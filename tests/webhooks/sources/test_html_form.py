"""HTML forms and Google Forms: the shared secret, honeypot, redirect, end to end."""

from __future__ import annotations

import contextlib
import json
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from source_kit import SourceKit

from webhooks.sources import html_form
from webhooks.sources.base import InboundRequest, SourceRefusal
from worker.ledger.schema import events

SECRET = "html-form-test-secret"

FORM = {
    "_token": SECRET,
    "email": "ann@example.com",
    "first_name": "Ann",
    "last_name": "Lee",
    "phone": "+60123456789",
    "plan": "Gold",
}

CONFIG = {
    "kind": "html_form",
    "secret": SECRET,
    "channel": "main",
    "fields": {"plan": "plan"},
    "tags": ["website"],
    "tags_from": ["plan"],
}

GOOGLE = {
    "responseId": "2_ABaOnudcRgzR1Xy",
    "timestamp": "2024-05-01T10:00:00.000Z",
    "email": "ann@example.com",
    "name": "Ann Lee",
    "answers": {"Which plan?": "Gold", "Topics": ["Billing", "Support"]},
}


def post_form(kit: SourceKit, form: dict[str, str], **kwargs: Any) -> Any:
    """POST as a browser does: urlencoded."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return kit.post("contact", urlencode(form).encode(), headers, **kwargs)


def payloads(kit: SourceKit) -> list[dict[str, Any]]:
    """Every event payload the ledger keeps."""
    with kit.runtime.ledger.engine.connect() as connection:
        return [dict(row.payload) for row in connection.execute(events.select())]


def test_a_form_post_reaches_the_sandbox_and_the_secret_is_not_kept(source_kit: Any) -> None:
    kit = source_kit({"contact": CONFIG})
    response = post_form(kit, FORM)
    assert response.status_code == 202, response.get_json()
    assert kit.apply_all() == ["done"]
    contact = kit.contact("email", "ann@example.com")
    assert contact["custom_fields"]["firstName"] == "Ann"
    assert contact["custom_fields"]["lastName"] == "Lee"
    assert contact["custom_fields"]["phone"] == "+60123456789"
    assert contact["tags"] == ["website", "Gold"]
    [payload] = payloads(kit)
    assert "_token" not in payload and SECRET not in json.dumps(payload)


def test_a_multipart_post_is_accepted(source_kit: Any) -> None:
    kit = source_kit({"contact": CONFIG})
    response = kit.http.post("/webhooks/contact", data=FORM, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    assert kit.apply_all() == ["done"]
    assert kit.contact("email", "ann@example.com")["custom_fields"]["firstName"] == "Ann"


def test_a_double_submit_is_recorded_once_even_with_a_new_multipart_boundary(
    source_kit: Any,
) -> None:
    kit = source_kit({"contact": CONFIG})
    assert post_form(kit, FORM).status_code == 202
    again = kit.http.post("/webhooks/contact", data=FORM, content_type="multipart/form-data")
    assert again.status_code == 200
    assert again.get_json()["events"][0]["duplicate"] is True
    assert len(kit.recorded()) == 1


def test_google_forms_json_with_a_response_id_dedupes_on_it(source_kit: Any) -> None:
    config = {**CONFIG, "id_field": "responseId"}
    kit = source_kit({"contact": config})
    headers = {"Content-Type": "application/json"}
    first = kit.post(
        "contact", json.dumps(GOOGLE).encode(), headers, query_string={"token": SECRET}
    )
    assert first.status_code == 202, first.get_json()
    assert first.get_json()["events"][0]["event_id"] == "2_ABaOnudcRgzR1Xy"
    retry = {**GOOGLE, "timestamp": "2024-05-01T10:00:05.000Z"}
    again = kit.post("contact", json.dumps(retry).encode(), headers, query_string={"token": SECRET})
    assert again.status_code == 200
    assert kit.apply_all() == ["done"]
    contact = kit.contact("email", "ann@example.com")
    assert contact["custom_fields"]["firstName"] == "Ann Lee"
    [payload] = payloads(kit)
    assert payload["answers.Topics"] == "Billing, Support"


def test_a_missing_response_id_is_422_when_one_is_configured(source_kit: Any) -> None:
    kit = source_kit({"contact": {**CONFIG, "id_field": "responseId"}})
    response = post_form(kit, FORM)
    assert response.status_code == 422
    assert response.get_json()["field"] == "responseId"


def test_a_redirect_url_answers_303_to_it(source_kit: Any) -> None:
    kit = source_kit({"contact": {**CONFIG, "redirect_url": "https://example.com/thanks"}})
    response = post_form(kit, FORM)
    assert response.status_code == 303
    assert response.headers["Location"] == "https://example.com/thanks"
    assert len(kit.recorded()) == 1
    assert post_form(kit, FORM).status_code == 303


@pytest.mark.parametrize("redirect", [None, "/thanks"])
def test_a_filled_honeypot_is_answered_as_accepted_and_records_nothing(
    source_kit: Any, redirect: str | None
) -> None:
    config = {**CONFIG, "honeypot_field": "website", "redirect_url": redirect}
    kit = source_kit({"contact": config})
    response = post_form(kit, {**FORM, "website": "http://spam.example"})
    assert response.status_code == (303 if redirect else 200)
    assert kit.recorded() == []
    assert post_form(kit, {**FORM, "website": ""}).status_code == (303 if redirect else 202)
    assert "website" not in payloads(kit)[0]


@pytest.mark.parametrize(
    ("form", "query", "error"),
    [
        ({**FORM, "_token": "wrong"}, {}, "invalid_token"),
        ({k: v for k, v in FORM.items() if k != "_token"}, {}, "missing_token"),
        ({k: v for k, v in FORM.items() if k != "_token"}, {"token": "wrong"}, "invalid_token"),
    ],
    ids=["wrong-field", "missing", "wrong-query"],
)
def test_a_wrong_or_missing_secret_is_401_and_nothing_is_recorded(
    source_kit: Any, form: dict[str, str], query: dict[str, str], error: str
) -> None:
    kit = source_kit({"contact": CONFIG})
    response = post_form(kit, form, query_string=query)
    assert response.status_code == 401
    assert response.get_json()["error"] == error
    assert kit.recorded() == []


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"'])
def test_a_malformed_json_body_is_400(source_kit: Any, body: bytes) -> None:
    kit = source_kit({"contact": CONFIG})
    headers = {"Content-Type": "application/json"}
    response = kit.post("contact", body, headers, query_string={"token": SECRET})
    assert response.status_code == 400
    assert kit.recorded() == []


def test_a_form_without_an_email_is_422_naming_it(source_kit: Any) -> None:
    kit = source_kit({"contact": CONFIG})
    response = post_form(kit, {k: v for k, v in FORM.items() if k != "email"})
    assert response.status_code == 422
    assert response.get_json()["field"] == "email"


@pytest.mark.parametrize("url", ["javascript:alert(1)", "https://x/\r\nSet-Cookie: a=b", "x y"])
def test_a_redirect_url_must_be_a_page(url: str) -> None:
    with pytest.raises(ValidationError, match="redirect_url"):
        html_form.Options(redirect_url=url)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(
        st.binary(max_size=500),
        st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
            lambda inner: st.one_of(
                st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
            ),
            max_leaves=12,
        ).map(lambda value: json.dumps(value).encode()),
    ),
    form=st.dictionaries(st.sampled_from(["_token", "email", "website", "x"]), st.text()),
    mimetype=st.sampled_from(sorted(html_form.CONTENT_TYPES)),
    token=st.text(max_size=40),
)
def test_no_input_makes_it_raise_anything_but_its_refusals(
    body: bytes, form: dict[str, str], mimetype: str, token: str
) -> None:
    request = InboundRequest(
        "POST", "http://x", {}, body, mimetype, query={"token": token}, form=form
    )
    options = html_form.Options(honeypot_field="website", id_field="x")
    for step in (
        lambda: html_form.verify(request, [SECRET], options, lambda: 0.0),
        lambda: html_form.records(request, options),
    ):
        with contextlib.suppress(SourceRefusal):
            step()


def test_an_overlong_response_id_is_422(source_kit: Any) -> None:
    kit = source_kit({"contact": {**CONFIG, "id_field": "responseId"}})
    response = post_form(kit, {**FORM, "responseId": "r" * 301})
    assert response.status_code == 422
    assert kit.recorded() == []
