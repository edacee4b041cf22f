"""The dashboard at /admin/: served only with an admin token, a login form that sets a
signed HttpOnly SameSite=Strict session cookie, CSRF tokens on every form, and a page that
shows channels (with an SVG chart), workers, recent events and dead letters to replay or
purge."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from itsdangerous import URLSafeSerializer
from pydantic import SecretStr
from source_kit import SourceKit
from stack import SECRET, signed_headers, write_config

from webhooks.app import create_app
from webhooks.dashboard import COOKIE, chart, duration, session_key
from worker.activity import Heartbeat, record_calls
from worker.commands import ContactRef, make_command
from worker.config import AdminConfig, Settings, load_config
from worker.contacts_api.sandbox import SandboxServer
from worker.ledger.store import NewEvent
from worker.runtime import Runtime

TOKEN = "admin-token-for-dashboard-tests"
PAGE = "/admin/"
LOGIN = "/admin/login"


# -- helpers ---------------------------------------------------------------------------------


class Element:
    """One start tag of a page, with its attributes and the text directly inside it."""

    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag = tag
        self.attrs = attrs
        self.text = ""


class Page(HTMLParser):
    """Every element of an HTML page, in document order."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.elements.append(element)
        if tag not in ("input", "meta", "br", "line"):
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1].text += data

    def find(self, tag: str, **attrs: str) -> list[Element]:
        """Elements with this tag whose attributes contain these (``class_`` for class;
        a class matches one of the element's classes)."""
        found = []
        for element in self.elements:
            if element.tag != tag:
                continue
            ok = True
            for name, value in attrs.items():
                name = name.rstrip("_").replace("_", "-")
                have = element.attrs.get(name)
                if name == "class":
                    ok = ok and have is not None and value in have.split()
                else:
                    ok = ok and have == value
            if ok:
                found.append(element)
        return found


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


def log_in(http: FlaskClient, token: str = TOKEN) -> Any:
    return http.post(LOGIN, data={"token": token})


def page(http: FlaskClient, url: str = PAGE) -> tuple[str, Page]:
    response = http.get(url)
    assert response.status_code == 200, response.status_code
    html = response.get_data(as_text=True)
    return html, Page(html)


def csrf_of(http: FlaskClient) -> str:
    fields = page(http)[1].find("input", name="csrf")
    assert fields and len({field.attrs["value"] for field in fields}) == 1
    return fields[0].attrs["value"]


def record(runtime: Runtime, key: str, *, channel: str = "main") -> int:
    ref = ContactRef(match_field="email", match_value=f"{key}@example.com")
    command = make_command("upsert", channel, ref, fields={"firstName": key})
    event = NewEvent(key, "contact.upsert", {"id": key}, [command])
    return runtime.ledger.record("website", [event])[0].command_ids[0]


def dead(runtime: Runtime, key: str, *, error: str | None = None) -> int:
    command_id = record(runtime, key)
    claimed = runtime.ledger.claim(command_id, lease_s=30)
    assert claimed is not None
    runtime.ledger.kill(claimed, reason="forbidden", status=403, error=error or f"{key}: no")
    return command_id


def state(runtime: Runtime, command_id: int) -> str | None:
    row = runtime.ledger.command(command_id)
    return None if row is None else str(row["state"])


def goes_to_login(response: Any) -> None:
    assert response.status_code == 303, response.status_code
    assert response.headers["Location"].endswith(LOGIN)


def forged_cookie(data: dict[str, Any], token: str = TOKEN) -> str:
    return URLSafeSerializer(session_key(token), salt="dashboard-session").dumps(data)


# -- serving and logging in -----------------------------------------------------------------


def test_without_an_admin_token_the_dashboard_is_not_served(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    runtime = make_runtime(tmp_path, sandbox, None)
    http = create_app(runtime).test_client()
    for response in (
        http.get(PAGE),
        http.get(LOGIN),
        http.post(LOGIN, data={"token": TOKEN}),
        http.post("/admin/dead-letters/1/replay", data={"csrf": "x" * 43}),
    ):
        assert response.status_code == 404
    runtime.ledger.engine.dispose()


def test_without_a_session_pages_go_to_login_and_forms_change_nothing(
    http: FlaskClient, runtime: Runtime
) -> None:
    letter = dead(runtime, "a")
    goes_to_login(http.get(PAGE))
    goes_to_login(http.post(f"/admin/dead-letters/{letter}/replay", data={"csrf": "x" * 43}))
    goes_to_login(http.post(f"/admin/dead-letters/{letter}/purge", data={"csrf": "x" * 43}))
    assert state(runtime, letter) == "dead"
    response = http.get(LOGIN)
    assert response.status_code == 200
    assert Page(response.get_data(as_text=True)).find("input", name="token", type="password")


@pytest.mark.parametrize(
    "cookie",
    [
        "garbage",
        forged_cookie({"csrf": "c" * 43, "iat": time.time()}, token="some-other-token"),
        forged_cookie({"csrf": "c" * 43, "iat": time.time() - 13 * 3600}),  # expired
        forged_cookie({"csrf": "short", "iat": time.time()}),
        forged_cookie({"iat": time.time()}),
    ],
    ids=["garbage", "other-key", "expired", "short-csrf", "no-csrf"],
)
def test_a_forged_or_expired_cookie_is_no_session(http: FlaskClient, cookie: str) -> None:
    http.set_cookie(COOKIE, cookie, path="/admin")
    goes_to_login(http.get(PAGE))


@pytest.mark.parametrize("token", ["wrong", "", TOKEN + "x", TOKEN[:-1]])
def test_a_wrong_token_is_refused(http: FlaskClient, token: str) -> None:
    response = log_in(http, token)
    assert response.status_code == 401
    assert "Set-Cookie" not in response.headers
    body = response.get_data(as_text=True)
    assert "not the admin token" in body and TOKEN not in body
    goes_to_login(http.get(PAGE))


def test_the_right_token_logs_in_with_a_strict_httponly_cookie(http: FlaskClient) -> None:
    response = log_in(http)
    assert response.status_code == 303 and response.headers["Location"].endswith(PAGE)
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age="):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the HTTPS test
    assert TOKEN not in cookie
    html, _ = page(http)
    assert TOKEN not in html
    response = http.get(PAGE)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "script-src" not in response.headers["Content-Security-Policy"]  # none at all
    assert http.get(LOGIN).headers["Location"].endswith(PAGE)  # already logged in


def test_over_https_the_cookie_is_secure(runtime: Runtime) -> None:
    http = create_app(runtime).test_client()
    response = http.post(LOGIN, data={"token": TOKEN}, base_url="https://localhost")
    assert "Secure" in response.headers["Set-Cookie"]


def test_log_out_needs_the_csrf_token_and_ends_the_session(http: FlaskClient) -> None:
    log_in(http)
    csrf = csrf_of(http)
    assert http.post("/admin/logout").status_code == 403
    page(http)  # still logged in
    goes_to_login(http.post("/admin/logout", data={"csrf": csrf}))
    goes_to_login(http.get(PAGE))


def test_changing_the_admin_token_ends_every_session(
    tmp_path: Path, sandbox: SandboxServer, runtime: Runtime
) -> None:
    http = create_app(runtime).test_client()
    log_in(http)
    page(http)
    runtime.config = runtime.config.model_copy(
        update={"admin": AdminConfig(token=SecretStr("a-new-admin-token"))}
    )
    rotated = create_app(runtime).test_client()
    cookie = http.get_cookie(COOKIE, path="/admin")
    assert cookie is not None
    rotated.set_cookie(COOKIE, cookie.value, path="/admin")
    goes_to_login(rotated.get(PAGE))


# -- what the page shows ---------------------------------------------------------------------


def test_the_page_shows_channels_with_a_chart_workers_events_and_dead_letters(
    http: FlaskClient, runtime: Runtime, sandbox: SandboxServer
) -> None:
    engine = runtime.ledger.engine
    now = time.time()
    for minutes_ago, calls in ((0, 3), (5, 6), (10, 12)):
        record_calls(engine, "main", calls=calls, now=now - minutes_ago * 60)
    Heartbeat(engine).beat()
    waiting = record(runtime, "waiting")
    letter = dead(runtime, "b", error="<script>alert('x')</script> & more")
    runtime.limiter.flag_bad_token("main", "token <revoked>")
    runtime.limiter.pause("main", 150)
    log_in(http)
    html, parsed = page(http)

    rows = parsed.find("tr", class_="channel")
    assert [row.attrs["data-channel"] for row in rows] == ["main"]
    assert "200/min" in html
    (svg,) = parsed.find("svg", class_="chart")
    assert svg.attrs["data-channel"] == "main"
    bars = {int(bar.attrs["data-calls"]): bar for bar in parsed.find("rect", class_="bar")}
    assert sorted(bars) == [3, 6, 12]
    heights = {calls: float(bar.attrs["height"]) for calls, bar in bars.items()}
    assert heights[12] == float(svg.attrs["height"])  # the busiest minute fills the chart
    assert heights[6] == heights[12] / 2 and heights[3] == heights[12] / 4
    assert float(bars[12].attrs["x"]) < float(bars[6].attrs["x"]) < float(bars[3].attrs["x"])
    assert "bad token" in html and "token &lt;revoked&gt;" in html
    assert [flag.text for flag in parsed.find("span", class_="flag")] == [
        "bad token",
        "paused 2 min",
    ]

    (worker,) = parsed.find("tr", class_="worker")
    assert worker.attrs["class"] == "worker" and parsed.find("td", class_="alive")

    events = {row.attrs["data-id"] for row in parsed.find("tr", class_="event")}
    assert len(events) == 2
    assert parsed.find("td", class_="outcome-in-progress")
    assert parsed.find("td", class_="outcome-dead")

    (row,) = parsed.find("tr", class_="dead-letter")
    assert row.attrs["data-id"] == str(letter)
    assert "forbidden" in html and ">403<" in html
    assert "<script>" not in html  # escaped, never markup
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in html
    assert parsed.find("form", action=f"/admin/dead-letters/{letter}/replay")
    assert parsed.find("form", action=f"/admin/dead-letters/{letter}/purge")
    assert parsed.find("meta", http_equiv="refresh", content="10")
    for secret in (TOKEN, sandbox.token("main"), SECRET):
        assert secret not in html
    assert state(runtime, waiting) == "pending"


def test_an_empty_ledger_still_renders(http: FlaskClient) -> None:
    log_in(http)
    html, parsed = page(http)
    assert "No dead letters." in html and "No events yet." in html
    assert "No worker has sent a heartbeat" in html
    assert len(parsed.find("svg", class_="chart")) == 1
    assert not parsed.find("rect", class_="bar")


def test_the_chart_scales_to_the_peak_and_draws_the_limit_it_reaches() -> None:
    series = [0] * 60
    series[0], series[30], series[59] = 200, 100, 1
    drawn = chart(series, 200.0)
    assert [bar.minutes_ago for bar in drawn.bars] == [59, 29, 0]
    assert [bar.height for bar in drawn.bars] == [40.0, 20.0, 1.0]  # at least 1 px
    assert drawn.limit_y == 0.0 and drawn.peak == 200 and drawn.total == 301
    assert chart(series, 400.0).limit_y is None
    assert chart([0] * 60, 200.0).bars == []
    assert [duration(s) for s in (5, 240, 7500, 7200, 90000)] == [
        "5 s",
        "4 min",
        "2 h 5 min",
        "2 h",
        "1 d 1 h",
    ]


def test_the_newest_50_dead_letters_of_more(http: FlaskClient, runtime: Runtime) -> None:
    letters = [dead(runtime, f"k{n}") for n in range(53)]
    log_in(http)
    html, parsed = page(http)
    shown = [int(row.attrs["data-id"]) for row in parsed.find("tr", class_="dead-letter")]
    assert shown == letters[::-1][:50]
    assert "newest 50 of 53" in html


def test_pausing_the_refresh_keeps_it_paused_after_an_action(
    http: FlaskClient, runtime: Runtime
) -> None:
    letter = dead(runtime, "a")
    log_in(http)
    csrf = csrf_of(http)
    parsed = page(http, f"{PAGE}?refresh=0")[1]
    assert not parsed.find("meta", http_equiv="refresh")
    assert len(parsed.find("input", name="refresh", value="0")) == 2  # replay, purge
    response = http.post(f"/admin/dead-letters/{letter}/purge", data={"csrf": csrf, "refresh": "0"})
    assert response.status_code == 303 and response.headers["Location"].endswith("?refresh=0")


# -- replay and purge ------------------------------------------------------------------------


def test_replay_through_the_form_applies_the_command(source_kit: Any) -> None:
    kit: SourceKit = source_kit(
        {"website": {"kind": "generic", "secret": SECRET, "channel": "main"}}
    )
    kit.runtime.config = kit.runtime.config.model_copy(
        update={"admin": AdminConfig(token=SecretStr(TOKEN))}
    )
    http = create_app(kit.runtime).test_client()
    event = {
        "id": "evt-dash-1",
        "type": "contact.upsert",
        "channel": "main",
        "match": {"phone": "+15550001111"},
        "fields": {"firstName": "Dana"},
        "tags": ["vip"],
    }
    body = json.dumps(event).encode()
    assert kit.post("website", body, signed_headers(body)).status_code == 202
    real = kit.sandbox.token("main")
    kit.sandbox.state.set_channel("main", "revoked-token")  # the API now refuses us: 401
    assert kit.apply_all() == ["dead"]
    (command,) = kit.recorded()
    assert (command["state"], command["reason"]) == ("dead", "unauthorized")

    log_in(http)
    html, parsed = page(http)
    assert "unauthorized" in html and "bad token" in html
    assert parsed.find("tr", class_="dead-letter", data_id=str(command["id"]))
    csrf = csrf_of(http)

    kit.sandbox.state.set_channel("main", real)  # the operator fixed the token
    response = http.post(f"/admin/dead-letters/{command['id']}/replay", data={"csrf": csrf})
    assert response.status_code == 303 and response.headers["Location"].endswith(PAGE)
    assert kit.recorded()[0]["state"] == "pending"
    html, parsed = page(http)
    (flash,) = parsed.find("p", id="flash")
    assert flash.attrs["class"] == "flash ok"
    assert f"Replayed dead letter {command['id']}" in flash.text
    assert not parsed.find("tr", class_="dead-letter")
    assert "Replayed dead letter" not in page(http)[0]  # a flash shows once

    assert kit.apply_all() == ["done"]
    contact = kit.contact("phone", "+15550001111")
    assert (contact["custom_fields"]["firstName"], contact["tags"]) == ("Dana", ["vip"])
    assert "bad token" not in page(http)[0]


def test_purge_through_the_form_and_acting_twice_warns(http: FlaskClient, runtime: Runtime) -> None:
    letter = dead(runtime, "a")
    log_in(http)
    csrf = csrf_of(http)
    response = http.post(f"/admin/dead-letters/{letter}/purge", data={"csrf": csrf})
    assert response.status_code == 303
    assert state(runtime, letter) is None
    assert f"Purged dead letter {letter}." in page(http)[0]
    for action in ("purge", "replay"):
        http.post(f"/admin/dead-letters/{letter}/{action}", data={"csrf": csrf})
        (flash,) = page(http)[1].find("p", id="flash")
        assert flash.attrs["class"] == "flash warn" and "is gone" in flash.text
    pending = record(runtime, "pending")
    http.post(f"/admin/dead-letters/{pending}/purge", data={"csrf": csrf})
    assert state(runtime, pending) == "pending"  # only dead letters are purged


@pytest.mark.parametrize("action", ["replay", "purge"])
def test_a_form_without_or_with_a_bad_csrf_token_is_refused(
    http: FlaskClient, runtime: Runtime, action: str
) -> None:
    letter = dead(runtime, "a")
    other = create_app(runtime).test_client()
    log_in(other)
    someone_elses = csrf_of(other)
    log_in(http)
    mine = csrf_of(http)
    assert someone_elses != mine
    for data in ({}, {"csrf": ""}, {"csrf": "forged"}, {"csrf": someone_elses}):
        response = http.post(f"/admin/dead-letters/{letter}/{action}", data=data)
        assert response.status_code == 403
        assert "stale or did not come from the dashboard" in response.get_data(as_text=True)
        assert state(runtime, letter) == "dead"
    response = http.post(f"/admin/dead-letters/{letter}/{action}", data={"csrf": mine})
    assert response.status_code == 303
    assert state(runtime, letter) == ("pending" if action == "replay" else None)
