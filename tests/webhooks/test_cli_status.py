"""``contactsync status``: channels with their backlog, pauses and tokens, dead letters by
reason, workers from their heartbeats, and whether the ledger and the broker answer."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result
from source_kit import SourceKit

from worker.activity import Heartbeat, record_calls
from worker.commands import ContactRef, make_command
from worker.ledger.db import dialect_insert
from worker.ledger.schema import workers
from worker.ledger.store import NewEvent
from worker.ratelimit import SqlLimiter
from worker.runtime import set_runtime


@pytest.fixture
def kit(source_kit: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[SourceKit]:
    """A ledger with channels ``main`` and ``crm``; the CLI reads its config and data."""
    made: SourceKit = source_kit({})
    monkeypatch.setenv("CONTACTSYNC_CONFIG", str(made.runtime.settings.config))
    monkeypatch.setenv("CONTACTSYNC_DATA_DIR", str(made.runtime.settings.data_dir))
    for name in ("DATABASE_URL", "BROKER_URL", "API_BASE_URL", "LOG_LEVEL", "LOG_FORMAT"):
        monkeypatch.delenv(f"CONTACTSYNC_{name}", raising=False)
    monkeypatch.setattr("webhooks.cli.setup_logging", lambda *_args: None)
    made.runtime.ledger  # noqa: B018 - migrate before the CLI reads
    yield made
    set_runtime(None)


def run(*args: str) -> Result:
    from webhooks.cli import main

    return CliRunner().invoke(main, ["status", *args])


def record(kit: SourceKit, key: str, channel: str = "main") -> int:
    ref = ContactRef(match_field="email", match_value=f"{key}@example.com")
    command = make_command("upsert", channel, ref, fields={"firstName": key})
    event = NewEvent(key, "contact.upsert", {}, [command])
    return kit.runtime.ledger.record("website", [event])[0].command_ids[0]


def kill(kit: SourceKit, key: str, reason: str) -> None:
    claimed = kit.runtime.ledger.claim(record(kit, key), lease_s=30)
    assert claimed is not None
    kit.runtime.ledger.kill(claimed, reason=reason, status=403, error="no")


@pytest.fixture
def busy(kit: SourceKit) -> Iterator[SourceKit]:
    """Three commands waiting on main, one on crm; three dead letters; main paused after a
    429, crm's token refused; one worker alive and one gone."""
    for key in ("a", "b", "c"):
        record(kit, key)
    record(kit, "d", channel="crm")
    kill(kit, "e", "forbidden")
    kill(kit, "f", "forbidden")
    kill(kit, "g", "invalid")
    engine = kit.runtime.ledger.engine
    record_calls(engine, "main", calls=7)
    limiter = SqlLimiter(engine)
    limiter.pause("main", 120)
    limiter.flag_bad_token("crm", "401 Unauthenticated.")
    beat = Heartbeat(engine, every_s=3600).start()
    beat.count(12)
    beat.beat()
    now = time.time()
    with engine.begin() as connection:
        connection.execute(
            dialect_insert(engine)(workers).values(
                name="old-host:99", started_at=now - 7200, seen_at=now - 3600, done=5
            )
        )
    yield kit
    beat.stop()


def test_status_shows_channels_dead_letters_and_workers(busy: SourceKit) -> None:
    result = run()
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("contactsync status at ") and lines[0].endswith(" UTC")
    assert lines[1].split()[:2] == ["ledger", "ok"] and "ledger.sqlite3" in lines[1]
    assert lines[2].split() == ["broker", "ok", "contactsync-fs://"]

    header = next(line for line in lines if line.startswith("CHANNEL"))
    assert header.split() == [
        *("CHANNEL", "LIMIT", "CALLS", "LAST", "MIN", "BACKLOG", "OLDEST", "PAUSED", "TOKEN")
    ]
    table = {line.split()[0]: line for line in lines[lines.index(header) + 1 :][:2]}
    main = table["main"].split()
    assert main[1:4] == ["200", "/", "60"] and main[5:7] == ["7", "3"]  # calls, backlog
    assert "for 1m 5" in table["main"] or "for 2m 00s" in table["main"]  # paused ~120 s
    assert table["main"].endswith("ok")
    crm = table["crm"].split()
    assert crm[5:7] == ["0", "1"] and table["crm"].endswith("REFUSED")
    assert "crm: the API refused the token: 401 Unauthenticated." in result.output
    assert "commands  pending 4 · running 0 · scheduled 0 · done 0 · dead 3" in lines

    assert "dead letters  3  (contactsync dlq list --reason REASON)" in lines
    reasons = lines[lines.index("dead letters  3  (contactsync dlq list --reason REASON)") + 1 :]
    assert reasons[0].split() == ["REASON", "COUNT"]
    assert reasons[1].split() == ["forbidden", "2"] and reasons[2].split() == ["invalid", "1"]

    assert "workers  1 alive, 1 gone" in lines
    table_lines = lines[lines.index("workers  1 alive, 1 gone") + 1 :]
    assert table_lines[0].split() == ["NAME", "LAST", "SEEN", "DONE", "STATE"]
    rows = {line.split()[0]: line.split() for line in table_lines[1:]}
    (alive,) = [row for name, row in rows.items() if name != "old-host:99"]
    assert alive[-2:] == ["12", "alive"]
    assert rows["old-host:99"][1:] == ["1h", "00m", "ago", "5", "gone"]
    assert "no worker alive" not in result.output


def test_status_json_has_the_same_facts(busy: SourceKit) -> None:
    result = run("--json")
    assert result.exit_code == 0, result.output
    snapshot = json.loads(result.output)
    assert snapshot["ledger"]["reachable"] and snapshot["broker"]["reachable"]
    channels = {channel["name"]: channel for channel in snapshot["channels"]}
    assert channels["main"]["backlog"] == 3 and channels["main"]["paused"]
    assert 110 < channels["main"]["paused_for_s"] <= 120
    assert channels["main"]["calls_last_minute"] == 7 and len(channels["main"]["per_minute"]) == 60
    assert channels["main"]["oldest_open_age_s"] >= 0 and not channels["main"]["bad_token"]
    assert channels["crm"]["backlog"] == 1 and channels["crm"]["bad_token"]
    assert channels["crm"]["bad_token_detail"] == "401 Unauthenticated."
    assert snapshot["dead_letters"] == {"total": 3, "by_reason": {"forbidden": 2, "invalid": 1}}
    assert snapshot["commands"]["pending"] == 4
    assert snapshot["outbox"] == sum(snapshot["commands"].values())  # no relay has run
    by_name = {worker["name"]: worker for worker in snapshot["workers"]}
    assert not by_name["old-host:99"]["alive"] and by_name["old-host:99"]["done"] == 5
    assert sum(worker["alive"] for worker in snapshot["workers"]) == 1


def test_an_idle_ledger_shows_empty_channels(kit: SourceKit) -> None:
    result = run()
    assert result.exit_code == 0, result.output
    (main,) = [line for line in result.output.splitlines() if line.startswith("main ")]
    assert main.split()[5:] == ["0", "0", "-", "no", "ok"]
    assert "dead letters  none" in result.output and "workers  0 alive, 0 gone" in result.output


def test_a_backlog_without_a_live_worker_is_pointed_out(kit: SourceKit) -> None:
    record(kit, "a")
    result = run()
    assert "1 command waiting and no worker alive: start `contactsync worker`" in result.output


def test_an_unreachable_broker_is_shown_and_exits_1(
    kit: SourceKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTACTSYNC_BROKER_URL", "redis://127.0.0.1:1/0")
    result = run()
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if line.startswith("broker")]
    assert line.startswith("broker  UNREACHABLE  redis://127.0.0.1:1/0: ")
    assert "CHANNEL" in result.output  # the ledger still answers


def test_an_unreachable_ledger_is_shown_and_exits_1(
    kit: SourceKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTACTSYNC_DATABASE_URL", "postgresql://nobody:secret@127.0.0.1:1/x")
    result = run("--json")
    assert result.exit_code == 1
    snapshot = json.loads(result.output)
    assert not snapshot["ledger"]["reachable"] and snapshot["ledger"]["error"]
    assert "secret" not in result.output  # the password is never shown
    assert snapshot["channels"] is None and snapshot["broker"]["reachable"]
    result = run()
    assert "ledger  UNREACHABLE" in result.output
    assert "nothing more to show without the ledger" in result.output
