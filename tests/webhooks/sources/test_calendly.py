"""Calendly: signature and replay window, bookings, cancellations, end to end."""

from __future__ import annotations

import contextlib
import copy
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from source_kit import SourceKit

from webhooks.sources import calendly
from webhooks.sources.base import InboundRequest, SourceRefusal

SECRET = "calendly-test-signing-key"
OPTIONS = calendly.Options()
INVITEE = "https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2/invitees/AAAAAAAAAAAAAAAA"

PAYLOAD: dict[str, Any] = {
    "event": "invitee.created",
    "created_at": "2024-05-01T10:00:00.000000Z",
    "created_by": "https://api.calendly.com/users/AAAAAAAAAAAAAAAA",
    "payload": {
        "uri": INVITEE,
        "email": "ann@example.com",
        "name": "Ann Lee",
        "first_name": "Ann",
        "last_name": "Lee",
        "status": "active",
        "timezone": "Asia/Kuala_Lumpur",
        "text_reminder_number": "+60123456789",
        "rescheduled": False,
        "old_invitee": None,
        "new_invitee": None,
        "cancel_url": "https://calendly.com/cancellations/AAAAAAAAAAAAAAAA",
        "reschedule_url": "https://calendly.com/reschedulings/AAAAAAAAAAAAAAAA",
        "questions_and_answers": [
            {"question": "Company", "answer": "Acme", "position": 0},
            {"question": "What should we cover?", "answer": "Pricing", "position": 1},
        ],
        "scheduled_event": {
            "uri": "https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2",
            "name": "Intro call",
            "status": "active",
            "start_time": "2024-05-08T02:00:00.000000Z",
            "end_time": "2024-05-08T02:30:00.000000Z",
        },
        "tracking": {"utm_source": "newsletter", "utm_campaign": None, "salesforce_uuid": None},
        "created_at": "2024-05-01T10:00:00.000000Z",
        "updated_at": "2024-05-01T10:00:00.000000Z",
    },
}

CONFIG = {
    "kind": "calendly",
    "secret": SECRET,
    "channel": "main",
    "fields": {"qa:Company": "company"},
    "tags": ["calendly"],
    "tags_from": ["event_name"],
}


def canceled(*, rescheduled: bool = False) -> dict[str, Any]:
    payload = copy.deepcopy(PAYLOAD)
    payload["event"] = "invitee.canceled"
    payload["payload"].update(
        status="canceled",
        rescheduled=rescheduled,
        cancellation={"canceled_by": "Ann Lee", "reason": "Conflict", "canceler_type": "invitee"},
    )
    return payload


def request(payload: Any = PAYLOAD, *, at: float = 1_714_557_600) -> InboundRequest:
    body = json.dumps(payload).encode()
    headers = {calendly.SIGNATURE_HEADER: calendly.sign(SECRET, body, int(at))}
    return InboundRequest("POST", "http://x/webhooks/calls", headers, body, "application/json")


def deliver(
    kit: SourceKit, payload: Any = PAYLOAD, *, secret: str = SECRET, at: float | None = None
) -> Any:
    body = json.dumps(payload).encode()
    stamp = int(time.time() if at is None else at)
    headers = {
        "Content-Type": "application/json",
        "Calendly-Webhook-Signature": calendly.sign(secret, body, stamp),
    }
    return kit.post("calls", body, headers)


def test_a_booking_reaches_the_sandbox_with_fields_and_tags(source_kit: Any) -> None:
    kit = source_kit({"calls": CONFIG})
    response = deliver(kit)
    assert response.status_code == 202, response.get_json()
    assert kit.apply_all() == ["done"]
    contact = kit.contact("email", "ann@example.com")
    assert contact["custom_fields"]["firstName"] == "Ann"
    assert contact["custom_fields"]["lastName"] == "Lee"
    assert contact["custom_fields"]["phone"] == "+60123456789"
    assert contact["custom_fields"]["company"] == "Acme"
    assert contact["tags"] == ["calendly", "Intro call"]


def test_a_record_holds_answers_by_position_and_question() -> None:
    [record] = calendly.records(request(), OPTIONS)
    assert record.key == f"{INVITEE}:invitee.created" and record.type == "invitee.created"
    values = record.values
    assert values["qa:0"] == values["qa:Company"] == "Acme"
    assert values["qa:1"] == values["qa:What should we cover?"] == "Pricing"
    assert values["event_name"] == "Intro call"
    assert values["utm_source"] == "newsletter"
    assert values["timezone"] == "Asia/Kuala_Lumpur"


def test_a_cancellation_removes_the_tags_the_booking_added(source_kit: Any) -> None:
    kit = source_kit({"calls": CONFIG})
    assert deliver(kit).status_code == 202
    assert kit.apply_all() == ["done"]
    response = deliver(kit, canceled())
    assert response.status_code == 202, response.get_json()
    assert kit.apply_all() == ["done"]
    contact = kit.contact("email", "ann@example.com")
    assert contact["tags"] == []
    assert contact["custom_fields"]["firstName"] == "Ann"


def test_the_cancel_half_of_a_reschedule_is_ignored(source_kit: Any) -> None:
    kit = source_kit({"calls": CONFIG})
    response = deliver(kit, canceled(rescheduled=True))
    assert response.status_code == 200
    assert response.get_json() == {"events": []}
    assert kit.recorded() == []


def test_a_cancellation_can_tag_instead_or_be_ignored() -> None:
    tag = calendly.Options(on_cancel="tag", canceled_tag="no-show-risk")
    [record] = calendly.records(request(canceled()), tag)
    assert record.action == "tag" and list(record.tags) == ["no-show-risk"]
    assert record.values["cancel_reason"] == "Conflict"
    ignore = calendly.Options(on_cancel="ignore")
    assert calendly.records(request(canceled()), ignore) == []


def test_booking_and_cancellation_have_different_keys() -> None:
    [booked] = calendly.records(request(), OPTIONS)
    [cancel] = calendly.records(request(canceled()), OPTIONS)
    assert booked.key != cancel.key


def test_a_redelivery_is_a_duplicate_with_no_second_effect(source_kit: Any) -> None:
    kit = source_kit({"calls": CONFIG})
    assert deliver(kit).status_code == 202
    again = deliver(kit)
    assert again.status_code == 200
    assert again.get_json()["events"][0]["duplicate"] is True
    assert len(kit.recorded()) == 1
    assert kit.apply_all() == ["done"]
    assert len(kit.sandbox.state.contacts("main")) == 1


def test_a_wrong_signature_is_401_and_nothing_is_recorded(source_kit: Any) -> None:
    kit = source_kit({"calls": CONFIG})
    assert deliver(kit, secret="another-key").status_code == 401
    body = json.dumps(PAYLOAD).encode()
    missing = kit.post("calls", body, {"Content-Type": "application/json"})
    assert missing.status_code == 401 and missing.get_json()["error"] == "missing_headers"
    assert kit.recorded() == []


@pytest.mark.parametrize("skew", [-1000, 1000])
def test_a_stale_or_future_timestamp_is_401(source_kit: Any, skew: int) -> None:
    kit = source_kit({"calls": CONFIG})
    response = deliver(kit, at=time.time() + skew)
    assert response.status_code == 401
    assert response.get_json()["error"] == "stale_timestamp"
    assert kit.recorded() == []


def test_the_replay_window_is_an_option() -> None:
    wide = calendly.Options(tolerance_s=3600)
    inbound = request(at=1_714_557_600)
    calendly.verify(inbound, [SECRET], wide, lambda: 1_714_557_600 + 3000)
    with pytest.raises(SourceRefusal, match="replay window"):
        calendly.verify(inbound, [SECRET], OPTIONS, lambda: 1_714_557_600 + 3000)
    with pytest.raises(SourceRefusal, match="replay window"):
        calendly.verify(inbound, [SECRET], wide, lambda: float("nan"))


@pytest.mark.parametrize(
    "header", ["v1=abc", "t=1714557600", "t=1714557600,v1=", "garbage", "t=12a,v1=00", "t=,v1=00"]
)
def test_malformed_signature_headers_are_401(header: str) -> None:
    inbound = InboundRequest(
        "POST", "http://x", {calendly.SIGNATURE_HEADER: header}, b"{}", "application/json"
    )
    with pytest.raises(SourceRefusal) as refused:
        calendly.verify(inbound, [SECRET], OPTIONS, lambda: 1_714_557_600)
    assert refused.value.status == 401


def test_any_of_several_v1_signatures_may_match() -> None:
    body = json.dumps(PAYLOAD).encode()
    good = calendly.signature(SECRET, "1714557600", body)
    header = f"t=1714557600, v1={'0' * 64}, v1={good.upper()}"
    inbound = InboundRequest(
        "POST", "http://x", {calendly.SIGNATURE_HEADER: header}, body, "application/json"
    )
    calendly.verify(inbound, [SECRET], OPTIONS, lambda: 1_714_557_600)


def test_a_malformed_body_is_400(source_kit: Any) -> None:
    kit = source_kit({"calls": CONFIG})
    for body in (b'{"event": "invitee.created", "payload": 3}', b"nope", b'{"payload": {}}'):
        headers = {
            "Content-Type": "application/json",
            "Calendly-Webhook-Signature": calendly.sign(SECRET, body, int(time.time())),
        }
        assert kit.post("calls", body, headers).status_code == 400
    assert kit.recorded() == []


def test_other_events_are_acknowledged_and_ignored() -> None:
    payload = {**PAYLOAD, "event": "invitee_no_show.created"}
    assert calendly.records(request(payload), OPTIONS) == []


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=2000), header=st.text(max_size=120), clock=st.floats())
def test_no_bytes_make_it_raise_anything_but_its_refusals(
    body: bytes, header: str, clock: float
) -> None:
    inbound = InboundRequest(
        "POST", "http://x", {calendly.SIGNATURE_HEADER: header}, body, "application/json"
    )
    for step in (
        lambda: calendly.verify(inbound, [SECRET], OPTIONS, lambda: clock),
        lambda: calendly.records(inbound, OPTIONS),
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
    event=st.sampled_from(["invitee.created", "invitee.canceled"]),
    payload=st.dictionaries(
        st.sampled_from(
            ["uri", "email", "questions_and_answers", "scheduled_event", "tracking", "event"]
        ),
        _json,
    ),
)
def test_odd_payloads_are_refusals_not_crashes(event: str, payload: Any) -> None:
    with contextlib.suppress(SourceRefusal):
        calendly.records(request({"event": event, "payload": payload}), OPTIONS)
