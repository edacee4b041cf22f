"""Tally: signature, flattening by key, choice ids, checkbox copies, end to end."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from source_kit import SourceKit

from webhooks.sources import tally
from webhooks.sources.base import InboundRequest, SourceRefusal

SECRET = "tally-test-secret"
GOLD, SILVER = "5c8f3a1e-0d2b-4f7a-9b1e-2a6c7d8e9f01", "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
NEWS, EVENTS = "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b", "9e8d7c6b-5a49-4382-9716-0a1b2c3d4e5f"

PAYLOAD: dict[str, Any] = {
    "eventId": "a4cb511e-d513-4fa5-baee-b815d718dfd1",
    "eventType": "FORM_RESPONSE",
    "createdAt": "2024-05-01T10:00:00.000Z",
    "data": {
        "responseId": "2wgx4n",
        "submissionId": "2wgx4n",
        "respondentId": "dwQKYm",
        "formId": "VwbNEw",
        "formName": "Signup",
        "createdAt": "2024-05-01T10:00:00.000Z",
        "fields": [
            {
                "key": "question_mVGEaA",
                "label": "First name",
                "type": "INPUT_TEXT",
                "value": "Ann",
            },
            {
                "key": "question_nPAvzL",
                "label": "Email",
                "type": "INPUT_EMAIL",
                "value": "ann@example.com",
            },
            {
                "key": "question_3EKz4n",
                "label": "Plan",
                "type": "MULTIPLE_CHOICE",
                "value": [GOLD],
                "options": [{"id": GOLD, "text": "Gold"}, {"id": SILVER, "text": "Silver"}],
            },
            {
                "key": "question_w4Q2ex",
                "label": "Interests",
                "type": "CHECKBOXES",
                "value": [NEWS, EVENTS],
                "options": [{"id": NEWS, "text": "News"}, {"id": EVENTS, "text": "Events"}],
            },
            {
                "key": f"question_w4Q2ex_{NEWS}",
                "label": "Interests (News)",
                "type": "CHECKBOXES",
                "value": True,
            },
            {
                "key": f"question_w4Q2ex_{EVENTS}",
                "label": "Interests (Events)",
                "type": "CHECKBOXES",
                "value": True,
            },
            {
                "key": "question_7KxQ2e",
                "label": "utm_source",
                "type": "HIDDEN_FIELDS",
                "value": "newsletter",
            },
        ],
    },
}

CONFIG = {
    "kind": "tally",
    "secret": SECRET,
    "channel": "main",
    "fields": {"question_mVGEaA": "firstName", "question_3EKz4n": "plan"},
    "tags": ["tally"],
    "tags_from": ["question_w4Q2ex"],
}


def request(payload: Any = PAYLOAD, *, secret: str = SECRET) -> InboundRequest:
    body = json.dumps(payload).encode()
    headers = {"tally-signature": tally.sign(secret, body)}
    return InboundRequest("POST", "http://x/webhooks/forms", headers, body, "application/json")


def deliver(kit: SourceKit, payload: Any = PAYLOAD, *, secret: str = SECRET) -> Any:
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "Tally-Signature": tally.sign(secret, body)}
    return kit.post("forms", body, headers)


def test_a_response_reaches_the_sandbox_with_fields_and_tags(source_kit: Any) -> None:
    kit = source_kit({"forms": CONFIG})
    response = deliver(kit)
    assert response.status_code == 202, response.get_json()
    assert kit.apply_all() == ["done"]
    contact = kit.contact("email", "ann@example.com")
    assert contact["custom_fields"]["firstName"] == "Ann"
    assert contact["custom_fields"]["plan"] == "Gold"
    assert contact["tags"] == ["tally", "News", "Events"]


def test_choice_ids_become_option_texts_and_checkbox_copies_are_not_counted() -> None:
    [record] = tally.records(request(), tally.Options())
    values = record.values
    assert record.key == PAYLOAD["eventId"] and record.type == "FORM_RESPONSE"
    assert values["question_3EKz4n"] == "Gold"
    assert values["question_w4Q2ex"] == "News, Events"
    assert values["type:CHECKBOXES"] == "News, Events"
    assert not any(key.startswith("question_w4Q2ex_") for key in values)
    assert "label:Interests (News)" not in values
    assert values["type:INPUT_EMAIL"] == values["label:Email"] == "ann@example.com"
    assert values["hidden.utm_source"] == "newsletter"
    assert values["formName"] == "Signup"


def test_a_checkbox_copy_listed_before_its_question_is_still_skipped() -> None:
    payload = copy.deepcopy(PAYLOAD)
    fields = payload["data"]["fields"]
    fields.insert(0, fields.pop(4))
    values = tally.records(request(payload), tally.Options())[0].values
    assert values["type:CHECKBOXES"] == "News, Events"


def test_a_single_checkbox_is_kept() -> None:
    payload = copy.deepcopy(PAYLOAD)
    consent = {"key": "question_cons01", "label": "I agree", "type": "CHECKBOX", "value": True}
    payload["data"]["fields"].append(consent)
    values = tally.records(request(payload), tally.Options())[0].values
    assert values["question_cons01"] is True


def test_a_redelivery_is_a_duplicate_with_no_second_effect(source_kit: Any) -> None:
    kit = source_kit({"forms": CONFIG})
    assert deliver(kit).status_code == 202
    again = deliver(kit)
    assert again.status_code == 200
    assert again.get_json()["events"][0]["duplicate"] is True
    assert len(kit.recorded()) == 1
    assert kit.apply_all() == ["done"]
    assert len(kit.sandbox.state.contacts("main")) == 1


def test_a_wrong_signature_is_401_and_nothing_is_recorded(source_kit: Any) -> None:
    kit = source_kit({"forms": CONFIG})
    assert deliver(kit, secret="another-secret").status_code == 401
    body = json.dumps(PAYLOAD).encode()
    missing = kit.post("forms", body, {"Content-Type": "application/json"})
    assert missing.status_code == 401 and missing.get_json()["error"] == "missing_headers"
    assert kit.recorded() == []


def test_a_malformed_body_is_400(source_kit: Any) -> None:
    kit = source_kit({"forms": CONFIG})
    for body in (b'{"eventId": "x", "data": 3}', b"not json"):
        headers = {"Content-Type": "application/json", "Tally-Signature": tally.sign(SECRET, body)}
        assert kit.post("forms", body, headers).status_code == 400
    assert kit.recorded() == []


def test_a_response_without_an_email_is_422_naming_it(source_kit: Any) -> None:
    kit = source_kit({"forms": CONFIG})
    payload = copy.deepcopy(PAYLOAD)
    del payload["data"]["fields"][1]
    response = deliver(kit, payload)
    assert response.status_code == 422
    assert response.get_json()["field"] == "type:INPUT_EMAIL"
    assert kit.recorded() == []


def test_other_event_types_are_acknowledged_and_ignored() -> None:
    payload = {**PAYLOAD, "eventType": "FORM_DELETED"}
    assert tally.records(request(payload), tally.Options()) == []


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=2000), header=st.text(max_size=80))
def test_no_bytes_make_it_raise_anything_but_its_refusals(body: bytes, header: str) -> None:
    inbound = InboundRequest(
        "POST", "http://x/webhooks/forms", {"tally-signature": header}, body, "application/json"
    )
    for step in (
        lambda: tally.verify(inbound, [SECRET], tally.Options(), lambda: 0.0),
        lambda: tally.records(inbound, tally.Options()),
    ):
        with contextlib.suppress(SourceRefusal):
            step()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    fields=st.lists(
        st.dictionaries(st.sampled_from(["key", "type", "value", "options", "label"]), _json),
        max_size=5,
    )
)
def test_odd_fields_are_refusals_not_crashes(fields: Any) -> None:
    payload = {"eventId": "e", "data": {"fields": fields}}
    with contextlib.suppress(SourceRefusal):
        tally.records(request(payload), tally.Options())


@pytest.mark.parametrize("fields", [[{"type": "INPUT_TEXT"}], "nope", [3]])
def test_fields_without_keys_are_refusals(fields: Any) -> None:
    payload = {"eventId": "e", "data": {"fields": fields}}
    with pytest.raises(SourceRefusal):
        tally.records(request(payload), tally.Options())
