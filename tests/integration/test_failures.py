"""What the ledger promises when the broker or a worker misbehaves: a message delivered
several times has one effect, a worker killed mid-command has its command reclaimed and
applied once, and a command whose message never reached the broker is published by the
reconciler. Real worker and beat processes, real brokers and ledgers, the sandbox's call
log as the judge."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import build_stack
from flask import request
from stack import Stack, wait_for

from worker.commands import ContactRef, make_command
from worker.contacts_api.sandbox import SandboxServer
from worker.ledger.store import NewEvent

COPIES = 4
"""Extra deliveries of the same task message."""


def test_the_same_message_delivered_twice_has_one_effect(stack: Stack) -> None:
    contact_id = stack.sandbox.state.create_contact("main", {"email": "dup@example.com"}, []).id
    response = stack.post(
        {"id": "evt-twice", "type": "contact.tag", "contact_id": contact_id, "tags": ["vip"]}
    )
    assert response.status_code == 202, response.get_json()
    (command_id,) = response.get_json()["commands"]
    # The receiver published one message; the broker delivers the same one again and again.
    task_ids = [
        stack.runtime.celery.send_task("contactsync.tag_contact", args=[command_id]).id
        for _ in range(COPIES)
    ]

    # Every copy ran to its end ("skipped": nothing left to claim) before we count calls.
    wait_for(lambda: all(f"{task_id}] succeeded" in stack.log("worker") for task_id in task_ids))
    wait_for(lambda: stack.runtime.ledger.command(command_id)["state"] == "done")
    tag_calls = [
        call
        for call in stack.sandbox.state.calls("main")
        if call.method == "POST" and call.path.endswith(f"/contact/{contact_id}/tags")
    ]
    assert len(tag_calls) == 1, tag_calls
    assert stack.sandbox.state.contact("main", contact_id).tags == ["vip"]
    assert stack.runtime.ledger.command(command_id)["attempts"] == 0
    assert stack.log("worker").count(": 'done'") == 1  # every other delivery: 'skipped'


class InFlight:
    """The sandbox's API calls that are sleeping in its latency fault right now."""

    def __init__(self, sandbox: SandboxServer) -> None:
        self._sleep = sandbox.state.sleep
        self._lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []

    def sleep(self, seconds: float) -> bool:
        """Stands in for ``SandboxState.sleep``, noting which request sleeps."""
        call = (request.method, request.path)
        if seconds > 0:
            with self._lock:
                self.calls.append(call)
        try:
            return self._sleep(seconds)
        finally:
            if seconds > 0:
                with self._lock:
                    self.calls.remove(call)

    def creating(self) -> bool:
        """Whether a create (POST .../contact) is in flight."""
        with self._lock:
            return any(m == "POST" and p.endswith("/contact") for m, p in self.calls)


@pytest.fixture
def in_flight(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> InFlight:
    """Watch which API calls are in flight in the sandbox."""
    watcher = InFlight(sandbox)
    monkeypatch.setattr(sandbox.state, "sleep", watcher.sleep)
    return watcher


def test_a_worker_killed_mid_command_is_reclaimed_and_applied_once(
    redis_stack: Stack, in_flight: InFlight
) -> None:
    stack = redis_stack
    # Each call takes 1 s (under the 2 s read timeout): the lookup answers "no such
    # contact", then the worker is killed while its create is on the wire.
    stack.sandbox.state.set_faults(latency_ms=1000)
    stack.start_worker()
    stack.start_beat()
    response = stack.post(
        {
            "id": "evt-killed",
            "type": "contact.upsert",
            "match": {"email": "kim@example.com"},
            "fields": {"firstName": "Kim", "lastName": "Ode"},
        }
    )
    assert response.status_code == 202, response.get_json()
    (command_id,) = response.get_json()["commands"]
    ledger = stack.runtime.ledger

    wait_for(in_flight.creating, timeout=20, step=0.02)
    assert ledger.command(command_id)["state"] == "running"
    stack.kill("worker")
    # The dead worker's request still lands: the sandbox creates the contact after its
    # latency. The command's next run must find that contact, not create another. (Waiting
    # for it first keeps the test deterministic: a create that landed only after the next
    # run's lookup would be a second contact; the lease must outlast any request in flight.)
    wait_for(lambda: stack.contact_by("email", "kim@example.com"), timeout=5, step=0.05)
    stack.sandbox.state.set_faults(latency_ms=0)
    stack.start_worker()

    # The 3 s lease runs out, the reconciler reclaims the command, the new worker applies it.
    wait_for(lambda: ledger.command(command_id)["state"] == "done", timeout=20)
    row = ledger.command(command_id)
    assert row["attempts"] == 1  # the lease expiry spent one attempt
    assert row["last_error"].startswith("lease expired")
    matching = [c for c in stack.contacts() if c["custom_fields"].get("email") == "kim@example.com"]
    assert len(matching) == 1, stack.contacts()
    assert matching[0]["custom_fields"] == {
        "email": "kim@example.com",
        "firstName": "Kim",
        "lastName": "Ode",
    }
    assert row["contact_id"] == matching[0]["id"]
    calls = stack.sandbox.state.calls("main")
    creates = [c for c in calls if c.method == "POST" and c.path.endswith("/contact")]
    assert len(creates) == 1, creates  # the killed worker's only; the retry updated it


@pytest.mark.parametrize("kind", ["embedded-sqlite", "redis-postgresql"])
def test_a_lost_message_is_published_by_the_reconciler(
    request: pytest.FixtureRequest, tmp_path: Path, sandbox: SandboxServer, kind: str
) -> None:
    stack = build_stack(request, kind, tmp_path, sandbox)
    try:
        command = make_command(
            "upsert",
            "main",
            ContactRef(match_field="email", match_value="lou@example.com"),
            fields={"firstName": "Lou"},
            tags=["lost"],
        )
        event = NewEvent(key="evt-lost", type="contact.upsert", payload={}, commands=[command])
        # Recorded, never published: as if the broker lost the receiver's message.
        (recorded,) = stack.runtime.ledger.record("website", [event])
        (command_id,) = recorded.command_ids
        stack.start_worker()
        stack.start_beat()

        wait_for(lambda: stack.runtime.ledger.command(command_id)["state"] == "done", timeout=15)
        assert stack.runtime.ledger.command(command_id)["attempts"] == 0
        contact = stack.contact_by("email", "lou@example.com")
        assert contact is not None
        assert contact["custom_fields"] == {"email": "lou@example.com", "firstName": "Lou"}
        assert contact["tags"] == ["lost"]
        assert len(stack.contacts()) == 1
    finally:
        stack.stop()
