"""Mailchimp: the URL token, the set-up GET, event types to actions, end to end to the sandbox."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from source_kit import SourceKit

from webhooks.sources import mailchimp
from webhooks.sources.base import InboundRequest, SourceRefusal

SECRET = "mailchimp-test-secret"

SUBSCRIBE = [
    ("type", "subscribe"),
    ("fired_at", "2024-05-01 10:00:00"),
    ("data[id]", "8a25ff1d98"),
    ("data[list_id]", "a6b5da1054"),
    ("data[email]", "ann@example.com"),
    ("data[email_type]", "html"),
    ("data[merges][EMAIL]", "ann@example.com"),
    ("data[merges][FNAME]", "Ann"),
    ("data[merges][LNAME]", "Lee"),
    ("data[merges][PHONE]", "+60123456789"),
    ("data[merges][INTERESTS]", "Billing, Support"),
    ("data[ip_opt]", "203.0.113.7"),
    ("data[ip_signup]", "203.0.113.7"),
]
UNSUBSCRIBE = [
    ("type", "unsubscribe"),
    ("fired_at", "2024-05-02 09:30:00"),
    ("data[action]", "unsub"),
    ("data[reason]", "manual"),
    ("data[id]", "8a25ff1d98"),
    ("data[list_id]", "a6b5da1054"),
    ("data[email]", "ann@example.com"),
    ("data[email_type]", "html"),
    ("data[merges][EMAIL]", "ann@example.com"),
    ("data[merges][FNAME]", "Ann"),
    ("data[merges][LNAME]", "Lee"),
    ("data[ip_opt]", "203.0.113.7"),
    ("data[campaign_id]", "cb398d21d2"),
]
CLEANED = [
    ("type", "cleaned"),
    ("fired_at", "2024-05-03 08:00:00"),
    ("data[list_id]", "a6b5da1054"),
    ("data[campaign_id]", "4fjk2ma9xd"),
    ("data[reason]", "hard"),
    ("data[email]", "ann@example.com"),
]
UPEMAIL = [
    ("type", "upemail"),
    ("fired_at", "2024-05-04 12:00:00"),
    ("data[list_id]", "a6b5da1054"),
    ("data[new_id]", "51da8c3259"),
    ("data[new_email]", "ann.lee@example.com"),
    ("data[old_email]", "ann@example.com"),
]
CAMPAIGN = [
    ("type", "campaign"),
    ("fired_at", "2024-05-05 07:00:00"),
    ("data[id]", "5aa2102003"),
    ("data[subject]", "May news"),
    ("data[status]", "sent"),
    ("data[reason]", ""),
    ("data[list_id]", "a6b5da1054"),
]

CONFIG = {
    "kind": "mailchimp",
    "secret": SECRET,
    "channel": "main",
    "tags": ["newsletter"],
    "fields": {"list_id": "mailchimp_list"},
}


def deliver(kit: SourceKit, pairs: list[tuple[str, str]], *, token: str | None = SECRET) -> Any:
    """POST as Mailchimp does: urlencoded, the token in the URL's query."""
    query = {"token": token} if token is not None else {}
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return kit.post("audience", urlencode(pairs).encode(), headers, query_string=query)


def test_a_subscribe_reaches_the_sandbox_with_merge_fields_and_tags(source_kit: Any) -> None:
    kit = source_kit({"audience": CONFIG})
    response = deliver(kit, SUBSCRIBE)
    assert response.status_code == 202, response.get_json()
    assert kit.apply_all() == ["done"]
    contact = kit.contact("email", "ann@example.com")
    assert contact["custom_fields"]["firstName"] == "Ann"
    assert contact["custom_fields"]["lastName"] == "Lee"
    assert contact["custom_fields"]["phone"] == "+60123456789"
    assert contact["custom_fields"]["mailchimp_list"] == "a6b5da1054"
    assert contact["tags"] == ["newsletter"]


@pytest.mark.parametrize("removal", [UNSUBSCRIBE, CLEANED], ids=["unsubscribe", "cleaned"])
def test_an_unsubscribe_or_cleaned_removes_the_sources_tags(
    source_kit: Any, removal: list[tuple[str, str]]
) -> None:
    kit = source_kit({"audience": {**CONFIG, "tags": ["newsletter", "mailchimp"]}})
    kit.sandbox.state.create_contact("main", {"email": "ann@example.com"}, ["newsletter", "vip"])
    assert deliver(kit, SUBSCRIBE).status_code == 202
    assert kit.apply_all() == ["done"]
    assert kit.contact("email", "ann@example.com")["tags"] == ["newsletter", "vip", "mailchimp"]
    response = deliver(kit, removal)
    assert response.status_code == 202, response.get_json()
    assert [row["kind"] for row in kit.recorded()] == ["upsert", "untag"]
    assert kit.apply_all() == ["done"]
    contact = kit.contact("email", "ann@example.com")
    assert contact["tags"] == ["vip"]
    assert contact["custom_fields"]["firstName"] == "Ann"


def test_a_source_without_tags_to_remove_is_refused_at_start_up(source_kit: Any) -> None:
    with pytest.raises(ValueError, match=r"sources\.audience\.tags: .*configure tags"):
        source_kit({"audience": {**CONFIG, "tags": []}})


def test_an_email_change_upserts_the_new_address(source_kit: Any) -> None:
    kit = source_kit({"audience": CONFIG})
    assert deliver(kit, UPEMAIL).status_code == 202
    assert kit.apply_all() == ["done"]
    assert kit.contact("email", "ann.lee@example.com")["tags"] == ["newsletter"]


def test_a_campaign_event_is_answered_200_and_records_nothing(source_kit: Any) -> None:
    kit = source_kit({"audience": CONFIG})
    response = deliver(kit, CAMPAIGN)
    assert response.status_code == 200
    assert response.get_json() == {"events": []}
    assert kit.recorded() == []


def test_the_set_up_get_is_answered_200_without_a_token(source_kit: Any) -> None:
    kit = source_kit({"audience": CONFIG})
    response = kit.http.get("/webhooks/audience")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "source": "audience"}
    assert kit.recorded() == []


def test_a_redelivery_is_a_duplicate(source_kit: Any) -> None:
    kit = source_kit({"audience": CONFIG})
    assert deliver(kit, SUBSCRIBE).status_code == 202
    again = deliver(kit, SUBSCRIBE)
    assert again.status_code == 200
    [event] = again.get_json()["events"]
    assert event["duplicate"] is True
    assert event["event_id"] == hashlib.sha256(urlencode(SUBSCRIBE).encode()).hexdigest()
    assert len(kit.recorded()) == 1


@pytest.mark.parametrize(
    ("token", "error"), [("wrong-secret", "invalid_token"), (None, "missing_token")]
)
def test_a_wrong_or_missing_token_is_401_and_nothing_is_recorded(
    source_kit: Any, token: str | None, error: str
) -> None:
    kit = source_kit({"audience": CONFIG})
    response = deliver(kit, SUBSCRIBE, token=token)
    assert response.status_code == 401
    assert response.get_json()["error"] == error
    assert kit.recorded() == []


@pytest.mark.parametrize(
    "pairs",
    [[], [("fired_at", "2024-05-01 10:00:00"), ("data[email]", "ann@example.com")]],
    ids=["empty", "no-type"],
)
def test_a_malformed_body_is_400(source_kit: Any, pairs: list[tuple[str, str]]) -> None:
    kit = source_kit({"audience": CONFIG})
    response = deliver(kit, pairs)
    assert response.status_code == 400
    assert kit.recorded() == []


def test_an_email_change_without_the_new_address_is_422(source_kit: Any) -> None:
    kit = source_kit({"audience": CONFIG})
    pairs = [pair for pair in UPEMAIL if pair[0] != "data[new_email]"]
    response = deliver(kit, pairs)
    assert response.status_code == 422
    assert response.get_json()["field"] == "data[new_email]"


def test_json_is_415(source_kit: Any) -> None:
    kit = source_kit({"audience": CONFIG})
    response = kit.post("audience", b"{}", {"Content-Type": "application/json"})
    assert response.status_code == 415


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("type", "type"),
        ("data[email]", "email"),
        ("data[merges][FNAME]", "merges.FNAME"),
        ("data[merges][GROUPINGS][0][groups]", "merges.GROUPINGS.0.groups"),
        ("data", "data"),
        ("odd[key", "odd[key"),
    ],
)
def test_bracketed_keys_become_dotted(name: str, key: str) -> None:
    assert mailchimp.key_path(name) == key


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    form=st.dictionaries(
        st.one_of(st.sampled_from(["type", "data[email]", "data[new_email]"]), st.text()),
        st.one_of(st.sampled_from(["subscribe", "upemail", "campaign"]), st.text(max_size=80)),
    ),
    body=st.binary(max_size=500),
    token=st.text(max_size=40),
)
def test_no_input_makes_it_raise_anything_but_its_refusals(
    form: dict[str, str], body: bytes, token: str
) -> None:
    request = InboundRequest(
        "POST",
        "http://x/webhooks/audience",
        {},
        body,
        "application/x-www-form-urlencoded",
        query={"token": token},
        form=form,
    )
    for step in (
        lambda: mailchimp.verify(request, [SECRET], mailchimp.Options(), lambda: 0.0),
        lambda: mailchimp.records(request, mailchimp.Options()),
    ):
        with contextlib.suppress(SourceRefusal):
            step()
