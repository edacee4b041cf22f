"""HubSpot: signatures (published vectors, URL rule, versions), events, end to end."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from source_kit import SourceKit

from webhooks.sources import hubspot
from webhooks.sources.base import InboundRequest, SourceRefusal

SECRET = "hubspot-client-secret"
URL = "http://localhost/webhooks/crm"

CONFIG: dict[str, Any] = {
    "kind": "hubspot",
    "secret": SECRET,
    "channel": "crm",
    "tags": ["hubspot"],
}


def event(
    event_id: int,
    object_id: int,
    kind: str = "contact.propertyChange",
    prop: str | None = None,
    value: Any = None,
    occurred: int = 1720000000000,
) -> dict[str, Any]:
    """An event as HubSpot sends it."""
    made: dict[str, Any] = {
        "eventId": event_id,
        "subscriptionId": 1,
        "portalId": 62515,
        "appId": 1,
        "occurredAt": occurred,
        "subscriptionType": kind,
        "attemptNumber": 0,
        "objectId": object_id,
        "changeSource": "CRM",
    }
    if prop is not None:
        made |= {"propertyName": prop, "propertyValue": value}
    return made


BATCH = [
    event(100, 501, "contact.creation"),
    event(101, 501, prop="email", value="ann@example.com"),
    event(102, 501, prop="firstname", value="Ann"),
    event(103, 502, prop="email", value="bob@example.com"),
    event(104, 9001, "deal.creation"),
]


def now_ms() -> str:
    return str(int(time.time() * 1000))


def deliver(
    kit: SourceKit,
    events: Any = BATCH,
    *,
    secret: str = SECRET,
    timestamp: str | None = None,
    path: str = "crm",
    signed_url: str | None = None,
) -> Any:
    body = json.dumps(events).encode()
    stamp = now_ms() if timestamp is None else timestamp
    url = signed_url or f"http://localhost/webhooks/{path}"
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": hubspot.sign_v3(secret, "POST", url, body, stamp),
        "X-HubSpot-Request-Timestamp": stamp,
    }
    return kit.post(path, body, headers)


def deliver_legacy(kit: SourceKit, version: str, events: Any = BATCH[:2]) -> Any:
    body = json.dumps(events).encode()
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Signature": hubspot.sign_legacy(version, SECRET, "POST", URL, body),
        "X-HubSpot-Signature-Version": version,
    }
    return kit.post("crm", body, headers)


def applied(kit: SourceKit) -> list[str]:
    """Run the open commands (the worker merges those of one contact: "skipped" ones ride
    along with the head); the state of every recorded command afterwards."""
    assert set(kit.apply_all()) <= {"done", "skipped"}
    return [row["state"] for row in kit.recorded()]


def test_a_batch_reaches_the_sandbox_with_fields_and_tags(source_kit: Any) -> None:
    kit = source_kit({"crm": CONFIG})
    response = deliver(kit)
    assert response.status_code == 202, response.get_json()
    keys = [item["event_id"] for item in response.get_json()["events"]]
    assert keys == [f"62515:{n}:1720000000000" for n in (100, 101, 102, 103)]  # deal ignored
    assert applied(kit) == ["done"] * 4
    ann = kit.contact("hubspot_id", "501", channel="crm")
    assert ann["custom_fields"]["email"] == "ann@example.com"
    assert ann["custom_fields"]["firstName"] == "Ann"
    assert ann["tags"] == ["hubspot"]
    bob = kit.contact("hubspot_id", "502", channel="crm")
    assert bob["custom_fields"]["email"] == "bob@example.com"


def test_a_deletion_tags_the_contact_hubspot_deleted(source_kit: Any) -> None:
    kit = source_kit({"crm": CONFIG})
    assert deliver(kit, BATCH[:2]).status_code == 202
    assert deliver(kit, [event(200, 501, "contact.deletion")]).status_code == 202
    assert applied(kit) == ["done"] * 3
    contact = kit.contact("hubspot_id", "501", channel="crm")
    assert set(contact["tags"]) == {"hubspot", "hubspot-deleted"}
    assert [row["kind"] for row in kit.recorded()] == ["upsert", "upsert", "tag"]


def test_deletions_can_be_ignored_and_so_are_other_objects(source_kit: Any) -> None:
    kit = source_kit({"crm": {**CONFIG, "on_delete": "ignore"}})
    events = [event(1, 501, "contact.deletion"), event(2, 7, "company.creation")]
    response = deliver(kit, events)
    assert response.status_code == 200
    assert response.get_json() == {"events": []}
    assert kit.recorded() == []


def test_a_redelivery_is_a_duplicate_with_no_second_effect(source_kit: Any) -> None:
    kit = source_kit({"crm": CONFIG})
    assert deliver(kit).status_code == 202
    assert applied(kit) == ["done"] * 4
    retry = [{**item, "attemptNumber": 1} for item in BATCH]
    again = deliver(kit, retry)
    assert again.status_code == 200
    assert all(item["duplicate"] for item in again.get_json()["events"])
    assert len(kit.recorded()) == 4
    assert kit.apply_all() == []


def test_a_wrong_or_missing_signature_is_401_and_nothing_is_recorded(source_kit: Any) -> None:
    kit = source_kit({"crm": CONFIG})
    wrong = deliver(kit, secret="another-secret")
    assert wrong.status_code == 401 and wrong.get_json()["error"] == "invalid_signature"
    body = json.dumps(BATCH).encode()
    missing = kit.post("crm", body, {"Content-Type": "application/json"})
    assert missing.status_code == 401 and missing.get_json()["error"] == "missing_headers"
    assert kit.recorded() == []


@pytest.mark.parametrize("offset_ms", [-301_000, 301_000])
def test_a_timestamp_over_5_minutes_away_is_401(source_kit: Any, offset_ms: int) -> None:
    kit = source_kit({"crm": CONFIG})
    stamp = str(int(time.time() * 1000) + offset_ms)
    response = deliver(kit, timestamp=stamp)
    assert response.status_code == 401 and response.get_json()["error"] == "stale_timestamp"
    assert kit.recorded() == []


def test_the_clock_is_injected_and_the_window_is_5_minutes() -> None:
    body = b"[]"
    headers = {
        "x-hubspot-signature-v3": hubspot.sign_v3(SECRET, "POST", URL, body, "1720000000000"),
        "x-hubspot-request-timestamp": "1720000000000",
    }
    request = InboundRequest("POST", URL, headers, body, "application/json")
    options = hubspot.Options()
    hubspot.verify(request, [SECRET], options, lambda: 1720000000.0 + 299)
    with pytest.raises(SourceRefusal, match="5 minutes"):
        hubspot.verify(request, [SECRET], options, lambda: 1720000000.0 + 301)


@pytest.mark.parametrize(
    "body", [b'{"eventId": 1}', b"[1, 2]", b"not json", b'[{"subscriptionType": 3}]']
)
def test_a_malformed_body_is_400(source_kit: Any, body: bytes) -> None:
    kit = source_kit({"crm": CONFIG})
    stamp = now_ms()
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": hubspot.sign_v3(SECRET, "POST", URL, body, stamp),
        "X-HubSpot-Request-Timestamp": stamp,
    }
    assert kit.post("crm", body, headers).status_code == 400
    assert kit.recorded() == []


def test_more_than_100_events_is_422(source_kit: Any) -> None:
    kit = source_kit({"crm": CONFIG})
    response = deliver(kit, [event(n, 501, "contact.creation") for n in range(101)])
    assert response.status_code == 422
    assert kit.recorded() == []


@pytest.mark.parametrize(
    ("broken", "field"),
    [
        ({"objectId": None}, "[1].objectId"),
        ({"eventId": True}, "[1].eventId"),
        ({"propertyName": ""}, "[1].propertyName"),
    ],
)
def test_an_unusable_event_is_422_naming_it(source_kit: Any, broken: Any, field: str) -> None:
    kit = source_kit({"crm": CONFIG})
    response = deliver(kit, [BATCH[0], {**BATCH[1], **broken}])
    assert response.status_code == 422
    assert response.get_json()["field"] == field
    assert kit.recorded() == []


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_v1_and_v2_only_when_enabled(source_kit: Any, version: str) -> None:
    kit = source_kit({"crm": CONFIG})
    refused = deliver_legacy(kit, version)
    assert refused.status_code == 401 and "not accepted" in refused.get_json()["detail"]
    kit = source_kit({"crm": {**CONFIG, "signature_versions": ["v3", version]}})
    assert deliver_legacy(kit, version).status_code == 202


def test_the_signed_url_has_hubspots_escapes_decoded(source_kit: Any) -> None:
    kit = source_kit({"crm": CONFIG})
    path = "crm?portal=a%3Ab%2Cc&next=%2Fx%20y&amp=%26"
    decoded = "http://localhost/webhooks/crm?portal=a:b,c&next=/x%20y&amp=%26"
    assert hubspot.v3_uri(f"http://localhost/webhooks/{path}") == decoded
    assert deliver(kit, BATCH[:1], path=path, signed_url=decoded).status_code == 202


def test_v3_uri_decodes_only_the_listed_escapes_once() -> None:
    raw = "https://h.example/p%3a%2F?q=%40%21%24%27%28%29%2A%2C%3B%3F%253A%26%3D%2B%23%20"
    assert hubspot.v3_uri(raw) == "https://h.example/p:/?q=@!$'()*,;?%253A%26%3D%2B%23%20"


def test_public_url_replaces_the_url_seen_behind_a_proxy(source_kit: Any) -> None:
    public = "https://hooks.example.com/hs/crm"
    kit = source_kit({"crm": {**CONFIG, "public_url": public}})
    assert deliver(kit, BATCH[:1], signed_url=public).status_code == 202
    assert deliver(kit, BATCH[1:2], signed_url=URL).status_code == 401


# Published vectors: HubSpot's docs (v1 with a webhook body, v2 GET) and the tests of
# HubSpot's own Python client (github.com/HubSpot/hubspot-api-python,
# tests/spec/utils/test_signature.py: v1, v2 and v3 over one request).
VECTOR_SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
VECTOR_URL = "https://www.example.com/webhook_uri"
DOCS_BODY = (
    b'[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,'
    b'"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,'
    b'"changeSource":"CRM","changeFlag":"NEW","appId":54321}]'
)
CLIENT_BODY = b"{'example_field':'example_value'}"


def test_hubspots_published_vectors() -> None:
    assert (
        hubspot.sign_legacy("v1", VECTOR_SECRET, "POST", VECTOR_URL, DOCS_BODY)
        == "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de"
    )
    assert (
        hubspot.sign_legacy("v2", VECTOR_SECRET, "GET", VECTOR_URL, b"")
        == "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e"
    )
    assert (
        hubspot.sign_legacy("v1", VECTOR_SECRET, "POST", VECTOR_URL, CLIENT_BODY)
        == "69fc6631a867edd4f9e9e627fc5c1148e3fbdd8b21837b6d2b8901c1fa57f750"
    )
    assert (
        hubspot.sign_legacy("v2", VECTOR_SECRET, "POST", VECTOR_URL, CLIENT_BODY)
        == "4fe4e3a7d3cf09db53be39d0a58130e2aaba074ec123a9e355b876a689a1c383"
    )
    assert (
        hubspot.sign_v3(VECTOR_SECRET, "POST", VECTOR_URL, CLIENT_BODY, "15000000")
        == "HPW73RUtKmcYoEDADG0s6MmGFWUzWJKAW07r8RDgcQw="
    )


def test_verify_accepts_the_published_v3_vector_at_its_time() -> None:
    headers = {
        "x-hubspot-signature-v3": "HPW73RUtKmcYoEDADG0s6MmGFWUzWJKAW07r8RDgcQw=",
        "x-hubspot-request-timestamp": "15000000",
    }
    request = InboundRequest("POST", VECTOR_URL, headers, CLIENT_BODY, "application/json")
    hubspot.verify(request, ["wrong", VECTOR_SECRET], hubspot.Options(), lambda: 15000.0)


def test_bad_options_fail_at_start() -> None:
    bad_options: list[dict[str, Any]] = [
        {"signature_versions": []},
        {"signature_versions": ["v4"]},
        {"public_url": "/x"},
    ]
    for bad in bad_options:
        with pytest.raises(ValueError, match="validation error"):
            hubspot.Options.model_validate(bad)


ANY_CHAR = st.characters(exclude_categories=())  # lone surrogates included
HEADER_NAMES = st.sampled_from(
    [
        hubspot.V3_HEADER,
        hubspot.TIMESTAMP_HEADER,
        hubspot.SIGNATURE_HEADER,
        hubspot.VERSION_HEADER,
    ]
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner),
    max_leaves=20,
)
EVENTISH = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            key: JSONISH | st.sampled_from(["contact.creation", "contact.deletion"])
            for key in ("eventId", "portalId", "occurredAt", "objectId", "propertyName")
        }
        | {"subscriptionType": st.sampled_from(sorted(hubspot._UPSERTS | hubspot._DELETIONS))},
    ),
    max_size=5,
).map(lambda events: json.dumps(events).encode())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=2000) | EVENTISH,
    headers=st.dictionaries(HEADER_NAMES, st.text(ANY_CHAR, max_size=60), max_size=4),
    url=st.text(ANY_CHAR, max_size=60).map(lambda tail: "http://x/webhooks/crm" + tail),
    versions=st.sets(st.sampled_from(["v1", "v2", "v3"]), min_size=1),
)
def test_no_bytes_or_headers_make_it_raise_anything_but_its_refusals(
    body: bytes, headers: dict[str, str], url: str, versions: set[str]
) -> None:
    request = InboundRequest("POST", url, headers, body, "application/json")
    options = hubspot.Options.model_validate({"signature_versions": sorted(versions)})
    for step in (
        lambda: hubspot.verify(request, [SECRET], options, lambda: 1720000000.0),
        lambda: hubspot.records(request, options),
    ):
        with contextlib.suppress(SourceRefusal):
            step()
