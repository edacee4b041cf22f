"""The dashboard in a real headless Chromium over real HTTP: log in through the form, see the
chart drawn, replay and purge dead letters with their buttons, and the replayed command
applied by the worker's code against the sandbox.

Needs Debian's Chromium at /usr/bin/chromium (``apt-get install -y chromium``) and the
``playwright`` package (its driver ships in the wheel; never ``playwright install``).
Without them these tests skip locally and fail when ``CI`` is set.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from stack import write_config
from werkzeug.serving import WSGIRequestHandler, make_server

from webhooks.app import create_app
from worker.activity import Heartbeat, record_calls
from worker.commands import ContactRef, make_command
from worker.config import AdminConfig, Settings, load_config
from worker.contacts_api.sandbox import SandboxServer
from worker.ledger.store import NewEvent
from worker.runtime import Runtime
from worker.tasks import run_command

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "admin-token-for-the-browser-test"


def _unavailable(message: str) -> None:
    """Skip locally, fail in CI (as for the real services)."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is missing: apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        _unavailable(f"playwright is not installed: {error}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def runtime(tmp_path: Path, sandbox: SandboxServer) -> Iterator[Runtime]:
    config_path = write_config(tmp_path / "contactsync.yaml", sandbox)
    config = load_config(config_path).model_copy(
        update={"admin": AdminConfig(token=SecretStr(TOKEN))}
    )
    built = Runtime(Settings(config=config_path, data_dir=tmp_path / "data"), config)
    yield built
    built.ledger.engine.dispose()


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@pytest.fixture
def base_url(runtime: Runtime) -> Iterator[str]:
    """The receiver served over HTTP on an ephemeral port, in a thread."""
    server = make_server("127.0.0.1", 0, create_app(runtime), threaded=True, request_handler=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="dashboard-http", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page; fails the test on any console error
    (a Content-Security-Policy violation shows up there)."""
    context = browser.new_context()
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    errors: list[str] = []
    opened.on("console", lambda message: message.type == "error" and errors.append(message.text))
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    # The refused login answers 401 on purpose; Chromium logs every 4xx document.
    refused = "the server responded with a status of 401"
    assert [error for error in errors if refused not in error] == []


def dead(runtime: Runtime, key: str) -> int:
    """A dead letter: an upsert of ``key@example.com`` that died with a 503."""
    ref = ContactRef(match_field="email", match_value=f"{key}@example.com")
    command = make_command("upsert", "main", ref, fields={"firstName": key.title()})
    event = NewEvent(key, "contact.upsert", {"id": key}, [command])
    command_id = runtime.ledger.record("website", [event])[0].command_ids[0]
    claimed = runtime.ledger.claim(command_id, lease_s=30)
    assert claimed is not None
    runtime.ledger.kill(claimed, reason="server_error", status=503, error="<b>down</b> for now")
    return command_id


def log_in(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/admin/")
    assert page.url == f"{base_url}/admin/login"
    page.fill("#token", "not-the-token")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").inner_text() == "That is not the admin token."
    page.fill("#token", TOKEN)
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.url == f"{base_url}/admin/"


def test_log_in_and_the_chart_is_drawn(page: Any, base_url: str, runtime: Runtime) -> None:
    now = time.time()
    # The oldest at 58 minutes, not 59: the page is drawn seconds later, and a minute that
    # begins meanwhile would push a bar recorded 59 minutes ago out of the hour shown.
    for minutes_ago, calls in ((1, 40), (20, 20), (45, 10), (58, 5)):
        record_calls(runtime.ledger.engine, "main", calls=calls, now=now - minutes_ago * 60)
    Heartbeat(runtime.ledger.engine).beat()
    log_in(page, base_url)

    assert page.locator("meta[http-equiv=refresh]").get_attribute("content") == "10"
    cookies = page.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
        ("contactsync_dashboard", True, "Strict")
    ]
    assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it
    assert TOKEN not in page.content()

    page.goto(f"{base_url}/admin/?refresh=0")  # no reload while we measure
    chart = page.locator("svg.chart[data-channel=main]")
    box = chart.bounding_box()
    assert box is not None and (box["width"], box["height"]) == (300, 40)
    bars = chart.locator("rect.bar")
    assert bars.count() == 4
    drawn = {}
    for index in range(4):
        bar = bars.nth(index)
        rendered = bar.bounding_box()
        assert rendered is not None
        drawn[int(bar.get_attribute("data-calls"))] = rendered
    assert sorted(drawn) == [5, 10, 20, 40]
    # Heights as rendered on screen: proportional to the calls, the busiest fills the chart.
    assert [round(drawn[calls]["height"], 1) for calls in (40, 20, 10, 5)] == [40, 20, 10, 5]
    # Older minutes further left; every bar stands on the chart's bottom edge.
    assert drawn[5]["x"] < drawn[10]["x"] < drawn[20]["x"] < drawn[40]["x"]
    for rendered in drawn.values():
        assert abs(rendered["y"] + rendered["height"] - (box["y"] + box["height"])) < 0.5
    fill = bars.first.evaluate("element => getComputedStyle(element).fill")
    assert fill == "rgb(9, 105, 218)"  # the stylesheet applied under the CSP
    assert page.locator("tr.channel[data-channel=main] td").nth(2).inner_text() == "200/min"
    assert page.locator("tr.worker td.alive").count() == 1


def test_replay_and_purge_with_the_buttons(
    page: Any, base_url: str, runtime: Runtime, sandbox: SandboxServer
) -> None:
    replayed = dead(runtime, "ann")
    purged = dead(runtime, "bob")
    log_in(page, base_url)
    page.goto(f"{base_url}/admin/?refresh=0")
    rows = page.locator("tr.dead-letter")
    assert [rows.nth(i).get_attribute("data-id") for i in range(2)] == [str(purged), str(replayed)]
    row = page.locator(f"tr.dead-letter[data-id='{replayed}']")
    assert "<b>down</b> for now" in row.locator("td.message").inner_text()  # text, not markup

    with page.expect_navigation():
        row.locator("button.replay").click()
    assert page.url == f"{base_url}/admin/?refresh=0"
    assert page.locator("#flash").inner_text() == (
        f"Replayed dead letter {replayed}: it is pending again."
    )
    assert page.locator(f"tr.dead-letter[data-id='{replayed}']").count() == 0
    assert runtime.ledger.command(replayed)["state"] == "pending"  # type: ignore[index]

    assert run_command(replayed, runtime) == "done"  # the worker's code, against the sandbox
    (contact,) = sandbox.state.contacts("main")
    assert contact["custom_fields"]["email"] == "ann@example.com"
    assert contact["custom_fields"]["firstName"] == "Ann"

    other = page.locator(f"tr.dead-letter[data-id='{purged}']")
    purge = other.locator("button.purge")
    assert not purge.is_visible()  # behind "Purge…": two clicks, no script
    other.locator("details.purge summary").click()
    with page.expect_navigation():
        purge.click()
    assert page.locator("#flash").inner_text() == f"Purged dead letter {purged}."
    assert runtime.ledger.command(purged) is None
    assert page.locator("tr.dead-letter").count() == 0
    assert page.locator("td.outcome-done").count() == 1  # ann's event, now applied

    with page.expect_navigation():
        page.click("header button[type=submit]")  # log out
    assert page.url == f"{base_url}/admin/login"
    page.goto(f"{base_url}/admin/")
    assert page.url == f"{base_url}/admin/login"
