"""Faults while events arrive and are applied, in short versions of ``python -m ops.chaos``:
workers SIGKILLed mid-command, the Redis broker killed and restarted empty during the
drain, the ledger's PostgreSQL down (the receiver answers 503 with Retry-After, the sender
retries), and the Contacts API unreachable then back. Each ends with the runner's check:
every event answered 2xx applied (its contact with the right fields and tags) or a dead
letter with its reason, no contact created twice. Redis and PostgreSQL here are dedicated
ones the scenario starts on free ports; the machine's shared services are not touched.

``make chaos`` runs every scenario (RabbitMQ, SIGTERM of ``up``, a slow and an erratic API
too) at a longer size; the figures are in docs/reliability.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import has_request_context, request
from services import unavailable

from ops.chaos.rig import Rig, signed_headers
from ops.chaos.scenarios import Pool, Result, Size, run_scenario
from ops.chaos.services import DedicatedRedis, Unavailable

SHORT = Size(events=50, seconds=5)


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    """One dedicated PostgreSQL cluster for the scenarios' ledgers (a database each)."""
    shared = Pool()
    yield shared
    shared.close()


def run(name: str, tmp_path: Path, pool: Pool) -> Result:
    try:
        result = run_scenario(name, SHORT, tmp_path, pool)
    except Unavailable as error:
        unavailable(name, error)
        raise
    if result.skipped:
        unavailable(name, RuntimeError(result.skipped))
    return result


@pytest.mark.parametrize(
    "name", ["worker-kill", "redis-restart", "postgres-outage", "sandbox-outage"]
)
def test_a_fault_during_traffic_loses_nothing_and_duplicates_nothing(
    name: str, tmp_path: Path, pool: Pool
) -> None:
    result = run(name, tmp_path, pool)
    assert result.ok, result.report()
    assert result.accepted == result.sent == SHORT.events, result.report()
    assert result.applied + sum(result.dead.values()) == result.accepted, result.report()
    if name == "postgres-outage":
        assert result.answers.get("503"), result.report()  # refused while down, then kept
    if name == "worker-kill":
        assert sum("SIGKILL" in line for line in result.timeline) >= 2, result.report()


class CreatedTwice(AssertionError):
    """The sandbox holds two contacts for one event."""


def test_a_create_that_times_out_but_lands_later_is_not_made_twice(
    tmp_path: Path, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        redis = DedicatedRedis(tmp_path / "redis")
        redis.start()
        database = pool.database("create_timeout")
    except Unavailable as error:
        unavailable("dedicated services", error)
        raise
    rig = Rig(tmp_path, broker_url=redis.url, database_url=database, rate=(100, 2.0))
    try:
        hung = hang_the_first_create(rig, monkeypatch, seconds=8.0)
        rig.start_stack(workers=1, concurrency=1)
        event = {
            "id": "evt-slow-create",
            "type": "contact.upsert",
            "match": {"email": "slow@example.com"},
            "fields": {"firstName": "Slow"},
        }
        body = json.dumps(event).encode()
        answer = requests.post(
            f"{rig.url}/webhooks/chaos", data=body, headers=signed_headers(body), timeout=10
        )
        assert answer.status_code == 202, answer.text

        deadline = time.monotonic() + 60
        while rig.open_commands() != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rig.open_commands() == 0, "the command did not settle"
        assert hung, "the first create was not held: the test proves nothing"
        time.sleep(9)  # the held create lands 8 s after it was sent
        found = [c for c in rig.contacts() if c["custom_fields"].get("email") == "slow@example.com"]
        if len(found) != 1:
            raise CreatedTwice(f"{len(found)} contacts for one event: {found}")
    finally:
        rig.stop()
        redis.close()


def hang_the_first_create(rig: Rig, monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[Any]:
    """Make the sandbox hold the first ``POST /contact`` for ``seconds`` (beyond the
    workers' 2 s read timeout) before applying it, and no other call; returns a list that
    gets an entry when it happened."""
    state = rig.sandbox.state
    marker = 0.5  # the hang fault's rate, recognised below; other calls never hang
    state.set_faults(hang_rate=marker, hang_s=seconds)
    original = state.chance
    hung: list[Any] = []

    def chance(rate: float) -> bool:
        if rate != marker:
            return original(rate)
        creating = (
            has_request_context() and request.method == "POST" and request.path.endswith("/contact")
        )
        if creating and not hung:
            hung.append(time.monotonic())
            return True
        return False

    monkeypatch.setattr(state, "chance", chance)
    return hung


class WorkerDied(AssertionError):
    """The worker process exited on its own."""


def test_an_empty_message_file_does_not_stop_the_embedded_worker(tmp_path: Path) -> None:
    rig = Rig(tmp_path, broker_url=None, database_url=None, rate=(100, 2.0))
    try:
        # What a reader sees between a publisher's open() and its write(): an empty file.
        broker = rig.data / "broker"
        broker.mkdir(parents=True)
        (broker / f"{int(time.monotonic() * 1000)}_{'0' * 32}.contactsync.main.msg").touch()
        rig.start_stack(workers=1, concurrency=1)
        event = {"id": "evt-after-empty", "type": "contact.upsert", "match": {"email": "e@x.io"}}
        event["fields"] = {"firstName": "E"}
        body = json.dumps(event).encode()
        answer = requests.post(
            f"{rig.url}/webhooks/chaos", data=body, headers=signed_headers(body), timeout=10
        )
        assert answer.status_code == 202, answer.text
        deadline = time.monotonic() + 30
        while rig.open_commands() != 0 and time.monotonic() < deadline:
            if any(rig.processes[w].poll() is not None for w in rig.workers()):
                raise WorkerDied(rig.logs("worker")[-1500:])
            time.sleep(0.2)
        assert rig.open_commands() == 0, rig.logs("worker")[-3000:]
    finally:
        rig.stop()
