"""Jotform: the shared token, rawRequest flattening, multipart end to end to the sandbox."""

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

from webhooks.sources import jotform
from webhooks.sources.base import InboundRequest, SourceRefusal

SECRET = "jotform-test-secret"

RAW_REQUEST: dict[str, Any] = {
    "slug": "submit/241234567890123",
    "jsExecutionTracker": "build-date-1714550400000=>init-started:1714550401000",
    "submitSource": "form",
    "buildDate": "1714550400000",
    "q3_email": "ann@example.com",
    "q4_name": {"first": "Ann", "last": "Lee"},
    "q5_phoneNumber": {"full": "+60 12-345 6789"},
    "q6_plan": "Gold",
    "q7_interests": ["Billing", "Support"],
    "q8_address": {"addr_line1": "1 Jalan Ampang", "city": "Kuala Lumpur", "postal": "50450"},
    "event_id": "1714550460000_241234567890123_AbCdEf1",
    "timeToSubmit": "42",
    "path": "/submit/241234567890123",
}

FORM: dict[str, str] = {
    "action": "",
    "webhookURL": "https://hooks.example.com/webhooks/signup",
    "username": "acme",
    "formID": "241234567890123",
    "type": "WEB",
    "customParams": "",
    "product": "false",
    "formTitle": "Signup",
    "customTitle": "",
    "submissionID": "5901234567890123456",
    "event": "",
    "documentID": "",
    "teamID": "",
    "subject": "",
    "isSilent": "false",
    "customBody": "",
    "rawRequest": json.dumps(RAW_REQUEST),
    "fromTable": "",
    "appID": "",
    "pretty": "Email:ann@example.com, Name:Ann Lee, Phone Number:+60 12-345 6789, Plan:Gold",
    "unread": "",
    "parent": "",
    "ip": "203.0.113.7",
}

CONFIG = {
    "kind": "jotform",
    "secret": SECRET,
    "channel": "main",
    "fields": {"plan": "plan", "address.city": "city"},
    "tags": ["jotform"],
    "tags_from": ["plan"],
}


def deliver(kit: SourceKit, form: dict[str, str] = FORM, *, token: str | None = SECRET) -> Any:
    """POST as Jotform does: multipart/form-data, the token in the URL's query."""
    query = f"?{urlencode({'token': token})}" if token is not None else ""
    return kit.http.post(
        f"/webhooks/signup{query}", data=dict(form), content_type="multipart/form-data"
    )


def test_a_multipart_submission_reaches_the_sandbox_with_fields_and_tags(source_kit: Any) -> None:
    kit = source_kit({"signup": CONFIG})
    response = deliver(kit)
    assert response.status_code == 202, response.get_json()
    assert kit.apply_all() == ["done"]
    fields = kit.contact("email", "ann@example.com")["custom_fields"]
    assert fields["firstName"] == "Ann"
    assert fields["lastName"] == "Lee"
    assert fields["phone"] == "+60 12-345 6789"
    assert fields["plan"] == "Gold"
    assert fields["city"] == "Kuala Lumpur"
    assert kit.contact("email", "ann@example.com")["tags"] == ["jotform", "Gold"]


def test_an_urlencoded_submission_is_accepted_too(source_kit: Any) -> None:
    kit = source_kit({"signup": CONFIG})
    body = urlencode(FORM).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = kit.post("signup", body, headers, query_string={"token": SECRET})
    assert response.status_code == 202, response.get_json()
    assert kit.apply_all() == ["done"]
    assert kit.contact("email", "ann@example.com")["custom_fields"]["lastName"] == "Lee"


def test_the_token_may_come_in_a_configured_header(source_kit: Any) -> None:
    kit = source_kit({"signup": {**CONFIG, "token_header": "X-Form-Token"}})
    response = kit.http.post(
        "/webhooks/signup",
        data=dict(FORM),
        content_type="multipart/form-data",
        headers={"X-Form-Token": SECRET},
    )
    assert response.status_code == 202, response.get_json()


def test_a_redelivery_is_a_duplicate(source_kit: Any) -> None:
    kit = source_kit({"signup": CONFIG})
    assert deliver(kit).status_code == 202
    again = deliver(kit)
    assert again.status_code == 200
    assert again.get_json()["events"][0]["duplicate"] is True
    assert len(kit.recorded()) == 1


@pytest.mark.parametrize(
    ("token", "error"), [("wrong-secret", "invalid_token"), (None, "missing_token")]
)
def test_a_wrong_or_missing_token_is_401_and_nothing_is_recorded(
    source_kit: Any, token: str | None, error: str
) -> None:
    kit = source_kit({"signup": CONFIG})
    response = deliver(kit, token=token)
    assert response.status_code == 401
    assert response.get_json()["error"] == error
    assert kit.recorded() == []


@pytest.mark.parametrize(
    "form",
    [
        {**FORM, "rawRequest": "{not json"},
        {**FORM, "rawRequest": "[1, 2]"},
        {key: value for key, value in FORM.items() if key != "rawRequest"},
    ],
    ids=["not-json", "not-an-object", "missing"],
)
def test_a_malformed_raw_request_is_400(source_kit: Any, form: dict[str, str]) -> None:
    kit = source_kit({"signup": CONFIG})
    response = deliver(kit, form)
    assert response.status_code == 400, response.get_json()
    assert "rawRequest" in response.get_json()["detail"]
    assert kit.recorded() == []


def test_a_body_that_is_not_multipart_at_all_is_400(source_kit: Any) -> None:
    kit = source_kit({"signup": CONFIG})
    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    response = kit.post("signup", b"garbage\xff\x00", headers, query_string={"token": SECRET})
    assert response.status_code == 400
    assert response.get_json()["error"] == "malformed_body"


def test_a_submission_without_its_id_is_422(source_kit: Any) -> None:
    kit = source_kit({"signup": CONFIG})
    response = deliver(kit, {**FORM, "submissionID": ""})
    assert response.status_code == 422
    assert response.get_json()["field"] == "submissionID"


def test_a_submission_without_an_email_is_422_naming_it(source_kit: Any) -> None:
    kit = source_kit({"signup": CONFIG})
    raw = {key: value for key, value in RAW_REQUEST.items() if key != "q3_email"}
    response = deliver(kit, {**FORM, "rawRequest": json.dumps(raw)})
    assert response.status_code == 422
    assert response.get_json()["field"] == "email"


def test_answers_are_keyed_by_question_name_and_flattened() -> None:
    request = InboundRequest("POST", "http://x", {}, b"", "multipart/form-data", form=FORM)
    [record] = jotform.records(request, jotform.Options())
    assert record.key == "5901234567890123456"
    assert record.values == {
        "formID": "241234567890123",
        "submissionID": "5901234567890123456",
        "formTitle": "Signup",
        "ip": "203.0.113.7",
        "email": "ann@example.com",
        "name.first": "Ann",
        "name.last": "Lee",
        "phoneNumber.full": "+60 12-345 6789",
        "plan": "Gold",
        "interests": "Billing, Support",
        "address.addr_line1": "1 Jalan Ampang",
        "address.city": "Kuala Lumpur",
        "address.postal": "50450",
    }


def test_the_token_must_travel_somewhere() -> None:
    with pytest.raises(ValidationError, match="token_param or token_header"):
        jotform.Options(token_param=None)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    form=st.dictionaries(
        st.sampled_from(["rawRequest", "submissionID", "formID", "pretty", "x"]),
        st.one_of(st.text(max_size=200), st.just(json.dumps(RAW_REQUEST))),
    ),
    token=st.text(max_size=40),
    header=st.text(max_size=40),
)
def test_no_input_makes_it_raise_anything_but_its_refusals(
    form: dict[str, str], token: str, header: str
) -> None:
    request = InboundRequest(
        "POST",
        "http://x/webhooks/signup",
        {"x-form-token": header},
        b"",
        "multipart/form-data",
        query={"token": token},
        form=form,
    )
    options = jotform.Options(token_header="X-Form-Token")
    for step in (
        lambda: jotform.verify(request, [SECRET], options, lambda: 0.0),
        lambda: jotform.records(request, options),
    ):
        with contextlib.suppress(SourceRefusal):
            step()
