"""``contactsync dlq``: the table, one dead letter in full, and replay and purge with their
selection rules, confirmation and dry run, on a ledger in a temporary data folder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from stack import write_config

from webhooks.cli import main
from worker.commands import ContactRef, make_command
from worker.config import Settings
from worker.contacts_api.sandbox import SandboxServer
from worker.ledger import Ledger, connect, migrate
from worker.ledger.store import NewEvent
from worker.runtime import set_runtime


@pytest.fixture
def ledger(
    tmp_path: Path, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Ledger]:
    """The ledger the CLI will open: the config and data folder come from the environment."""
    config_path = write_config(tmp_path / "contactsync.yaml", sandbox)
    document = yaml.safe_load(config_path.read_text())
    document["admin"] = {"token_env": "CONTACTSYNC_ADMIN_TOKEN"}
    config_path.write_text(yaml.safe_dump(document))
    monkeypatch.setenv("CONTACTSYNC_CONFIG", str(config_path))
    monkeypatch.setenv("CONTACTSYNC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONTACTSYNC_ADMIN_TOKEN", "admin-token")
    for name in ("DATABASE_URL", "BROKER_URL", "API_BASE_URL", "LOG_LEVEL", "LOG_FORMAT"):
        monkeypatch.delenv(f"CONTACTSYNC_{name}", raising=False)
    # The CLI points the root logger at the runner's stderr, which closes after each run.
    monkeypatch.setattr("webhooks.cli.setup_logging", lambda *_args: None)
    engine = connect(Settings().ledger_url())
    migrate(engine)
    yield Ledger(engine)
    set_runtime(None)
    engine.dispose()


def run(*args: str, answer: str | None = None) -> Result:
    return CliRunner().invoke(main, ["dlq", *args], input=answer)


def record(ledger: Ledger, key: str, *, channel: str = "main") -> int:
    ref = ContactRef(match_field="email", match_value=f"{key}@example.com")
    command = make_command("upsert", channel, ref, fields={"firstName": key}, tags=["vip"])
    event = NewEvent(key, "contact.upsert", {"id": key}, [command])
    return ledger.record("website", [event])[0].command_ids[0]


def dead(ledger: Ledger, key: str, *, reason: str = "forbidden", **where: Any) -> int:
    command_id = record(ledger, key, **where)
    claimed = ledger.claim(command_id, lease_s=30)
    assert claimed is not None
    message = f"PUT /contact/{key}: General: the token may not change this contact " * 3
    ledger.kill(claimed, reason=reason, status=403, error=message.strip())
    return command_id


def states(ledger: Ledger, *ids: int) -> list[str | None]:
    rows = [ledger.command(command_id) for command_id in ids]
    return [None if row is None else row["state"] for row in rows]


def test_list_prints_a_table_newest_first_and_a_footer(ledger: Ledger) -> None:
    a, b = dead(ledger, "a"), dead(ledger, "b", channel="viber", reason="invalid")
    record(ledger, "pending")
    result = run("list")
    assert result.exit_code == 0, result.output
    header, first, second, footer = result.output.splitlines()
    assert header.split()[:3] == ["ID", "FINISHED", "(UTC)"] and "MESSAGE" in header
    assert first.split()[0] == str(b) and "viber" in first and "invalid" in first
    assert second.split()[0] == str(a) and "email=a@example.com" in second
    assert second.endswith("…") and "PUT /contact/a" in second
    assert footer == "2 of 2 dead letters"
    assert run("list", "--limit", "1").output.splitlines()[-1] == "1 of 2 dead letters"
    assert run("list", "--reason", "invalid").output.splitlines()[-1] == "1 of 1 dead letter"
    assert run("list", "--since", "1h").output.splitlines()[-1] == "2 of 2 dead letters"


def test_list_json_prints_one_object_per_line(ledger: Ledger) -> None:
    a, b = dead(ledger, "a"), dead(ledger, "b")
    result = run("list", "--json")
    items = [json.loads(line) for line in result.output.splitlines()]
    assert [item["id"] for item in items] == [b, a]
    assert items[0]["finished_at"].endswith("Z") and items[0]["payload"]["tags"] == ["vip"]


def test_a_bad_since_is_a_usage_error(ledger: Ledger) -> None:
    result = run("list", "--since", "last tuesday")
    assert result.exit_code == 2 and "--since" in result.output


def test_show_prints_every_field_the_message_and_the_payload(ledger: Ledger) -> None:
    a = dead(ledger, "a")
    result = run("show", str(a))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "website / a (contact.upsert" in out and "forbidden" in out and "403" in out
    row = ledger.command(a)
    assert row is not None and row["last_error"] in out  # in full
    payload = json.loads(out[out.index("payload:") + len("payload:") :])
    assert payload == {"fields": {"firstName": "a"}, "tags": ["vip"]}


@pytest.mark.parametrize("verb", ["show", "replay", "purge"])
@pytest.mark.parametrize("command_id", [str(2**63), "0", "-3"])
def test_an_id_outside_the_ledger_s_integers_is_a_usage_error(
    ledger: Ledger, verb: str, command_id: str
) -> None:
    result = run(verb, "--", command_id, answer="y\n")
    assert result.exit_code == 2, result.output
    assert "is not in the range 1<=x<=9223372036854775807" in result.output


def test_show_of_what_is_not_a_dead_letter_exits_1(ledger: Ledger) -> None:
    pending = record(ledger, "pending")
    for command_id in (pending, 424242):
        result = run("show", str(command_id))
        assert result.exit_code == 1 and f"no dead letter {command_id}" in result.output


def test_replay_of_one_id_needs_no_confirmation(ledger: Ledger) -> None:
    a, b = dead(ledger, "a"), dead(ledger, "b")
    result = run("replay", str(a))
    assert result.exit_code == 0, result.output
    assert "Replayed 1 dead letter." in result.output
    assert states(ledger, a, b) == ["pending", "dead"]
    assert ledger.command(a)["attempts"] == 0  # type: ignore[index]


def test_bulk_replay_asks_and_a_no_changes_nothing(ledger: Ledger) -> None:
    a, b = dead(ledger, "a"), dead(ledger, "b")
    result = run("replay", str(a), str(b), answer="n\n")
    assert result.exit_code == 1
    assert "Replay 2 dead letters? [y/N]" in result.output and "Nothing replayed." in result.output
    assert states(ledger, a, b) == ["dead", "dead"]
    result = run("replay", "--all", answer="y\n")
    assert result.exit_code == 0, result.output
    assert "Replayed 2 dead letters." in result.output
    assert states(ledger, a, b) == ["pending", "pending"]


def test_replay_by_filter_with_yes_leaves_the_rest(ledger: Ledger) -> None:
    a, b = dead(ledger, "a"), dead(ledger, "b", reason="invalid")
    result = run("replay", "--reason", "invalid", "--yes")
    assert result.exit_code == 0 and "?" not in result.output
    assert states(ledger, a, b) == ["dead", "pending"]


@pytest.mark.parametrize("verb", ["replay", "purge"])
def test_dry_run_lists_and_changes_nothing(ledger: Ledger, verb: str) -> None:
    a, b = dead(ledger, "a"), dead(ledger, "b")
    result = run(verb, "--all", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == [str(a), str(b)]
    past = {"replay": "replayed", "purge": "purged"}[verb]
    assert lines[-1].startswith(f"Would have {past} 2 dead letters")
    assert states(ledger, a, b) == ["dead", "dead"]


def test_purge_deletes_only_dead_letters(ledger: Ledger) -> None:
    a, b = dead(ledger, "a"), dead(ledger, "b", channel="viber")
    pending = record(ledger, "pending", channel="viber")
    result = run("purge", "--channel", "viber", answer="y\n")
    assert result.exit_code == 0, result.output
    assert (
        "Purge 1 dead letter? [y/N]" in result.output and "Purged 1 dead letter." in result.output
    )
    assert states(ledger, a, b, pending) == ["dead", None, "pending"]


@pytest.mark.parametrize("verb", ["replay", "purge"])
@pytest.mark.parametrize(
    ("args", "message"),
    [((), "IDs, --all, or a filter"), (("1", "--all"), "not both")],
)
def test_replay_and_purge_refuse_without_a_clear_selection(
    ledger: Ledger, verb: str, args: tuple[str, ...], message: str
) -> None:
    a = dead(ledger, "a")
    result = run(verb, *args, "--yes")
    assert result.exit_code == 2 and message in result.output
    assert states(ledger, a) == ["dead"]


def test_nothing_to_do_is_said_and_a_missing_id_exits_1(ledger: Ledger) -> None:
    record(ledger, "pending")
    result = run("replay", "--reason", "nope", "--yes")
    assert result.exit_code == 0 and "No dead letter matches" in result.output
    assert run("replay", "424242").exit_code == 1
