"""Pipedrive: Basic auth, person events, primary email, deletes, end to end."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from source_kit import SourceKit

from webhooks.sources import pipedrive
from webhooks.sources.base import InboundRequest, SourceRefusal

USER, SECRET = "contactsync", "pipedrive-test-password"
OPTIONS = pipedrive.Options(username=USER)

PAYLOAD: dict[str, Any] = {
    "meta": {
        "action": "create",
        "entity": "person",
        "company_id": "13923453",
        "correlation_id": "6a3d2c1e-8f4b-4c5d-9e6f-7a8b9c0d1e2f",
        "entity_id": "123",
        "id": "3f9c1a2b-4d5e-4f60-8a7b-9c0d1e2f3a4b",
        "is_bulk_edit": False,
        "timestamp": "2024-05-01T10:00:00.000Z",
        "type": "general",
        "user_id": "23836724",
        "version": "2.0",
        "webhook_id": "3046302",
        "webhook_owner_id": "23836724",
        "change_source": "app",
        "attempt": 1,
        "host": "acme.pipedrive.com",
        "permitted_user_ids": ["23836724"],
    },
    "data": {
        "id": 123,
        "name": "Ann Lee",
        "first_name": "Ann",
        "last_name": "Lee",
        "owner_id": 23836724,
        "org_id": None,
        "emails": [
            {"label": "home", "value": "ann.home@example.com", "primary": False},
            {"label": "work", "value": "ann@example.com", "primary": True},
        ],
        "phones": [{"label": "mobile", "value": "+60123456789", "primary": True}],
        "label_ids": [],
        "custom_fields": {"9dc80c50d78a15643bfc4ca79d76156a73a1ca0e": {"value": "Gold"}},
    },
    "previous": None,
}

CONFIG = {
    "kind": "pipedrive",
    "secret": SECRET,
    "username": USER,
    "channel": "main",
    "fields": {"pipedrive_id": "pipedrive_id"},
    "tags": ["pipedrive"],
}


def event(action: str, **meta: Any) -> dict[str, Any]:
    payload = copy.deepcopy(PAYLOAD)
    payload["meta"].update(action=action, id=f"{action}-{PAYLOAD['meta']['id']}", **meta)
    if action == "delete":
        payload["previous"], payload["data"] = payload["data"], None
    return payload


def request(payload: Any = PAYLOAD, *, password: str = SECRET) -> InboundRequest:
    headers = {"authorization": pipedrive.authorization(USER, password)}
    body = json.dumps(payload).encode()
    return InboundRequest("POST", "http://x/webhooks/crm", headers, body, "application/json")


def deliver(kit: SourceKit, payload: Any = PAYLOAD, *, auth: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    headers["Authorization"] = auth or pipedrive.authorization(USER, SECRET)
    return kit.post("crm", json.dumps(payload).encode(), headers)


def test_a_new_person_reaches_the_sandbox_with_the_primary_email(source_kit: Any) -> None:
    kit = source_kit({"crm": CONFIG})
    response = deliver(kit)
    assert response.status_code == 202, response.get_json()
    assert kit.apply_all() == ["done"]
    contact = kit.contact("email", "ann@example.com")
    assert contact["custom_fields"]["firstName"] == "Ann"
    assert contact["custom_fields"]["lastName"] == "Lee"
    assert contact["custom_fields"]["phone"] == "+60123456789"
    assert contact["custom_fields"]["pipedrive_id"] == "123"
    assert contact["tags"] == ["pipedrive"]


def test_without_a_primary_the_first_email_is_taken() -> None:
    payload = copy.deepcopy(PAYLOAD)
    for item in payload["data"]["emails"]:
        item["primary"] = False
    [record] = pipedrive.records(request(payload), OPTIONS)
    assert record.values["email"] == "ann.home@example.com"
    assert record.values["custom.9dc80c50d78a15643bfc4ca79d76156a73a1ca0e"] == "Gold"
    assert record.key == PAYLOAD["meta"]["id"] and record.type == "person.create"


def test_a_deleted_person_is_tagged_from_its_last_state(source_kit: Any) -> None:
    kit = source_kit({"crm": CONFIG})
    assert deliver(kit).status_code == 202
    assert kit.apply_all() == ["done"]
    assert deliver(kit, event("delete")).status_code == 202
    assert kit.apply_all() == ["done"]
    contact = kit.contact("email", "ann@example.com")
    assert contact["tags"] == ["pipedrive", "pipedrive-deleted"]


def test_delete_can_untag_or_be_ignored() -> None:
    untag = pipedrive.Options(username=USER, on_delete="untag")
    [record] = pipedrive.records(request(event("delete")), untag)
    assert record.action == "untag" and record.tags == ()
    ignore = pipedrive.Options(username=USER, on_delete="ignore")
    assert pipedrive.records(request(event("delete")), ignore) == []


def test_the_delete_half_of_a_merge_is_ignored() -> None:
    merged = event("delete", merged_to_id="456")
    assert pipedrive.records(request(merged), OPTIONS) == []


def test_other_entities_are_acknowledged_with_no_command(source_kit: Any) -> None:
    kit = source_kit({"crm": CONFIG})
    deal = copy.deepcopy(PAYLOAD)
    deal["meta"]["entity"] = "deal"
    deal["data"] = {"id": 746, "title": "Biview", "status": "won"}
    response = deliver(kit, deal)
    assert response.status_code == 200
    assert response.get_json() == {"events": []}
    assert kit.recorded() == []


def test_a_redelivery_is_a_duplicate_with_no_second_effect(source_kit: Any) -> None:
    kit = source_kit({"crm": CONFIG})
    assert deliver(kit).status_code == 202
    again = deliver(kit)
    assert again.status_code == 200
    assert again.get_json()["events"][0]["duplicate"] is True
    assert len(kit.recorded()) == 1
    assert kit.apply_all() == ["done"]
    assert len(kit.sandbox.state.contacts("main")) == 1


@pytest.mark.parametrize(
    "auth",
    [
        pipedrive.authorization(USER, "wrong-password"),
        pipedrive.authorization("someone-else", SECRET),
        "Bearer " + SECRET,
        "Basic !!!not-base64",
        "Basic " + "bm9jb2xvbg==",  # "nocolon"
        "",
    ],
)
def test_wrong_credentials_are_401_and_nothing_is_recorded(source_kit: Any, auth: str) -> None:
    kit = source_kit({"crm": CONFIG})
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    response = kit.post("crm", json.dumps(PAYLOAD).encode(), headers)
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_credentials"
    assert kit.recorded() == []


def test_a_malformed_body_is_400(source_kit: Any) -> None:
    kit = source_kit({"crm": CONFIG})
    for body in (b'{"meta": 3}', b"[]", b"\xff", json.dumps({**PAYLOAD, "data": 3}).encode()):
        headers = {
            "Content-Type": "application/json",
            "Authorization": pipedrive.authorization(USER, SECRET),
        }
        assert kit.post("crm", body, headers).status_code == 400
    assert kit.recorded() == []


def test_a_person_without_an_email_is_422_naming_it(source_kit: Any) -> None:
    kit = source_kit({"crm": CONFIG})
    payload = copy.deepcopy(PAYLOAD)
    payload["data"]["emails"] = []
    response = deliver(kit, payload)
    assert response.status_code == 422
    assert response.get_json()["field"] == "email"


def test_the_username_option_is_required(source_kit: Any) -> None:
    config = {key: value for key, value in CONFIG.items() if key != "username"}
    with pytest.raises(ValueError, match="username"):
        source_kit({"crm": config})


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=2000), header=st.text(max_size=80))
def test_no_bytes_make_it_raise_anything_but_its_refusals(body: bytes, header: str) -> None:
    inbound = InboundRequest(
        "POST", "http://x/webhooks/crm", {"authorization": header}, body, "application/json"
    )
    for step in (
        lambda: pipedrive.verify(inbound, [SECRET], OPTIONS, lambda: 0.0),
        lambda: pipedrive.records(inbound, OPTIONS),
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
    action=st.sampled_from(["create", "change", "delete"]),
    person=st.dictionaries(
        st.sampled_from(["id", "name", "emails", "phones", "email", "custom_fields"]), _json
    ),
)
def test_odd_persons_are_refusals_not_crashes(action: str, person: Any) -> None:
    payload = {"meta": {"id": "e", "entity": "person", "action": action}}
    payload["previous" if action == "delete" else "data"] = person
    with contextlib.suppress(SourceRefusal):
        pipedrive.records(request(payload), OPTIONS)
