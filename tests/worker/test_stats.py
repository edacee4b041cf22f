"""Operators' read models: channel load and backlog, recent events, worker heartbeats."""

from __future__ import annotations

from typing import Any

from source_kit import SourceKit

from worker import activity
from worker.commands import ContactRef, make_command
from worker.ledger.store import NewEvent
from worker.stats import channels_view, recent_events, workers_view
from worker.tasks import run_command


def test_channel_view_counts_calls_backlog_and_age(source_kit: Any) -> None:
    kit: SourceKit = source_kit({})
    engine = kit.runtime.ledger.engine
    refs = [ContactRef(match_field="email", match_value=f"c{i}@x.io") for i in range(3)]
    ids = []
    for i, ref in enumerate(refs):
        command = make_command("upsert", "main", ref, fields={"firstName": "A"})
        ids += kit.runtime.ledger.record("t", [NewEvent(f"e{i}", "t", {}, [command])])[
            0
        ].command_ids
    run_command(ids[0], kit.runtime)
    (main,) = [view for view in channels_view(engine, kit.runtime.config) if view.name == "main"]
    assert main.limit_calls == 200
    assert main.calls_last_minute == 2  # the lookup and the create
    assert main.per_minute[-1] == 2 and len(main.per_minute) == 60
    assert main.backlog == 2
    assert main.oldest_open_age_s is not None and main.oldest_open_age_s >= 0
    assert not main.bad_token and main.paused_for_s == 0
    events = recent_events(engine)
    assert [e["outcome"] for e in events] == ["in progress", "in progress", "done"]


def test_minutes_add_up_and_old_ones_are_pruned(source_kit: Any) -> None:
    kit: SourceKit = source_kit({})
    engine = kit.runtime.ledger.engine
    activity.record_calls(engine, "main", calls=3, now=6000.0)
    activity.record_calls(engine, "main", calls=4, failed=1, now=6030.0)
    (main,) = [v for v in channels_view(engine, kit.runtime.config, now=6059.0) if v.name == "main"]
    assert main.per_minute[-1] == 7
    activity.prune(engine, now=6000.0 + 2 * 86400)
    (main,) = [v for v in channels_view(engine, kit.runtime.config, now=6059.0) if v.name == "main"]
    assert main.per_minute[-1] == 0


def test_heartbeats_show_alive_workers_and_a_clean_stop_removes_them(source_kit: Any) -> None:
    kit: SourceKit = source_kit({})
    engine = kit.runtime.ledger.engine
    beat = activity.Heartbeat(engine, every_s=3600).start()
    beat.count(5)
    beat.beat()
    (seen,) = workers_view(engine)
    assert seen.alive and seen.done == 5 and seen.name == activity.worker_name()
    (stale,) = workers_view(engine, now=seen.started_at + 3600)
    assert not stale.alive
    beat.stop()
    assert workers_view(engine) == []
