"""The admin API: served only with a token, 401 without the right one, and dead letters
listed, shown, replayed and purged over HTTP with every bad parameter named."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from pydantic import SecretStr
from stack import write_config

from webhooks.app import create_app
from worker.commands import ContactRef, make_command
from worker.config import AdminConfig, Settings, load_config
from worker.contacts_api.sandbox import SandboxServer
from worker.ledger.store import NewEvent
from worker.runtime import Runtime

TOKEN = "admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API = "/admin/api/dead-letters"


def make_runtime(tmp_path: Path, sandbox: SandboxServer, token: str | None) -> Runtime:
    config_path = write_config(tmp_path / "contactsync.yaml", sandbox)
    config = load_config(config_path)
    if token is not None:
        config = config.model_copy(update={"admin": AdminConfig(token=SecretStr(token))})
    return Runtime(Settings(config=config_path, data_dir=tmp_path / "data"), config)


@pytest.fixture
def runtime(tmp_path: Path, sandbox: SandboxServer) -> Iterator[Runtime]:
    built = make_runtime(tmp_path, sandbox, TOKEN)
    yield built
    built.ledger.engine.dispose()


@pytest.fixture
def http(runtime: Runtime) -> FlaskClient:
    return create_app(runtime).test_client()


def record(runtime: Runtime, key: str, *, source: str = "website", channel: str = "main") -> int:
    ref = ContactRef(match_field="email", match_value=f"{key}@example.com")
    command = make_command("upsert", channel, ref, fields={"firstName": key})
    event = NewEvent(key, "contact.upsert", {"id": key}, [command])
    return runtime.ledger.record(source, [event])[0].command_ids[0]


def dead(runtime: Runtime, key: str, *, reason: str = "forbidden", **where: str) -> int:
    command_id = record(runtime, key, **where)
    claimed = runtime.ledger.claim(command_id, lease_s=30)
    assert claimed is not None
    runtime.ledger.kill(claimed, reason=reason, status=403, error=f"{key}: no access")
    return command_id


def state(runtime: Runtime, command_id: int) -> str | None:
    row = runtime.ledger.command(command_id)
    return None if row is None else str(row["state"])


def refused(response: Any, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == error and body["detail"]
    return dict(body)


def test_without_an_admin_token_the_admin_api_is_not_served(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    runtime = make_runtime(tmp_path, sandbox, None)
    http = create_app(runtime).test_client()
    refused(http.get(API, headers=AUTH), 404, "not_found")
    refused(http.post(f"{API}/replay", json={"all": True}, headers=AUTH), 404, "not_found")
    runtime.ledger.engine.dispose()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Bearer "}],
    ids=["none", "wrong", "no-scheme", "empty"],
)
def test_a_missing_or_wrong_token_is_401(http: FlaskClient, headers: dict[str, str]) -> None:
    for response in (
        http.get(API, headers=headers),
        http.post(f"{API}/replay", json={"all": True}, headers=headers),
        http.delete(f"{API}/1", headers=headers),
    ):
        refused(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in response.get_data(as_text=True)


def test_list_pages_newest_first_and_filters(http: FlaskClient, runtime: Runtime) -> None:
    a = dead(runtime, "a")
    b = dead(runtime, "b", channel="viber", reason="invalid")
    c = dead(runtime, "c", source="crm")
    record(runtime, "pending")
    first = http.get(f"{API}?limit=2", headers=AUTH).get_json()
    assert [item["id"] for item in first["items"]] == [c, b]
    assert (first["total"], first["limit"], first["offset"]) == (3, 2, 0)
    rest = http.get(f"{API}?limit=2&offset=2", headers=AUTH).get_json()
    assert [item["id"] for item in rest["items"]] == [a]
    only = http.get(f"{API}?channel=viber&reason=invalid&source=&since=1h", headers=AUTH)
    assert [item["id"] for item in only.get_json()["items"]] == [b]
    assert http.get(f"{API}?source=crm", headers=AUTH).get_json()["total"] == 1
    later = time.time() + 60
    assert http.get(f"{API}?since={later}", headers=AUTH).get_json()["total"] == 0


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("since=yesterday", "since"),
        ("chanel=main", "chanel"),
        ("channel=" + "x" * 101, "channel"),
    ],
)
def test_bad_query_parameters_are_400_naming_them(
    http: FlaskClient, query: str, param: str
) -> None:
    body = refused(http.get(f"{API}?{query}", headers=AUTH), 400, "invalid_parameter")
    assert body["field"] == param and param in body["detail"]


def test_show_has_every_field_and_404_for_what_is_not_dead(
    http: FlaskClient, runtime: Runtime
) -> None:
    a = dead(runtime, "a")
    item = http.get(f"{API}/{a}", headers=AUTH).get_json()
    assert (item["id"], item["source"], item["event_key"], item["reason"]) == (
        a,
        "website",
        "a",
        "forbidden",
    )
    assert item["last_status"] == 403 and item["last_error"] == "a: no access"
    assert item["payload"] == {"fields": {"firstName": "a"}, "tags": []}
    assert item["finished_at"].endswith("Z") and isinstance(item["finished_at_epoch"], float)
    refused(http.get(f"{API}/{record(runtime, 'pending')}", headers=AUTH), 404, "not_found")
    refused(http.get(f"{API}/424242", headers=AUTH), 404, "not_found")


def test_replay_by_ids_by_filter_and_all(http: FlaskClient, runtime: Runtime) -> None:
    a, b, c, d = (dead(runtime, key, reason=r) for key, r in zip("abcd", "xyyz", strict=True))
    pending = record(runtime, "pending")
    answer = http.post(f"{API}/replay", json={"ids": [a, pending]}, headers=AUTH).get_json()
    assert answer == {"replayed": 1, "ids": [a], "published": 1}
    answer = http.post(f"{API}/replay", json={"filter": {"reason": "y"}}, headers=AUTH)
    assert answer.get_json()["ids"] == [b, c]
    assert http.post(f"{API}/replay", json={"all": True}, headers=AUTH).get_json()["ids"] == [d]
    assert {state(runtime, i) for i in (a, b, c, d)} == {"pending"}
    assert runtime.ledger.command(a)["attempts"] == 0  # type: ignore[index]


def test_replay_one_and_404_when_it_is_not_dead(http: FlaskClient, runtime: Runtime) -> None:
    a = dead(runtime, "a")
    response = http.post(f"{API}/{a}/replay", headers=AUTH)
    assert response.get_json() == {"replayed": 1, "ids": [a], "published": 1}
    assert state(runtime, a) == "pending"
    refused(http.post(f"{API}/{a}/replay", headers=AUTH), 404, "not_found")


def test_purge_by_body_and_delete_one(http: FlaskClient, runtime: Runtime) -> None:
    a, b, c = (dead(runtime, key, reason=r) for key, r in zip("abc", "xyy", strict=True))
    pending = record(runtime, "pending")
    answer = http.post(f"{API}/purge", json={"filter": {"reason": "y"}}, headers=AUTH)
    assert answer.get_json() == {"purged": 2}
    assert (state(runtime, b), state(runtime, c), state(runtime, a)) == (None, None, "dead")
    assert http.delete(f"{API}/{a}", headers=AUTH).get_json() == {"purged": 1}
    refused(http.delete(f"{API}/{a}", headers=AUTH), 404, "not_found")
    refused(http.delete(f"{API}/{pending}", headers=AUTH), 404, "not_found")
    assert state(runtime, pending) == "pending"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ([1, 2], "body"),
        ({"ids": []}, "ids"),
        ({"ids": ["7"]}, "ids"),
        ({"ids": [True]}, "ids"),
        ({"all": False}, "all"),
        ({"filter": {}}, "filter"),
        ({"filter": {"since": "soon"}}, "filter.since"),
        ({"filter": {"state": "dead"}}, "filter.state"),
        ({"ids": [1], "all": True}, "body"),
        ({"everything": True}, "everything"),
    ],
)
@pytest.mark.parametrize("action", ["replay", "purge"])
def test_bad_selection_bodies_are_400_naming_the_field(
    http: FlaskClient, runtime: Runtime, action: str, body: Any, field: str
) -> None:
    a = dead(runtime, "a")
    response = http.post(f"{API}/{action}", json=body, headers=AUTH)
    assert refused(response, 400, "invalid_parameter")["field"] == field
    assert state(runtime, a) == "dead"


def test_a_body_that_is_not_json_is_400(http: FlaskClient) -> None:
    response = http.post(f"{API}/replay", data="ids=1", headers=AUTH)
    refused(response, 400, "malformed_body")
