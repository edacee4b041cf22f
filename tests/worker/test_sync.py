"""The sync engine: a contact's commands take effect in acceptance order whatever the order
of execution, waiting commands are merged into the fewest calls, contact ids are cached."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from source_kit import SourceKit

from worker.commands import ContactRef, make_command
from worker.ledger.store import NewEvent
from worker.tasks import channel_limit, run_command

ANN = ContactRef(match_field="email", match_value="ann@example.com")


@pytest.fixture
def kit(source_kit: Any) -> SourceKit:
    kit: SourceKit = source_kit({})
    return kit


def record(kit: SourceKit, *commands: Any) -> list[int]:
    """Record one event per command (as separate deliveries would); their command ids."""
    ids = []
    for command in commands:
        key = f"e{len(kit.recorded())}-{len(ids)}"
        (recorded,) = kit.runtime.ledger.record("test", [NewEvent(key, "t", {}, [command])])
        ids += recorded.command_ids
    return ids


def upsert(**fields: Any) -> Any:
    return make_command("upsert", "main", ANN, fields=fields or {"firstName": "Ann"})


def tag(*tags: str) -> Any:
    return make_command("tag", "main", ANN, tags=list(tags))


def untag(*tags: str) -> Any:
    return make_command("untag", "main", ANN, tags=list(tags))


def calls(kit: SourceKit) -> list[tuple[str, str]]:
    return [(c.method, c.path.split("/api/v1")[-1]) for c in kit.sandbox.state.calls("main")]


def states(kit: SourceKit) -> list[str]:
    return [row["state"] for row in kit.recorded()]


def test_tag_untag_tag_ends_tagged_whatever_order_the_messages_arrive(kit: SourceKit) -> None:
    ids = record(kit, upsert(), tag("vip"), untag("vip"), tag("vip"), untag("trial"))
    # Messages arrive last first: the later commands wait for the earlier ones.
    assert [run_command(i, kit.runtime) for i in reversed(ids[1:])] == ["skipped"] * 4
    assert run_command(ids[0], kit.runtime) == "done"
    assert states(kit) == ["done"] * 5
    assert kit.contact("email", "ann@example.com")["tags"] == ["vip"]


def test_waiting_commands_are_merged_into_the_fewest_calls(kit: SourceKit) -> None:
    ids = record(
        kit,
        upsert(firstName="A"),
        tag("vip", "lead"),
        upsert(firstName="Ann", lastName="Lee"),
        tag("trial"),
        untag("trial"),
    )
    assert run_command(ids[0], kit.runtime) == "done"
    assert states(kit) == ["done"] * 5
    contact = kit.contact("email", "ann@example.com")
    assert contact["custom_fields"]["firstName"] == "Ann"
    assert contact["custom_fields"]["lastName"] == "Lee"
    assert sorted(contact["tags"]) == ["lead", "vip"]
    # A lookup, one create with every field, one add of the net tags; "trial" costs nothing.
    assert [method for method, _ in calls(kit)] == ["GET", "POST", "POST"]


def test_a_failed_merged_pass_retries_in_order(kit: SourceKit) -> None:
    kit.sandbox.state.create_contact("main", {"email": "ann@example.com"}, ["vip"])
    ids = record(kit, untag("vip"), tag("vip"), untag("vip"))
    kit.sandbox.state.set_faults(error_rate=1.0)
    assert run_command(ids[0], kit.runtime) == "scheduled"
    assert states(kit) == ["scheduled"] * 3
    kit.sandbox.state.set_faults(error_rate=0.0)
    kit.runtime.ledger.clock = lambda: 10**12  # the backoff has passed
    assert run_command(ids[0], kit.runtime) == "done"
    assert kit.contact("email", "ann@example.com")["tags"] == []


def test_repeat_events_skip_the_lookup(kit: SourceKit) -> None:
    (first,) = record(kit, upsert())
    run_command(first, kit.runtime)
    before = len(calls(kit))
    (second,) = record(kit, upsert(lastName="Lee"))
    run_command(second, kit.runtime)
    assert calls(kit)[before:] == [("PUT", calls(kit)[-1][1])]  # no GET by_custom_field


def test_a_stale_cached_id_is_forgotten_and_resolved_once(kit: SourceKit) -> None:
    (first,) = record(kit, upsert())
    run_command(first, kit.runtime)
    old = kit.contact("email", "ann@example.com")["id"]
    kit.sandbox.state.delete_contact("main", old)
    replacement = kit.sandbox.state.create_contact("main", {"email": "ann@example.com"}, [])
    (second,) = record(kit, tag("vip"))
    assert run_command(second, kit.runtime) == "done"
    assert kit.contact("email", "ann@example.com")["id"] == replacement.id
    assert kit.contact("email", "ann@example.com")["tags"] == ["vip"]
    assert kit.runtime.ledger.cached_contact_id("main", ANN.key) == replacement.id


def test_concurrent_creates_of_one_contact_make_one_contact(kit: SourceKit) -> None:
    ids = record(kit, upsert(firstName="A"), upsert(firstName="B"), upsert(firstName="C"))
    barrier = threading.Barrier(len(ids))
    outcomes: list[str] = []

    def run(command_id: int) -> None:
        barrier.wait()
        outcomes.append(run_command(command_id, kit.runtime))

    threads = [threading.Thread(target=run, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for command_id in ids:  # what raced and lost is published again; run it
        run_command(command_id, kit.runtime)
    assert states(kit) == ["done"] * 3
    assert kit.contact("email", "ann@example.com")["custom_fields"]["firstName"] == "C"


def test_a_replayed_old_command_does_not_undo_newer_changes(kit: SourceKit) -> None:
    from worker.deadletter import replay

    kit.sandbox.state.set_faults(error_rate=0.0)
    (old,) = record(kit, upsert(firstName="Old"))
    claimed = kit.runtime.ledger.claim(old, lease_s=30)
    assert claimed is not None
    kit.runtime.ledger.kill(claimed, reason="forbidden", status=403, error="x")
    (new,) = record(kit, upsert(firstName="New"))
    assert run_command(new, kit.runtime) == "done"
    replay(kit.runtime.ledger.engine, [old], now=kit.runtime.ledger.clock())
    assert run_command(old, kit.runtime) == "done"
    assert kit.contact("email", "ann@example.com")["custom_fields"]["firstName"] == "New"


def test_a_slow_pass_keeps_its_lease(kit: SourceKit) -> None:
    from worker.config import WorkerConfig

    kit.runtime.config = kit.runtime.config.model_copy(update={"worker": WorkerConfig(lease_s=1.0)})
    (command_id,) = record(
        kit, make_command("upsert", "main", ANN, fields={"firstName": "A"}, tags=["a", "b", "c"])
    )
    kit.sandbox.state.set_faults(latency_ms=450)  # lookup + create + tags: about 1.4 s
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(run_command(command_id, kit.runtime)))
    worker.start()
    import time

    time.sleep(1.2)  # past the first lease's end, while the pass is still calling
    assert kit.runtime.ledger.reclaim_expired(max_attempts=5) == []
    worker.join()
    assert outcome == ["done"]


def limit_main(kit: SourceKit, *, calls: int, period_s: float) -> None:
    """Channel ``main`` at this limit (a worker waits inline up to 2 s for a start; a
    farther one defers the pass)."""
    from worker.config import RateLimit

    channel = kit.runtime.config.channels["main"]
    limited = channel.model_copy(update={"rate_limit": RateLimit(calls=calls, period_s=period_s)})
    kit.runtime.config = kit.runtime.config.model_copy(
        update={"channels": {**kit.runtime.config.channels, "main": limited}}
    )


def run_until_done(kit: SourceKit, command_id: int, within_s: float) -> list[str]:
    import time

    outcomes: list[str] = []
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        outcomes.append(run_command(command_id, kit.runtime))
        if outcomes[-1] == "done":
            break
        time.sleep(0.25)
    return outcomes


def test_a_pass_stopped_by_a_far_start_resumes_where_it_stopped(kit: SourceKit) -> None:
    limit_main(kit, calls=2, period_s=3.0)
    kit.sandbox.state.create_contact("main", {"email": "ann@example.com"}, [])
    (command_id,) = record(
        kit, make_command("upsert", "main", ANN, fields={"lastName": "Lee"}, tags=["vip"])
    )
    # Two calls fit this window (the lookup and the update); the third waits 3 s: the pass
    # is deferred with what it applied recorded, and resumes from there.
    outcomes = run_until_done(kit, command_id, within_s=30)
    assert outcomes[-1] == "done" and "deferred" in outcomes
    assert [method for method, _ in calls(kit)] == ["GET", "PUT", "POST"]  # nothing twice
    contact = kit.contact("email", "ann@example.com")
    assert contact["custom_fields"]["lastName"] == "Lee" and contact["tags"] == ["vip"]


def test_a_pass_deferred_after_finding_no_contact_creates_it_without_looking_again(
    kit: SourceKit,
) -> None:
    # One call per 3 s: a lookup and a create cannot share a window.
    limit_main(kit, calls=1, period_s=3.0)
    (command_id,) = record(kit, upsert(lastName="Lee"))
    # The lookup finds nobody, the create's start is 3 s off: deferred. Resumed, the pass
    # creates at the start it held. Looking again instead would take that start, and the
    # create would need another 3 s off: deferred again, every time.
    outcomes = run_until_done(kit, command_id, within_s=20)
    assert outcomes[-1] == "done" and "deferred" in outcomes
    assert [method for method, _ in calls(kit)] == ["GET", "POST"]
    assert kit.contact("email", "ann@example.com")["custom_fields"]["lastName"] == "Lee"


def test_a_lookup_older_than_the_trust_is_made_again(kit: SourceKit) -> None:
    # One call per 3 s: a lookup and a create cannot share a window.
    limit_main(kit, calls=1, period_s=3.0)
    worker = kit.runtime.config.worker.model_copy(update={"not_found_trust_s": 1.0})
    kit.runtime.config = kit.runtime.config.model_copy(update={"worker": worker})
    (command_id,) = record(kit, upsert(lastName="Lee"))
    assert run_command(command_id, kit.runtime) == "deferred"
    # Meanwhile someone else creates the contact; the resumed pass (2.5 s later, past the
    # 1 s trust) looks again, finds it and updates it instead of creating a second.
    kit.sandbox.state.create_contact("main", {"email": "ann@example.com"}, [])
    outcomes = run_until_done(kit, command_id, within_s=20)
    assert outcomes[-1] == "done"
    assert [method for method, _ in calls(kit)] == ["GET", "GET", "PUT"]
    assert kit.contact("email", "ann@example.com")["custom_fields"]["lastName"] == "Lee"


def test_under_a_backlog_a_pass_s_dependent_calls_get_starts_it_can_use(kit: SourceKit) -> None:
    """The window is full (a burst of others' calls) and the one after is taken by others
    too: a backlog. The API answers in 0.3 s, more than a start may be missed by (margin /
    2 = 0.125 s). In one bunch, the create's and the tag's starts would be gone by the time
    the lookup is answered, and each would send the pass behind the others; spaced by the
    calls' time, the pass makes its three calls in one go."""
    limit_main(kit, calls=3, period_s=3.0)
    kit.sandbox.state.set_faults(latency_ms=300)
    kit.runtime.call_times.note("main", 0.3)  # as this process saw earlier calls take
    limit = channel_limit(kit.runtime, "main")
    kit.runtime.limiter.reserve("main", 3, limit)  # a burst of others' calls: window full
    (command_id,) = record(
        kit, make_command("upsert", "main", ANN, fields={"lastName": "Lee"}, tags=["vip"])
    )
    assert run_command(command_id, kit.runtime) == "deferred"  # to the next window
    kit.runtime.limiter.reserve("main", 3, limit)  # others' commands, the window after
    outcomes = run_until_done(kit, command_id, within_s=30)
    assert outcomes[-1] == "done"
    assert "deferred" not in outcomes  # not sent behind the others
    assert [method for method, _ in calls(kit)] == ["GET", "POST", "POST"]
    assert kit.contact("email", "ann@example.com")["tags"] == ["vip"]
