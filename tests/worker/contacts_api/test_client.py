"""The client against the sandbox over real HTTP: requests, splitting, lookups and errors."""

from __future__ import annotations

import base64
import socket
from collections.abc import Callable
from contextlib import closing
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.contacts_api import (
    ConnectionFailed,
    ContactsApiError,
    ContactsClient,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    ServerError,
    Timeout,
    Unauthorized,
    UnexpectedResponse,
    ValidationError,
    limits,
)
from worker.contacts_api import client as client_module
from worker.contacts_api.errors import map_error
from worker.contacts_api.sandbox import SandboxServer

MakeClient = Callable[..., ContactsClient]
HTTP_SETTINGS = settings(max_examples=30, deadline=None)


def bodies(sandbox: SandboxServer, channel: str = "main") -> list[Any]:
    return [call.body for call in sandbox.state.calls(channel)]


def main_client(server: SandboxServer) -> ContactsClient:
    """A client for the main channel, for tests that cannot take function fixtures."""
    return ContactsClient(server.api_url, server.token("main"), timeout=(1, 2))


def numbered(count: int, prefix: str = "k") -> dict[str, Any]:
    return {f"{prefix}{i}": f"v{i}" for i in range(count)}


# -- the six requests -------------------------------------------------------------------------


def test_create_get_update_and_tags_round_trip(
    sandbox: SandboxServer, client_for: MakeClient
) -> None:
    client = client_for("main")
    contact_id = client.create({"firstName": "Ann", "isLead": True, "score": 3})
    assert client.update(contact_id, {"lastName": "Lee", "isLead": False}) == 1
    assert client.add_tags(contact_id, ["vip", "lead"]) == 1
    assert client.remove_tags(contact_id, ["lead"]) == 1
    contact = client.get(contact_id)
    assert contact.id == contact_id
    assert contact.custom_fields == {
        "firstName": "Ann",
        "isLead": "false",
        "score": "3",
        "lastName": "Lee",
    }
    assert contact.tags == ["vip"]
    assert isinstance(contact.created_at, int)


def test_viber_client_sends_base64_ids(sandbox: SandboxServer, client_for: MakeClient) -> None:
    client = client_for("viber")
    contact_id = client.create({"firstName": "Vi"})
    client.update(contact_id, {"lastName": "Ber"})
    client.add_tags(contact_id, ["a"])
    assert client.get(contact_id).custom_fields == {"firstName": "Vi", "lastName": "Ber"}
    encoded = base64.b64encode(contact_id.encode()).decode()
    path = f"/api/v1/contact/{encoded}"
    paths = [call.path for call in sandbox.state.calls("viber")[1:]]
    assert paths == [path, f"{path}/tags", path]


def test_lookup_follows_links_next_over_25_matches(
    sandbox: SandboxServer, client_for: MakeClient
) -> None:
    for i in range(25):
        sandbox.state.create_contact("main", {"customerid": "42", "n": i})
    found = client_for("main").find_by_custom_field("customerid", "42")
    assert [contact.custom_fields["n"] for contact in found] == list(range(25))
    queries = [call.query for call in sandbox.state.calls("main")]
    assert queries == [
        "name=customerid&value=42",
        "name=customerid&value=42&page=2",
        "name=customerid&value=42&page=3",
    ]


@pytest.mark.parametrize(("matches", "pages_allowed"), [(20, 2), (21, 2)])
def test_lookup_reads_up_to_max_pages_and_no_more(
    sandbox: SandboxServer,
    client_for: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
    matches: int,
    pages_allowed: int,
) -> None:
    monkeypatch.setattr(client_module, "MAX_PAGES", pages_allowed)
    for _ in range(matches):
        sandbox.state.create_contact("main", {"customerid": "9"})
    client = client_for("main")
    if matches <= pages_allowed * limits.PAGE_SIZE:
        assert len(client.find_by_custom_field("customerid", "9")) == matches
    else:
        with pytest.raises(UnexpectedResponse, match="more than 2 pages"):
            client.find_by_custom_field("customerid", "9")
    assert len(sandbox.state.calls("main")) == pages_allowed


def test_lookup_by_phone_sends_the_plus_as_2b(
    sandbox: SandboxServer, client_for: MakeClient
) -> None:
    sandbox.state.create_contact("main", {"phone": "+60123456789"})
    found = client_for("main").find_by_custom_field("phone", "+60123456789")
    assert [contact.custom_fields["phone"] for contact in found] == ["+60123456789"]
    assert "value=%2B60123456789" in sandbox.state.calls("main")[0].query


def test_lookup_by_boolean_sends_true(sandbox: SandboxServer, client_for: MakeClient) -> None:
    lead = sandbox.state.create_contact("crm", {"isLead": True})
    sandbox.state.create_contact("crm", {"isLead": False})
    found = client_for("crm").find_by_custom_field("isLead", True)
    assert [contact.id for contact in found] == [lead.id]


def test_lookup_with_no_match_is_empty(sandbox: SandboxServer, client_for: MakeClient) -> None:
    assert client_for("main").find_by_custom_field("email", "nobody@example.com") == []


# -- splitting --------------------------------------------------------------------------------


def test_45_fields_become_a_create_of_30_and_an_update_of_15(
    sandbox: SandboxServer, client_for: MakeClient
) -> None:
    calls_made: list[int] = []
    client = client_for("main", before_call=lambda: calls_made.append(1))
    fields = numbered(45)
    contact_id = client.create(fields)
    calls = sandbox.state.calls("main")
    assert [(call.method, call.path) for call in calls] == [
        ("POST", "/api/v1/contact"),
        ("PUT", f"/api/v1/contact/{contact_id}"),
    ]
    assert [len(body["custom_fields"]) for body in bodies(sandbox)] == [30, 15]
    assert sandbox.state.contacts("main")[0]["custom_fields"] == fields
    assert len(calls_made) == 2


def test_25_tags_take_3_calls_of_at_most_10(sandbox: SandboxServer, client_for: MakeClient) -> None:
    client = client_for("main")
    contact_id = client.create({"firstName": "T"})
    tags = [f"tag{i}" for i in range(25)]
    assert client.add_tags(contact_id, [*tags, "tag0"]) == 3
    assert [len(body["tags"]) for body in bodies(sandbox)[1:]] == [10, 10, 5]
    assert client.get(contact_id).tags == tags


@HTTP_SETTINGS
@given(st.data())
def test_update_sends_each_field_once_in_order_within_the_limit(
    sandbox_server: SandboxServer, data: st.DataObject
) -> None:
    sandbox_server.state.reset()
    count = data.draw(st.integers(min_value=0, max_value=100), label="count")
    values = data.draw(
        st.lists(
            st.one_of(st.booleans(), st.integers(), st.text(max_size=8)),
            min_size=count,
            max_size=count,
        ),
        label="values",
    )
    fields = {f"k{i}": value for i, value in enumerate(values)}
    contact = sandbox_server.state.create_contact("main", {})
    with closing(main_client(sandbox_server)) as client:
        assert client.update(contact.id, fields) == limits.calls_for_fields(count)
    sent = bodies(sandbox_server)
    assert all(1 <= len(body["custom_fields"]) <= 30 for body in sent)
    items = [item for body in sent for item in body["custom_fields"]]
    assert [item["name"] for item in items] == list(fields)
    assert [item["value"] for item in items] == [limits.wire_value(v) for v in fields.values()]
    stored = sandbox_server.state.contacts("main")[0]["custom_fields"]
    assert stored == {name: limits.wire_value(value) for name, value in fields.items()}


@HTTP_SETTINGS
@given(st.integers(min_value=1, max_value=100))
def test_create_of_any_size_sends_each_field_once_within_the_limit(
    sandbox_server: SandboxServer, count: int
) -> None:
    sandbox_server.state.reset()
    fields = numbered(count)
    with closing(main_client(sandbox_server)) as client:
        contact_id = client.create(fields)
    calls = sandbox_server.state.calls("main")
    assert [call.method for call in calls] == ["POST"] + ["PUT"] * (len(calls) - 1)
    assert len(calls) == limits.calls_for_fields(count)
    names = [item["name"] for call in calls for item in call.body["custom_fields"]]
    assert names == list(fields)
    assert all(len(call.body["custom_fields"]) <= 30 for call in calls)
    assert [c["id"] for c in sandbox_server.state.contacts("main")] == [contact_id]


@HTTP_SETTINGS
@given(st.lists(st.sampled_from([f"t{i}" for i in range(80)]), min_size=1, max_size=60))
def test_tags_are_sent_once_each_in_order_within_the_limit(
    sandbox_server: SandboxServer, tags: list[str]
) -> None:
    sandbox_server.state.reset()
    contact = sandbox_server.state.create_contact("main", {})
    unique = list(dict.fromkeys(tags))
    with closing(main_client(sandbox_server)) as client:
        assert client.add_tags(contact.id, tags) == limits.calls_for_tags(len(unique))
        sent = [body["tags"] for body in bodies(sandbox_server)]
        assert all(1 <= len(group) <= 10 for group in sent)
        assert [tag for group in sent for tag in group] == unique
        assert client.get(contact.id).tags == unique
        client.remove_tags(contact.id, tags)
        assert client.get(contact.id).tags == []


# -- refused before any call ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "declared", "request_"),
    [
        ("crm", True, lambda c: c.create({"nickname": "x"})),
        ("crm", True, lambda c: c.update("1", {"customerid": 1, "other": 2})),
        ("crm", True, lambda c: c.find_by_custom_field("other", "x")),
        ("main", False, lambda c: c.create({"locale": "en_GB"})),
        ("main", False, lambda c: c.update("1", {"bad-name": 1})),
        ("main", False, lambda c: c.create({})),
        ("main", False, lambda c: c.add_tags("1", [])),
        ("main", False, lambda c: c.add_tags("1", "vip")),
        ("main", False, lambda c: c.remove_tags("1", ["ok", " "])),
        ("main", False, lambda c: c.get("")),
    ],
)
def test_invalid_requests_are_refused_before_any_call(
    sandbox: SandboxServer,
    client_for: MakeClient,
    channel: str,
    declared: bool,
    request_: Callable[[ContactsClient], Any],
) -> None:
    fields = sandbox.state.channel(channel).custom_fields if declared else None
    client = client_for(channel, custom_fields=fields)
    with pytest.raises(ValidationError):
        request_(client)
    assert sandbox.state.log()["channels"][channel]["accepted"] == 0


# -- errors through the real sandbox ----------------------------------------------------------


def test_unknown_token_is_unauthorized(sandbox: SandboxServer) -> None:
    client = ContactsClient(sandbox.api_url, "not-a-token", timeout=(1, 2))
    with pytest.raises(Unauthorized) as caught:
        client.get("1")
    assert caught.value.status == 401


def test_a_refusal_is_forbidden_with_the_api_message(
    sandbox: SandboxServer, client_for: MakeClient
) -> None:
    client = client_for("crm")  # fields not declared to the client: the API refuses
    with pytest.raises(Forbidden) as caught:
        client.create({"nickname": "x"})
    assert type(caught.value) is Forbidden
    assert "nickname" in caught.value.message
    assert caught.value.status == 403


def test_an_unknown_contact_is_not_found(sandbox: SandboxServer, client_for: MakeClient) -> None:
    client = client_for("viber")
    for request_ in (
        lambda: client.get("999"),
        lambda: client.update("999", {"firstName": "x"}),
        lambda: client.add_tags("999", ["a"]),
    ):
        with pytest.raises(NotFound):
            request_()


def test_405_maps_to_method_not_allowed(sandbox: SandboxServer) -> None:
    response = requests.delete(
        f"{sandbox.api_url}/contact",
        headers={"Authorization": f"Bearer {sandbox.token('main')}"},
        timeout=5,
    )
    assert isinstance(map_error(response, what="DELETE /contact"), MethodNotAllowed)


def test_429_is_rate_limited_with_retry_after(
    sandbox: SandboxServer, client_for: MakeClient
) -> None:
    sandbox.state.set_rate(1, 60)
    client = client_for("main")
    client.find_by_custom_field("email", "a@b.c")
    with pytest.raises(RateLimited) as caught:
        client.find_by_custom_field("email", "a@b.c")
    assert caught.value.retry_after == 60


def test_429_without_the_header_has_no_retry_after(
    sandbox: SandboxServer, client_for: MakeClient
) -> None:
    sandbox.state.set_faults(rate_limit_rate=1.0, retry_after=False)
    with pytest.raises(RateLimited) as caught:
        client_for("main").get("1")
    assert caught.value.retry_after is None


def test_5xx_is_a_server_error(sandbox: SandboxServer, client_for: MakeClient) -> None:
    sandbox.state.set_faults(error_rate=1.0)
    client = client_for("main")
    for _ in range(6):  # both JSON and HTML bodies come up
        with pytest.raises(ServerError) as caught:
            client.get("1")
        assert caught.value.status in {500, 502, 503}


def test_a_hang_is_a_timeout(sandbox: SandboxServer, client_for: MakeClient) -> None:
    sandbox.state.set_faults(hang_s=5, hang_rate=1.0)
    with pytest.raises(Timeout):
        client_for("main", timeout=(1, 0.3)).get("1")


def test_a_closed_port_is_a_connection_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ContactsClient(f"http://127.0.0.1:{port}/api/v1", "token", timeout=(1, 1))
    with pytest.raises(ConnectionFailed):
        client.get("1")


def test_a_base_url_without_scheme_is_refused_not_retried() -> None:
    client = ContactsClient("app.example/api/v1", "token", timeout=(1, 1))
    with pytest.raises(ValidationError, match="cannot send"):
        client.get("1")


def test_a_failure_after_the_first_chunk_carries_the_created_id(
    sandbox: SandboxServer, client_for: MakeClient
) -> None:
    sandbox.state.set_rate(1, 60)
    with pytest.raises(RateLimited) as caught:
        client_for("main").create(numbered(45))
    (contact,) = sandbox.state.contacts("main")
    assert caught.value.created_contact_id == contact["id"]
    assert len(contact["custom_fields"]) == 30


def test_links_next_to_another_host_is_refused(
    sandbox: SandboxServer, client_for: MakeClient
) -> None:
    for _ in range(11):
        sandbox.state.create_contact("main", {"customerid": "1"})
    session = requests.Session()
    session.headers["Host"] = "elsewhere.example"  # the sandbox builds its links from Host
    client = client_for("main", session=session)
    with pytest.raises(UnexpectedResponse, match="leaves the API"):
        client.find_by_custom_field("customerid", "1")
    assert len(sandbox.state.calls("main")) == 1


def test_no_error_or_repr_shows_the_token(sandbox: SandboxServer, client_for: MakeClient) -> None:
    token = sandbox.token("main")
    client = client_for("main", timeout=(1, 0.3))
    errors: list[ContactsApiError] = []

    def collect(request_: Callable[[], Any]) -> None:
        try:
            request_()
        except ContactsApiError as error:
            errors.append(error)

    collect(lambda: client.get("999"))
    collect(lambda: client.create({"locale": "x"}))
    sandbox.state.set_faults(error_rate=1.0)
    collect(lambda: client.get("1"))
    sandbox.state.set_faults(error_rate=0.0, hang_s=5, hang_rate=1.0)
    collect(lambda: client.get("1"))
    sandbox.state.set_faults(hang_rate=0.0, rate_limit_rate=1.0)
    collect(lambda: client.get("1"))
    sandbox.state.set_channel("main", "another-token")
    collect(lambda: client.get("1"))
    assert [type(error).__name__ for error in errors] == [
        "NotFound",
        "ValidationError",
        "ServerError",
        "Timeout",
        "RateLimited",
        "Unauthorized",
    ]
    texts = [repr(client), str(client)]
    for error in errors:
        texts += [str(error), repr(error), str(error.__context__), repr(error.__context__)]
    assert not [text for text in texts if token in text]
