"""``GET /metrics`` and the worker's metrics port (webhooks/metrics.py, worker/metrics.py).

This test process counts in prometheus_client's single-process mode (nothing set
``PROMETHEUS_MULTIPROC_DIR`` before it imported it), and its counters live for the whole
session: tests compare scrapes before and after. Multiprocess mode is tested in child
processes, each with a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from stack import ROOT, Stack, free_port, signed_headers, wait_for, write_config

from webhooks.app import create_app
from worker.config import Settings, load_config
from worker.contacts_api.sandbox import SandboxServer
from worker.runtime import Runtime
from worker.tasks import run_command

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when absent (a labelled counter not yet used)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def runtime(tmp_path: Path, sandbox: SandboxServer) -> Iterator[Runtime]:
    config_path = write_config(tmp_path / "contactsync.yaml", sandbox)
    built = Runtime(
        Settings(config=config_path, data_dir=tmp_path / "data"), load_config(config_path)
    )
    yield built
    built.ledger.engine.dispose()


@pytest.fixture
def http(runtime: Runtime) -> FlaskClient:
    return create_app(runtime).test_client()


def scrape(http: FlaskClient) -> Samples:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    return parse(response.get_data(as_text=True))


def post(http: FlaskClient, event: dict[str, Any], source: str = "website") -> Any:
    body = json.dumps(event).encode()
    return http.post(f"/webhooks/{source}", data=body, headers=signed_headers(body))


def event(key: str, email: str = "ann@example.com") -> dict[str, Any]:
    return {
        "id": key,
        "type": "contact.upsert",
        "match": {"email": email},
        "fields": {"firstName": "Ann"},
    }


def test_events_are_counted_by_source_outcome_and_status(http: FlaskClient) -> None:
    before = scrape(http)
    assert post(http, event("evt-m1")).status_code == 202
    assert post(http, event("evt-m1")).status_code == 200
    body = json.dumps(event("evt-m2")).encode()
    bad = {**signed_headers(body), "webhook-signature": "v1,bm90IGEgc2lnbmF0dXJl"}
    assert http.post("/webhooks/website", data=body, headers=bad).status_code == 401
    assert post(http, event("evt-m3"), source="no-such-source").status_code == 404
    assert http.get("/healthz").status_code == 200  # not a delivery: not counted
    after = scrape(http)

    def moved(outcome: str, status: str, source: str = "website") -> float:
        name = "contactsync_events_received_total"
        labels = {"source": source, "outcome": outcome, "status": status}
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("accepted", "202") == 1
    assert moved("duplicate", "200") == 1
    assert moved("refused", "401") == 1
    assert moved("refused", "404", source="unknown") == 1  # a URL does not mint a series
    assert not any(dict(labels).get("source") == "no-such-source" for _name, labels in after), (
        "an unknown source name became a label"
    )


def test_an_applied_command_moves_the_api_and_ledger_series(
    http: FlaskClient, runtime: Runtime
) -> None:
    before = scrape(http)
    answer = post(http, event("evt-a1", "applied@example.com")).get_json()
    (command_id,) = answer["commands"]
    waiting = scrape(http)
    assert value(waiting, "contactsync_ledger_up") == 1
    assert value(waiting, "contactsync_commands", channel="main", state="pending") == 1
    assert value(waiting, "contactsync_backlog", channel="main") == 1
    assert value(waiting, "contactsync_backlog_oldest_age_seconds", channel="main") >= 0
    assert value(waiting, "contactsync_channel_limit_calls", channel="main") == 200
    assert value(waiting, "contactsync_channel_limit_period_seconds", channel="main") == 60
    assert value(waiting, "contactsync_outbox") == value(before, "contactsync_outbox") + 1
    assert runtime.ledger.relay(lambda due: len(list(due))) >= 1  # as a worker's relay would
    assert value(scrape(http), "contactsync_outbox") == 0

    assert run_command(command_id, runtime) == "done"
    after = scrape(http)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # A new contact: a lookup that finds nothing, then a create; both answered 200.
    assert moved("contactsync_api_calls_total", channel="main", status="200") == 2
    assert moved("contactsync_commands_done_total", channel="main") == 1
    assert moved("contactsync_command_passes_total", channel="main", outcome="done") == 1
    assert moved("contactsync_limiter_wait_seconds_count", channel="main") == 1
    assert value(after, "contactsync_commands", channel="main", state="pending") == 0
    assert value(after, "contactsync_backlog", channel="main") == 0
    assert value(after, "contactsync_channel_calls_last_minute", channel="main") == 2


def test_429_retry_and_dead_letter_are_counted(
    http: FlaskClient, runtime: Runtime, sandbox: SandboxServer
) -> None:
    before = scrape(http)
    sandbox.state.set_faults(rate_limit_rate=1.0)
    (first,) = post(http, event("evt-r1", "limited@example.com")).get_json()["commands"]
    assert run_command(first, runtime) == "scheduled"
    sandbox.state.set_faults(rate_limit_rate=0.0)
    sandbox.state.set_channel("main", "a-token-we-do-not-have")  # ours is now refused: 401
    (second,) = post(http, event("evt-r2", "refused@example.com")).get_json()["commands"]
    assert run_command(second, runtime) == "dead"
    after = scrape(http)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("contactsync_api_calls_total", channel="main", status="429") == 1
    assert moved("contactsync_api_rate_limited_total", channel="main") == 1
    assert moved("contactsync_retries_total", channel="main", reason="rate_limited") == 1
    assert moved("contactsync_api_calls_total", channel="main", status="401") == 1
    assert moved("contactsync_dead_letters_total", channel="main", reason="unauthorized") == 1
    assert value(after, "contactsync_commands", channel="main", state="dead") == 1
    assert value(after, "contactsync_channel_bad_token", channel="main") == 1


def test_a_scrape_survives_a_ledger_that_does_not_answer(
    http: FlaskClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise OSError("ledger down")

    monkeypatch.setattr("webhooks.metrics.channels_view", broken)
    samples = scrape(http)
    assert value(samples, "contactsync_ledger_up") == 0
    assert not any(name == "contactsync_backlog" for name, _ in samples)


# -- several processes ------------------------------------------------------------------

WRITER = """
import sys
from worker import metrics
from webhooks.metrics import events_received
for _ in range(int(sys.argv[1])):
    metrics.api_call("main", "200")
    events_received().labels("website", "accepted", "202").inc()
metrics.observe_pass("main", "done", 1, float(sys.argv[1]))
"""

SCRAPER = """
import sys
from webhooks.app import create_app
from worker.config import Settings, load_config
from worker.runtime import Runtime
config = load_config(sys.argv[1])
runtime = Runtime(Settings(config=sys.argv[1], data_dir=sys.argv[2]), config)
sys.stdout.write(create_app(runtime).test_client().get("/metrics").get_data(as_text=True))
"""


def python(script: str, *args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def multiproc_env(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "metrics"
    folder.mkdir()
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder), "PYTHONPATH": str(ROOT)}


def test_one_scrape_adds_up_every_process_in_the_folder(
    tmp_path: Path, sandbox: SandboxServer, multiproc_env: dict[str, str]
) -> None:
    python(WRITER, "3", env=multiproc_env)
    python(WRITER, "4", env=multiproc_env)
    files = sorted(path.name for path in Path(multiproc_env["PROMETHEUS_MULTIPROC_DIR"]).iterdir())
    assert len({name.rsplit("_", 1)[1] for name in files}) == 2, files  # two pids wrote

    config = write_config(tmp_path / "contactsync.yaml", sandbox)
    samples = parse(python(SCRAPER, str(config), str(tmp_path / "data"), env=multiproc_env))
    # Both writers have exited; their counts stay, added up.
    assert value(samples, "contactsync_api_calls_total", channel="main", status="200") == 7
    assert (
        value(
            samples,
            "contactsync_events_received_total",
            source="website",
            outcome="accepted",
            status="202",
        )
        == 7
    )
    assert value(samples, "contactsync_limiter_wait_seconds_count", channel="main") == 2
    assert value(samples, "contactsync_limiter_wait_seconds_sum", channel="main") == 7
    assert value(samples, "contactsync_ledger_up") == 1  # and the ledger's gauges with them


SERVER = """
import time
from celery.signals import worker_ready
from worker import metrics
worker_ready.send(sender=None)
time.sleep(60)
"""


def test_a_worker_serves_its_folder_on_its_metrics_port(multiproc_env: dict[str, str]) -> None:
    python(WRITER, "5", env=multiproc_env)
    port = free_port()
    env = {**multiproc_env, "CONTACTSYNC_METRICS_PORT": str(port)}
    server = subprocess.Popen([sys.executable, "-c", SERVER], env=env, cwd=ROOT)
    try:

        def scraped() -> str | None:
            try:
                return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
            except requests.RequestException:
                return None

        samples = parse(wait_for(scraped, timeout=30))
    finally:
        server.terminate()
        server.wait(10)
    assert value(samples, "contactsync_api_calls_total", channel="main", status="200") == 5
    assert not any(name.startswith("contactsync_backlog") for name, _ in samples)


def test_a_real_worker_process_counts_into_the_data_folder_and_serves_it(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    stack = Stack(tmp_path, sandbox, broker_url=None, database_url=None)
    port = free_port()
    stack.env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the CLI picks <data dir>/metrics
    stack.env["CONTACTSYNC_METRICS_PORT"] = str(port)
    try:
        stack.start_worker(concurrency=1)
        assert stack.post(event("evt-w1", "worker@example.com")).status_code == 202
        wait_for(stack.settled, timeout=60)

        def counted() -> Samples | None:
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
            except requests.RequestException:
                return None
            samples = parse(text)
            done = value(samples, "contactsync_commands_done_total", channel="main")
            return samples if done == 1 else None

        samples = wait_for(counted, timeout=30)
    finally:
        stack.stop()
    assert value(samples, "contactsync_api_calls_total", channel="main", status="200") == 2
    assert list((tmp_path / "data" / "metrics").glob("*.db")), "no multiprocess files"
