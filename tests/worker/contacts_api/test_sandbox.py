"""The sandbox enforces every documented rule of the Contacts API, checked on the wire."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from worker.config import load_config
from worker.contacts_api.sandbox import (
    SandboxChannel,
    SandboxConfig,
    SandboxServer,
    SandboxState,
    parse_rate,
)
from worker.contacts_api.sandbox_state import Faults, max_in_window

MAIN = {"Authorization": "Bearer sandbox-main-token"}
CRM = {"Authorization": "Bearer sandbox-crm-token"}
VIBER = {"Authorization": "Bearer sandbox-viber-token"}


def call(
    sandbox: SandboxServer,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    timeout: float | tuple[float, float] = 5,
    **kwargs: Any,
) -> requests.Response:
    """One raw call to the sandbox's API, as the main channel unless told otherwise."""
    url = f"{sandbox.api_url}{path}"
    headers = MAIN if headers is None else headers
    return requests.request(method, url, headers=headers, timeout=timeout, **kwargs)


def admin(sandbox: SandboxServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{sandbox.url}/_sandbox{path}", timeout=5, **kwargs)


def fields(count: int, prefix: str = "f") -> list[dict[str, str]]:
    return [{"name": f"{prefix}{i}", "value": str(i)} for i in range(count)]


def create(sandbox: SandboxServer, headers: dict[str, str] = MAIN) -> str:
    response = call(sandbox, "POST", "/contact", headers=headers, json={"custom_fields": fields(1)})
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["id"])


def assert_general(response: requests.Response, message: str | None = None) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["status"] == "error"
    if message is not None:
        assert body["message"] == message


# -- authentication and routing ---------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "sandbox-main-token"},
        {"Authorization": "Bearer "},
    ],
    ids=["missing", "unknown", "no-scheme", "empty"],
)
def test_bad_token_is_401_and_not_counted(sandbox: SandboxServer, headers: dict[str, str]) -> None:
    response = call(sandbox, "GET", "/contact/1", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"status": "error", "message": "Unauthenticated."}
    log = sandbox.state.log()
    assert log["unauthenticated"] == 1
    assert all(channel["accepted"] == 0 for channel in log["channels"].values())


def test_401s_take_no_slot_in_the_window(sandbox: SandboxServer) -> None:
    sandbox.state.set_rate(2, 60)
    for _ in range(5):
        assert call(sandbox, "GET", "/contact/1", headers={}).status_code == 401
    assert [call(sandbox, "GET", "/contact/1").status_code for _ in range(3)] == [403, 403, 429]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/contact"),
        ("GET", "/contact"),
        ("PATCH", "/contact/1"),
        ("DELETE", "/contact/1"),
        ("POST", "/contact/by_custom_field"),
        ("GET", "/contact/1/tags"),
        ("PUT", "/contact/1/tags"),
        ("OPTIONS", "/contact"),
    ],
)
def test_wrong_method_on_a_known_path_is_405_json(
    sandbox: SandboxServer, method: str, path: str
) -> None:
    response = call(sandbox, method, path)
    assert response.status_code == 405
    assert response.json() == {"status": "error", "message": "Method not allowed"}


def test_unknown_path_is_404_json(sandbox: SandboxServer) -> None:
    response = call(sandbox, "GET", "/contacts")
    assert response.status_code == 404
    assert response.json()["status"] == "error"


# -- the request rules ------------------------------------------------------------------------


def test_create_returns_a_numeric_string_id_and_the_contact_reads_back(
    sandbox: SandboxServer,
) -> None:
    body = {
        "custom_fields": [{"name": "firstName", "value": "Ann"}, {"name": "isLead", "value": True}]
    }
    response = call(sandbox, "POST", "/contact", json=body)
    assert response.status_code == 200
    contact_id = response.json()["data"]["id"]
    assert isinstance(contact_id, str)
    assert contact_id.isdigit()
    contact = call(sandbox, "GET", f"/contact/{contact_id}").json()["data"]
    assert contact["id"] == contact_id
    assert contact["custom_fields"] == {"firstName": "Ann", "isLead": True}
    assert contact["tags"] == []
    assert abs(contact["created_at"] - time.time()) < 60


def test_30_fields_are_accepted_and_31_refused(sandbox: SandboxServer) -> None:
    assert call(sandbox, "POST", "/contact", json={"custom_fields": fields(30)}).ok
    assert_general(call(sandbox, "POST", "/contact", json={"custom_fields": fields(31)}))
    contact_id = create(sandbox)
    assert call(sandbox, "PUT", f"/contact/{contact_id}", json={"custom_fields": fields(30)}).ok
    assert_general(
        call(sandbox, "PUT", f"/contact/{contact_id}", json={"custom_fields": fields(31)})
    )


def test_update_returns_the_id_and_merges_fields(sandbox: SandboxServer) -> None:
    contact_id = create(sandbox)
    body = {"custom_fields": [{"name": "f0", "value": "new"}, {"name": "email", "value": "a@b"}]}
    response = call(sandbox, "PUT", f"/contact/{contact_id}", json=body)
    assert response.json() == {"data": {"id": contact_id}}
    assert sandbox.state.contacts("main")[0]["custom_fields"] == {"f0": "new", "email": "a@b"}


@pytest.mark.parametrize(
    ("headers", "name"),
    [(MAIN, "locale"), (MAIN, "timezone"), (MAIN, "bad-key"), (MAIN, "9lives"), (CRM, "nickname")],
    ids=["read-only-locale", "read-only-timezone", "malformed", "leading-digit", "undeclared"],
)
def test_fields_that_cannot_be_written_are_refused(
    sandbox: SandboxServer, headers: dict[str, str], name: str
) -> None:
    body = {"custom_fields": [{"name": name, "value": "x"}]}
    assert_general(call(sandbox, "POST", "/contact", headers=headers, json=body))


def test_declared_and_standard_fields_are_writable_on_a_declared_channel(
    sandbox: SandboxServer,
) -> None:
    body = {
        "custom_fields": [{"name": "customerid", "value": "1"}, {"name": "phone", "value": "1"}]
    }
    assert call(sandbox, "POST", "/contact", headers=CRM, json=body).ok


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"custom_fields": {"firstName": "Ann"}}',
        b'{"custom_fields": []}',
        b'{"custom_fields": [{"name": "firstName"}]}',
        b'{"custom_fields": [{"name": "firstName", "value": "A", "extra": 1}]}',
        b'{"custom_fields": [{"name": "", "value": "A"}]}',
        b'{"custom_fields": [{"name": 5, "value": "A"}]}',
        b'{"custom_fields": [{"name": "firstName", "value": {"a": 1}}]}',
        b'{"custom_fields": ["firstName"]}',
        b'{"fields": [{"name": "firstName", "value": "A"}]}',
    ],
)
def test_bad_bodies_are_refused(sandbox: SandboxServer, body: bytes) -> None:
    headers = {**MAIN, "Content-Type": "application/json"}
    assert_general(call(sandbox, "POST", "/contact", headers=headers, data=body))
    contact_id = create(sandbox)
    assert_general(call(sandbox, "PUT", f"/contact/{contact_id}", headers=headers, data=body))


@pytest.mark.parametrize("method", ["POST", "DELETE"])
@pytest.mark.parametrize(
    "tags",
    [[], [f"t{i}" for i in range(11)], [""], ["  "], [5], [None], "vip"],
    ids=["none", "eleven", "empty", "blank", "number", "null", "string"],
)
def test_bad_tag_lists_are_refused(sandbox: SandboxServer, method: str, tags: Any) -> None:
    contact_id = create(sandbox)
    assert_general(call(sandbox, method, f"/contact/{contact_id}/tags", json={"tags": tags}))


def test_tags_are_added_once_in_first_order_and_removed_quietly(sandbox: SandboxServer) -> None:
    contact_id = create(sandbox)
    path = f"/contact/{contact_id}/tags"
    ten = [f"t{i}" for i in range(10)]
    response = call(sandbox, "POST", path, json={"tags": ten})
    assert response.json() == {"status": "success"}
    assert call(sandbox, "POST", path, json={"tags": ["t3", "new", "t0"]}).ok
    assert call(sandbox, "DELETE", path, json={"tags": ["t1", "absent"]}).ok
    tags = call(sandbox, "GET", f"/contact/{contact_id}").json()["data"]["tags"]
    assert tags == ["t0", *ten[2:], "new"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/contact/999", None),
        ("PUT", "/contact/999", {"custom_fields": fields(1)}),
        ("POST", "/contact/999/tags", {"tags": ["a"]}),
        ("DELETE", "/contact/999/tags", {"tags": ["a"]}),
        ("GET", "/contact/a%2Fb", None),
    ],
)
def test_unknown_contact_is_403_no_such_contact(
    sandbox: SandboxServer, method: str, path: str, body: Any
) -> None:
    assert_general(call(sandbox, method, path, json=body), "no such contact")


def test_contacts_belong_to_their_channel(sandbox: SandboxServer) -> None:
    contact_id = create(sandbox)
    assert_general(call(sandbox, "GET", f"/contact/{contact_id}", headers=CRM), "no such contact")


# -- Viber ------------------------------------------------------------------------------------


def b64(contact_id: str) -> str:
    return base64.b64encode(contact_id.encode()).decode()


def test_viber_wants_the_base64_id_and_refuses_the_raw_one(sandbox: SandboxServer) -> None:
    contact_id = create(sandbox, VIBER)
    assert_general(call(sandbox, "GET", f"/contact/{contact_id}", headers=VIBER), "no such contact")
    response = call(sandbox, "GET", f"/contact/{b64(contact_id)}", headers=VIBER)
    assert response.json()["data"]["id"] == contact_id
    update = {"custom_fields": fields(1, "g")}
    assert call(sandbox, "PUT", f"/contact/{b64(contact_id)}", headers=VIBER, json=update).ok
    tags = {"tags": ["a"]}
    assert call(sandbox, "POST", f"/contact/{b64(contact_id)}/tags", headers=VIBER, json=tags).ok
    assert_general(
        call(sandbox, "POST", f"/contact/{contact_id}/tags", headers=VIBER, json=tags),
        "no such contact",
    )


@pytest.mark.parametrize("path_id", ["a%2F%2Fb%2B%3D", "%2Fabc", "not-base64!", "TWFu="])
def test_viber_path_ids_of_any_shape_route_and_are_refused_as_unknown(
    sandbox: SandboxServer, path_id: str
) -> None:
    assert_general(call(sandbox, "GET", f"/contact/{path_id}", headers=VIBER), "no such contact")


# -- lookup and pagination --------------------------------------------------------------------


def test_25_matches_make_3_pages_with_laravel_links_and_meta(sandbox: SandboxServer) -> None:
    for i in range(25):
        sandbox.state.create_contact("main", {"customerid": "7", "n": i})
    sandbox.state.create_contact("main", {"customerid": "8"})
    base = f"{sandbox.api_url}/contact/by_custom_field"

    def link(page: int) -> str:
        return f"{base}?name=customerid&value=7&page={page}"

    first = call(sandbox, "GET", "/contact/by_custom_field?name=customerid&value=7").json()
    assert [c["custom_fields"]["n"] for c in first["data"]] == list(range(10))
    assert first["links"] == {"first": link(1), "last": link(3), "prev": None, "next": link(2)}
    assert first["meta"] == {
        "current_page": 1,
        "from": 1,
        "last_page": 3,
        "path": base,
        "per_page": 10,
        "to": 10,
        "total": 25,
    }
    second = requests.get(first["links"]["next"], headers=MAIN, timeout=5).json()
    assert second["links"]["prev"] == link(1)
    assert second["links"]["next"] == link(3)
    assert (second["meta"]["from"], second["meta"]["to"]) == (11, 20)
    third = requests.get(second["links"]["next"], headers=MAIN, timeout=5).json()
    assert [c["custom_fields"]["n"] for c in third["data"]] == list(range(20, 25))
    assert third["links"]["next"] is None
    assert third["links"]["prev"] == link(2)
    assert (third["meta"]["current_page"], third["meta"]["from"], third["meta"]["to"]) == (
        3,
        21,
        25,
    )


def test_no_match_is_an_empty_page(sandbox: SandboxServer) -> None:
    response = call(sandbox, "GET", "/contact/by_custom_field?name=customerid&value=1")
    assert response.status_code == 200
    body = response.json()
    assert body["data"] == []
    assert (body["links"]["prev"], body["links"]["next"]) == (None, None)
    assert body["meta"]["total"] == 0
    assert body["meta"]["last_page"] == 1
    assert (body["meta"]["from"], body["meta"]["to"]) == (None, None)


@pytest.mark.parametrize("query", ["name=phone", "value=1", "name=&value=1", "name=phone&value="])
def test_lookup_without_name_or_value_is_refused(sandbox: SandboxServer, query: str) -> None:
    assert_general(call(sandbox, "GET", f"/contact/by_custom_field?{query}"))


def test_phone_lookup_needs_the_plus_sent_as_2b(sandbox: SandboxServer) -> None:
    sandbox.state.create_contact("main", {"phone": "+6012"})
    raw_plus = call(sandbox, "GET", "/contact/by_custom_field?name=phone&value=+6012").json()
    encoded = call(sandbox, "GET", "/contact/by_custom_field?name=phone&value=%2B6012").json()
    assert raw_plus["meta"]["total"] == 0
    assert encoded["meta"]["total"] == 1


def test_boolean_fields_match_true_and_false(sandbox: SandboxServer) -> None:
    sandbox.state.create_contact("main", {"isLead": True})
    sandbox.state.create_contact("main", {"isLead": False})
    for value, expected in [("true", [True]), ("false", [False]), ("True", [])]:
        page = call(sandbox, "GET", f"/contact/by_custom_field?name=isLead&value={value}").json()
        assert [c["custom_fields"]["isLead"] for c in page["data"]] == expected


def test_page_links_keep_plus_and_space_encoded(sandbox: SandboxServer) -> None:
    for _ in range(11):
        sandbox.state.create_contact("main", {"phone": "+60 12"})
    page = call(sandbox, "GET", "/contact/by_custom_field?name=phone&value=%2B60%2012").json()
    assert page["links"]["next"].endswith("?name=phone&value=%2B60%2012&page=2")
    second = requests.get(page["links"]["next"], headers=MAIN, timeout=5).json()
    assert len(second["data"]) == 1


# -- the rate limit ---------------------------------------------------------------------------


def test_sliding_window_refuses_the_call_over_the_limit_then_admits_again(
    sandbox: SandboxServer,
) -> None:
    sandbox.state.set_rate(5, 1.0)
    statuses = [call(sandbox, "GET", "/contact/1").status_code for _ in range(5)]
    assert statuses == [403] * 5
    refused = call(sandbox, "GET", "/contact/1")
    assert refused.status_code == 429
    assert refused.json() == {"message": "Too Many Attempts."}
    assert refused.headers["Retry-After"] == "1"
    time.sleep(1.05)
    assert call(sandbox, "GET", "/contact/1").status_code == 403
    channel = sandbox.state.log()["channels"]["main"]
    assert channel["accepted"] == 6
    assert channel["refused"] == {"429": 1}
    assert channel["max_in_window"] == 5


def test_retry_after_switch_omits_the_header(sandbox: SandboxServer) -> None:
    sandbox.state.set_rate(1, 60)
    sandbox.state.set_faults(retry_after=False)
    assert call(sandbox, "GET", "/contact/1").status_code == 403
    refused = call(sandbox, "GET", "/contact/1")
    assert refused.status_code == 429
    assert "Retry-After" not in refused.headers


def test_retry_after_counts_whole_seconds_until_the_oldest_call_leaves() -> None:
    now = [0.0]
    state = SandboxState(
        [SandboxChannel(token="t", name="c")], rate_limit=(3, 10.0), clock=lambda: now[0]
    )
    for at in (0.0, 1.0, 2.0):
        now[0] = at
        assert state.admit("c").wait_s is None
    now[0] = 9.5
    assert state.admit("c").wait_s == pytest.approx(0.5)
    now[0] = 10.0  # the call at 0 has left: a true sliding window, not a fixed one
    assert state.admit("c").wait_s is None
    now[0] = 10.5
    assert state.admit("c").wait_s == pytest.approx(0.5)


def test_limit_is_per_token(sandbox: SandboxServer) -> None:
    sandbox.state.set_rate(1, 60)
    assert call(sandbox, "GET", "/contact/1").status_code == 403
    assert call(sandbox, "GET", "/contact/1").status_code == 429
    assert call(sandbox, "GET", "/contact/1", headers=CRM).status_code == 403


def brute_force_max(times: list[float], period_s: float) -> int:
    """Count, from each call, the calls in the window that opens with it."""
    return max((sum(1 for u in times if t <= u < t + period_s) for t in times), default=0)


@given(
    st.lists(st.integers(min_value=0, max_value=200), max_size=40).map(sorted),
    st.integers(min_value=1, max_value=50),
)
def test_max_in_window_matches_a_brute_force_count(times: list[int], period: int) -> None:
    as_floats = [float(t) for t in times]
    assert max_in_window(as_floats, period) == brute_force_max(as_floats, period)


def test_log_reports_max_in_window_over_accepted_calls(sandbox: SandboxServer) -> None:
    sandbox.state.set_rate(4, 1.0)
    for _ in range(6):
        call(sandbox, "GET", "/contact/1")
    time.sleep(1.05)
    call(sandbox, "GET", "/contact/1")
    log = admin(sandbox, "GET", "/log").json()["channels"]["main"]
    assert log["accepted"] == 5
    assert log["max_in_window"] == 4
    assert log["refused"] == {"429": 2}
    assert log["statuses"] == {"403": 5}
    assert len(sandbox.state.accepted_times("main")) == 5


# -- faults -----------------------------------------------------------------------------------


def test_latency_is_added_to_every_answer(sandbox: SandboxServer) -> None:
    sandbox.state.set_faults(latency_ms=150)
    started = time.monotonic()
    call(sandbox, "GET", "/contact/1")
    assert time.monotonic() - started >= 0.15


def test_error_rate_one_answers_5xx_and_counts_the_calls(sandbox: SandboxServer) -> None:
    admin(sandbox, "POST", "/faults", json={"error_rate": 1.0})
    statuses = {call(sandbox, "GET", "/contact/1").status_code for _ in range(12)}
    assert statuses <= {500, 502, 503}
    assert sandbox.state.log()["channels"]["main"]["accepted"] == 12


def test_forced_429s_carry_retry_after_and_take_no_slot(sandbox: SandboxServer) -> None:
    admin(sandbox, "POST", "/faults", json={"rate_limit_rate": 1.0})
    response = call(sandbox, "GET", "/contact/1")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    admin(sandbox, "POST", "/faults", json={"retry_after": False})
    assert "Retry-After" not in call(sandbox, "GET", "/contact/1").headers
    channel = sandbox.state.log()["channels"]["main"]
    assert (channel["accepted"], channel["refused"]) == (0, {"429": 2})


def test_hang_outlasts_a_client_timeout(sandbox: SandboxServer) -> None:
    admin(sandbox, "POST", "/faults", json={"hang_s": 5, "hang_rate": 1.0})
    with pytest.raises(requests.ReadTimeout):
        call(sandbox, "GET", "/contact/1", timeout=(1, 0.3))


def test_faults_are_seeded_and_repeatable() -> None:
    def rolls(seed: int) -> list[bool]:
        state = SandboxState([], seed=seed)
        return [state.chance(0.5) for _ in range(50)]

    assert rolls(7) == rolls(7)
    assert rolls(7) != rolls(8)


@pytest.mark.parametrize(
    "body",
    [{"error_rate": 2}, {"latency_ms": -1}, {"retry_after": "no"}, {"bogus": 1}, {"hang_s": "x"}],
)
def test_bad_fault_settings_are_400(sandbox: SandboxServer, body: dict[str, Any]) -> None:
    response = admin(sandbox, "POST", "/faults", json=body)
    assert response.status_code == 400
    assert admin(sandbox, "GET", "/faults").json()["faults"] == {
        "latency_ms": 0.0,
        "error_rate": 0.0,
        "rate_limit_rate": 0.0,
        "hang_s": 30.0,
        "hang_rate": 0.0,
        "retry_after": True,
    }


# -- admin ------------------------------------------------------------------------------------


def test_admin_index_lists_the_endpoints(sandbox: SandboxServer) -> None:
    index = admin(sandbox, "GET", "/").json()
    assert index["api"] == "/api/v1"
    assert set(index["channels"]) == {"main", "viber", "crm"}
    assert "POST /_sandbox/reset" in index["endpoints"]


def test_replacing_a_token_fixes_a_bad_one(sandbox: SandboxServer) -> None:
    fixed = {"Authorization": "Bearer fixed-token"}
    assert call(sandbox, "GET", "/contact/1", headers=fixed).status_code == 401
    response = admin(sandbox, "PUT", "/tokens", json={"channel": "main", "token": "fixed-token"})
    assert response.status_code == 200
    assert call(sandbox, "GET", "/contact/1", headers=fixed).status_code == 403
    assert call(sandbox, "GET", "/contact/1").status_code == 401
    sandbox.state.reset()
    assert call(sandbox, "GET", "/contact/1").status_code == 403


def test_tokens_endpoint_adds_a_channel(sandbox: SandboxServer) -> None:
    body = {"channel": "shop", "token": "shop-token", "platform": "viber", "custom_fields": ["sku"]}
    assert admin(sandbox, "PUT", "/tokens", json=body).ok
    channel = sandbox.state.channel("shop")
    assert (channel.platform, channel.custom_fields) == ("viber", frozenset({"sku"}))
    headers = {"Authorization": "Bearer shop-token"}
    refused = {"custom_fields": [{"name": "other", "value": "1"}]}
    assert_general(call(sandbox, "POST", "/contact", headers=headers, json=refused))


def test_rate_endpoint_changes_one_channel_or_all(sandbox: SandboxServer) -> None:
    assert admin(sandbox, "POST", "/rate", json={"rate": "2/30", "channel": "crm"}).ok
    assert sandbox.state.channel("crm").rate_limit == (2, 30.0)
    assert sandbox.state.channel("main").rate_limit == (200, 60.0)
    assert admin(sandbox, "POST", "/rate", json={"calls": 3, "period_s": 6}).ok
    assert {sandbox.state.channel(n).rate_limit for n in ("main", "crm")} == {(3, 6.0)}
    assert admin(sandbox, "POST", "/rate", json={"rate": "0/6"}).status_code == 400
    assert admin(sandbox, "POST", "/rate", json={"rate": "1/6", "channel": "x"}).status_code == 404


def test_contacts_and_calls_endpoints_show_state(sandbox: SandboxServer) -> None:
    seeded = admin(
        sandbox,
        "POST",
        "/contacts?channel=main",
        json={"custom_fields": {"isLead": True}, "tags": ["a"]},
    ).json()["data"]
    contact_id = create(sandbox)
    contacts = admin(sandbox, "GET", "/contacts?channel=main").json()["data"]
    assert [c["id"] for c in contacts] == [seeded["id"], contact_id]
    assert contacts[0]["custom_fields"] == {"isLead": True}
    calls = admin(sandbox, "GET", "/calls?channel=main").json()["calls"]
    assert [(c["method"], c["path"], c["status"]) for c in calls] == [
        ("POST", "/api/v1/contact", 200)
    ]
    assert calls[0]["body"] == {"custom_fields": fields(1)}
    assert admin(sandbox, "GET", "/contacts?channel=nope").status_code == 404


def test_reset_clears_contacts_log_and_faults(sandbox: SandboxServer) -> None:
    create(sandbox)
    sandbox.state.set_faults(error_rate=0.5)
    assert admin(sandbox, "POST", "/reset").json() == {"status": "success"}
    assert sandbox.state.contacts("main") == []
    assert sandbox.state.calls("main") == []
    assert sandbox.state.faults == Faults()


# -- configuration and serving ----------------------------------------------------------------


def test_parse_rate_reads_calls_per_seconds() -> None:
    assert parse_rate("20/6") == (20, 6.0)
    assert parse_rate(" 200/60 ") == (200, 60.0)


@pytest.mark.parametrize("text", ["", "20", "20/", "/6", "0/6", "20/0", "a/b", "20/-1", "20/inf"])
def test_parse_rate_refuses_bad_text_clearly(text: str) -> None:
    with pytest.raises(ValueError, match="CALLS/SECONDS"):
        parse_rate(text)


def test_config_from_the_product_yaml(tmp_path: Any) -> None:
    path = tmp_path / "contactsync.yaml"
    path.write_text(
        "channels:\n"
        "  shop:\n"
        "    token: shop-secret\n"
        "    platform: viber\n"
        "    custom_fields: [sku]\n"
        "    rate_limit: {calls: 20, period_s: 6}\n"
        "  support:\n"
        "    token_env: SUPPORT_TOKEN\n",
        encoding="utf-8",
    )
    config = SandboxConfig.from_app_config(load_config(path, env={"SUPPORT_TOKEN": "s-token"}))
    shop, support = config.channels
    assert (shop.name, shop.token, shop.platform) == ("shop", "shop-secret", "viber")
    assert (shop.custom_fields, shop.rate_limit) == (frozenset({"sku"}), (20, 6.0))
    assert (support.token, support.custom_fields, support.rate_limit) == (
        "s-token",
        None,
        (200, 60.0),
    )
    assert "shop-secret" not in repr(shop)


def test_config_from_a_file_with_a_global_rate_and_faults(tmp_path: Any) -> None:
    path = tmp_path / "contactsync.yaml"
    path.write_text("channels:\n  shop:\n    token: shop-secret\n", encoding="utf-8")
    config = SandboxConfig.from_file(
        path, rate_limit=parse_rate("20/6"), faults=Faults(retry_after=False), seed=3
    )
    state = config.build_state()
    assert state.channel("shop").rate_limit == (20, 6.0)
    assert state.faults.retry_after is False


def test_a_global_rate_overrides_every_channel() -> None:
    state = SandboxConfig.demo(rate_limit=(20, 6.0)).build_state()
    assert {state.channel(n).rate_limit for n in ("main", "viber")} == {(20, 6.0)}


def test_config_refuses_shared_tokens() -> None:
    with pytest.raises(ValueError, match="tokens"):
        SandboxConfig(channels=(SandboxChannel("t", "a"), SandboxChannel("t", "b")))


def test_serve_prints_its_url_and_stops_on_sigterm() -> None:
    code = (
        "from worker.contacts_api.sandbox import SandboxConfig, serve\n"
        "serve('127.0.0.1', 0, SandboxConfig.demo(), log_requests=False)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "main (whatsapp), viber (viber)" in line
        assert "sandbox-main-token" not in line
        api_url = line.split(" on ", 1)[1].split()[0]
        response = requests.get(f"{api_url}/contact/1", headers=MAIN, timeout=5)
        assert response.json()["message"] == "no such contact"
        process.terminate()
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_server_stops_and_frees_its_port() -> None:
    with SandboxServer() as server:
        assert requests.get(f"{server.url}/_sandbox/", timeout=5).ok
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/_sandbox/", timeout=1)
