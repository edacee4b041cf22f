"""End to end: a signed event, a 202, and the contact right in the sandbox, on each stack."""

from __future__ import annotations

import signal

import redis
from stack import Stack, wait_for

from worker.submit import queue_for


def test_signed_event_reaches_the_sandbox(stack: Stack) -> None:
    response = stack.post(
        {
            "id": "evt-1",
            "type": "contact.upsert",
            "match": {"email": "ann@example.com"},
            "fields": {"firstName": "Ann", "customerid": "42"},
            "tags": ["vip", "lead"],
        }
    )
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["event_id"] == "evt-1"
    assert len(response.get_json()["commands"]) == 1

    contact = wait_for(lambda: stack.contact_by("email", "ann@example.com"))
    assert contact["custom_fields"]["firstName"] == "Ann"
    assert contact["custom_fields"]["customerid"] == "42"
    wait_for(
        lambda: sorted(stack.contact_by("email", "ann@example.com")["tags"]) == ["lead", "vip"]
    )


def test_tag_then_untag_ends_untagged(stack: Stack) -> None:
    match = {"email": "bob@example.com"}
    batch = [
        {"id": "b1", "type": "contact.upsert", "match": match, "fields": {"firstName": "Bob"}},
        {"id": "b2", "type": "contact.tag", "match": match, "tags": ["vip", "trial"]},
        {"id": "b3", "type": "contact.untag", "match": match, "tags": ["vip"]},
    ]
    response = stack.post(batch)
    assert response.status_code == 202
    assert [e["event_id"] for e in response.get_json()["events"]] == ["b1", "b2", "b3"]
    wait_for(stack.settled)
    assert stack.states()["done"] == 3
    assert stack.contact_by("email", "bob@example.com")["tags"] == ["trial"]


def test_a_redelivered_event_is_a_duplicate_with_no_second_effect(stack: Stack) -> None:
    event = {"id": "evt-dup", "type": "contact.tag", "contact_id": "0", "tags": ["x"]}
    upsert = {
        "id": "evt-new",
        "type": "contact.upsert",
        "match": {"phone": "+60123"},
        "fields": {"firstName": "Cy"},
    }
    first = stack.post(upsert)
    second = stack.post(upsert)
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.get_json()["duplicate"] is True
    assert second.get_json()["commands"] == first.get_json()["commands"]
    wait_for(stack.settled)
    assert len(stack.contacts()) == 1
    assert stack.contact_by("phone", "+60123") is not None
    # An unknown contact id is a dead letter "no such contact", not a retry loop.
    assert stack.post(event).status_code == 202
    wait_for(lambda: stack.states()["dead"] == 1)


def test_the_receiver_only_records_and_a_relay_publishes(redis_stack: Stack) -> None:
    assert redis_stack.settings.broker_url is not None
    broker = redis.Redis.from_url(redis_stack.settings.broker_url)
    for n in range(3):
        event = {"id": f"r{n}", "type": "contact.upsert", "match": {"email": f"r{n}@x.io"}}
        assert redis_stack.post({**event, "fields": {"firstName": "R"}}).status_code == 202
    assert broker.llen(queue_for("main")) == 0  # nothing published on the request path
    assert redis_stack.runtime.ledger.outbox_size() == 3
    relay = redis_stack.start("relay")
    wait_for(lambda: broker.llen(queue_for("main")) == 3)
    assert redis_stack.runtime.ledger.outbox_size() == 0
    redis_stack.kill("relay", signal.SIGTERM)
    assert relay.returncode == 0
    assert "relay: 3 published" in redis_stack.log("relay")
    redis_stack.start_worker()
    wait_for(redis_stack.settled)
    assert redis_stack.states()["done"] == 3
    assert len(redis_stack.contacts()) == 3
