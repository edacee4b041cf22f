"""The rate limit held across four worker processes on Redis + PostgreSQL, 429s honoured,
passing failures retried, a bad token dead-lettered, and channels kept apart.

The sandbox runs at a time-scaled limit (30 calls per 3 s) so that a few hundred calls
take seconds, not minutes; its call log is the judge.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import build_stack
from stack import Stack, wait_for

from worker.contacts_api.sandbox import SandboxServer

RATE = (30, 3.0)


@pytest.fixture
def limited(
    request: pytest.FixtureRequest, tmp_path: Path, sandbox: SandboxServer
) -> Iterator[Stack]:
    """Redis + PostgreSQL with channels main and crm at the time-scaled limit."""
    sandbox.state.set_rate(*RATE)
    built = build_stack(
        request, "redis-postgresql", tmp_path, sandbox, channels=("main", "crm"), rate=RATE
    )
    yield built
    built.stop()


def seed(stack: Stack, count: int, channel: str = "main") -> list[str]:
    """Contacts that already exist in the sandbox; returns their ids."""
    return [
        stack.sandbox.state.create_contact(channel, {"email": f"c{i}@example.com"}, []).id
        for i in range(count)
    ]


def tag_events(ids: list[str], tag: str = "vip", channel: str = "main") -> list[dict[str, Any]]:
    """One ``contact.tag`` event per contact id: one API call each."""
    return [
        {
            "id": f"{channel}-{tag}-{i}",
            "type": "contact.tag",
            "channel": channel,
            "contact_id": contact_id,
            "tags": [tag],
        }
        for i, contact_id in enumerate(ids)
    ]


def post_all(stack: Stack, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 100):
        assert stack.post(events[start : start + 100]).status_code == 202


def all_tagged(stack: Stack, ids: list[str], tag: str, channel: str = "main") -> bool:
    tagged = {c["id"] for c in stack.contacts(channel) if tag in c["tags"]}
    return set(ids) <= tagged


def start_workers(stack: Stack, count: int = 4) -> None:
    for number in range(count):
        stack.start("worker", "--concurrency", "3", label=f"worker{number}")
    stack.start_beat()


def test_a_burst_never_exceeds_the_limit_in_any_window(limited: Stack) -> None:
    ids = seed(limited, 300)
    post_all(limited, tag_events(ids))
    start_workers(limited)
    wait_for(lambda: all_tagged(limited, ids, "vip"), timeout=120)
    log = limited.sandbox.state.log()["channels"]["main"]
    assert log["refused"].get("429", 0) == 0, log
    assert limited.sandbox.state.max_in_window("main") <= RATE[0]
    # the last tag call can land before its worker records the command done
    wait_for(limited.settled, timeout=30)
    assert limited.states()["done"] == 300


def test_forced_429s_are_honoured_and_cost_no_attempt(limited: Stack) -> None:
    ids = seed(limited, 40)
    limited.sandbox.state.set_faults(rate_limit_rate=0.3)
    post_all(limited, tag_events(ids))
    start_workers(limited, 2)
    wait_for(lambda: all_tagged(limited, ids, "vip"), timeout=120)
    wait_for(limited.settled)
    states = limited.states()
    assert states["done"] == 40 and states["dead"] == 0
    assert limited.sandbox.state.log()["channels"]["main"]["refused"].get("429", 0) > 0


def test_a_run_of_server_errors_then_recovery_applies_everything(limited: Stack) -> None:
    ids = seed(limited, 30)
    limited.sandbox.state.set_faults(error_rate=1.0)
    post_all(limited, tag_events(ids))
    start_workers(limited, 1)
    wait_for(lambda: limited.runtime.ledger.counts()["scheduled"] >= 5, timeout=30)
    limited.sandbox.state.set_faults(error_rate=0.0)
    wait_for(lambda: all_tagged(limited, ids, "vip"), timeout=60)
    wait_for(limited.settled)
    assert limited.states()["dead"] == 0


def test_a_bad_token_dead_letters_then_a_replay_applies_them(limited: Stack) -> None:
    ids = seed(limited, 10)
    good = limited.sandbox.token("main")
    limited.sandbox.state.set_channel("main", "revoked-token")
    post_all(limited, tag_events(ids))
    start_workers(limited, 1)
    wait_for(lambda: limited.states()["dead"] == 10, timeout=60)
    from worker.deadletter import DeadLetterFilter, list_dead, replay_and_publish

    dead = list_dead(limited.runtime.ledger.engine, DeadLetterFilter(), limit=100)
    assert {d.reason for d in dead} == {"unauthorized"}
    assert {d.last_status for d in dead} == {401}
    assert bad_token(limited) is not None

    limited.sandbox.state.set_channel("main", good)  # the operator fixes the token
    assert replay_and_publish(limited.runtime, [d.id for d in dead]) == 10
    wait_for(lambda: all_tagged(limited, ids, "vip"), timeout=60)
    wait_for(lambda: bad_token(limited) is None)


def bad_token(stack: Stack) -> float | None:
    (status,) = [c for c in stack.runtime.limiter.status() if c.name == "main"]
    return status.bad_token_at


def test_a_backlog_on_one_channel_does_not_hold_up_another(limited: Stack) -> None:
    backlog = seed(limited, 200, "main")
    post_all(limited, tag_events(backlog, "bulk"))
    start_workers(limited, 1)
    wait_for(lambda: limited.sandbox.state.log()["channels"]["main"]["accepted"] >= 30)
    others = seed(limited, 5, "crm")
    post_all(limited, tag_events(others, "urgent", channel="crm"))
    started = time.monotonic()
    wait_for(lambda: all_tagged(limited, others, "urgent", "crm"), timeout=10)
    assert time.monotonic() - started < 5
    assert not all_tagged(limited, backlog, "bulk")  # the backlog is still draining
