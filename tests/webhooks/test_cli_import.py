"""``contactsync import``: a CSV file's rows become upserts recorded under source ``import``
(through the same ledger, and then the same worker code, as webhook events), with header
and row errors named, a dry run, resuming, and the encodings a spreadsheet writes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from source_kit import SourceKit
from sqlalchemy import select

from webhooks.cli import main
from worker.commands import ContactRef, make_command
from worker.importer import (
    HeaderError,
    parse_renames,
    resolve_columns,
    row_key,
)
from worker.ledger.schema import events
from worker.ledger.store import NewEvent, Recorded
from worker.runtime import set_runtime

HEADER = "email,firstName,lastName,customerid"
ROWS = [
    "ann@example.com,Ann,Lee,c-1",
    "bob@example.com,Bob,,c-2",
    "cat@example.com,Cat,Wu,",
    "dan@example.com,Dan,Ng,c-4",
]


@pytest.fixture
def kit(source_kit: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[SourceKit]:
    """A ledger and the sandbox; the CLI reads the kit's config and data folder."""
    made: SourceKit = source_kit({})
    monkeypatch.setenv("CONTACTSYNC_CONFIG", str(made.runtime.settings.config))
    monkeypatch.setenv("CONTACTSYNC_DATA_DIR", str(made.runtime.settings.data_dir))
    for name in ("DATABASE_URL", "BROKER_URL", "API_BASE_URL", "LOG_LEVEL", "LOG_FORMAT"):
        monkeypatch.delenv(f"CONTACTSYNC_{name}", raising=False)
    # The CLI points the root logger at the runner's stderr, which closes after each run.
    monkeypatch.setattr("webhooks.cli.setup_logging", lambda *_args: None)
    made.runtime.ledger  # noqa: B018 - migrate before the CLI reads
    yield made
    set_runtime(None)


def write_csv(path: Path, lines: Sequence[str], *, encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["import", *args])


def imported(kit: SourceKit) -> list[dict[str, Any]]:
    with kit.runtime.ledger.engine.connect() as connection:
        rows = connection.execute(select(events).where(events.c.source == "import"))
        return [dict(row) for row in rows.mappings()]


def test_rows_are_recorded_as_upserts_and_reach_the_sandbox(kit: SourceKit, tmp_path: Path) -> None:
    csv_file = write_csv(tmp_path / "contacts.csv", [HEADER, *ROWS])
    result = run(str(csv_file), "--channel", "main", "--tag", "imported", "--tag", "spring")
    assert result.exit_code == 0, result.output
    assert "contacts.csv: 4 rows for channel main, tagged imported, spring" in result.output
    assert "4 recorded" in result.output and "0 already imported" in result.output
    assert "0 invalid" in result.output and "contactsync status" in result.output
    recorded = kit.recorded()
    assert [row["kind"] for row in recorded] == ["upsert"] * 4
    assert recorded[1]["payload"] == {
        "fields": {"email": "bob@example.com", "firstName": "Bob", "customerid": "c-2"},
        "tags": ["imported", "spring"],
    }
    assert recorded[1]["match_field"] == "email" and recorded[1]["channel"] == "main"
    (event,) = [e for e in imported(kit) if e["id"] == recorded[1]["event_id"]]
    assert event["type"] == "contact.upsert" and event["key"].startswith("csv1:")
    assert event["payload"]["file"] == "contacts.csv" and event["payload"]["row"] == 3

    assert kit.apply_all() == ["done"] * 4
    ann = kit.contact("email", "ann@example.com")
    assert ann["custom_fields"] == {
        "email": "ann@example.com",
        "firstName": "Ann",
        "lastName": "Lee",
        "customerid": "c-1",
    }
    assert ann["tags"] == ["imported", "spring"]
    assert "lastName" not in kit.contact("email", "bob@example.com")["custom_fields"]


def test_a_header_error_names_the_column_and_records_nothing(
    kit: SourceKit, tmp_path: Path
) -> None:
    csv_file = write_csv(tmp_path / "c.csv", ["email,gender,Plan Name", "a@x.io,f,gold"])
    result = run(str(csv_file), "--channel", "main")
    assert result.exit_code == 2
    assert "column 'gender': is read-only" in result.output
    assert "Nothing was recorded." in result.output
    result = run(str(csv_file), "--channel", "main", "--map", "gender=")
    assert result.exit_code == 2
    assert "column 'Plan Name': is not a contact field" in result.output
    assert "--map 'Plan Name=FIELD'" in result.output
    assert imported(kit) == []
    result = run(str(csv_file), "--channel", "main", "--map", "gender=", "--map", "Plan Name=plan")
    assert result.exit_code == 0, result.output
    assert "gender: left out" in result.output and "Plan Name -> plan" in result.output
    assert kit.recorded()[0]["payload"]["fields"] == {"email": "a@x.io", "plan": "gold"}


@pytest.mark.parametrize(
    ("header", "args", "message"),
    [
        ("firstName,lastName", (), "no column for the match field 'email'"),
        ("email,Email", (), "column 'Email': writes 'email', as column 'email' does"),
        ("email,email", (), "column 'email': appears twice in the header (columns 1 and 2)"),
        ("email,firstName", ("--map", "first=lastName"), "column 'first': --map names no column"),
        ("email,firstName", ("--match", "e-mail"), "--match 'e-mail': is not a contact field"),
        ("email;firstName", (), "are the cells separated by ';'? pass --delimiter ';'"),
    ],
)
def test_header_problems_are_named(
    kit: SourceKit, tmp_path: Path, header: str, args: tuple[str, ...], message: str
) -> None:
    csv_file = write_csv(tmp_path / "c.csv", [header, "a@x.io,Ann"])
    result = run(str(csv_file), "--channel", "main", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert imported(kit) == []


def test_a_channel_with_declared_custom_fields_refuses_other_columns(
    kit: SourceKit, tmp_path: Path
) -> None:
    config = Path(os.environ["CONTACTSYNC_CONFIG"])
    document = yaml.safe_load(config.read_text())
    document["channels"]["crm"]["custom_fields"] = ["customerid", "isLead", "hubspot_id"]
    config.write_text(yaml.safe_dump(document))
    csv_file = write_csv(tmp_path / "c.csv", ["email,customerid,plan", "a@x.io,c-1,gold"])
    result = run(str(csv_file), "--channel", "crm")
    assert result.exit_code == 2
    assert "column 'plan': is not one of the channel's custom fields" in result.output
    result = run(str(csv_file), "--channel", "crm", "--map", "plan=")
    assert result.exit_code == 0, result.output
    assert kit.apply_all() == ["done"]
    assert kit.contact("customerid", "c-1", channel="crm")["custom_fields"]["email"] == "a@x.io"


def test_invalid_rows_are_reported_by_row_and_column_and_the_rest_recorded(
    kit: SourceKit, tmp_path: Path
) -> None:
    lines = [
        HEADER,
        ROWS[0],
        ",NoEmail,,",  # row 3
        f"long@example.com,{'x' * 5000},,",  # row 4
        "",  # row 5: blank, left out
        "extra@example.com,A,B,C,D",  # row 6
        ROWS[1],
    ]
    csv_file = write_csv(tmp_path / "c.csv", lines)
    rejects = tmp_path / "rejects.csv"
    result = run(str(csv_file), "--channel", "main", "--rejects", str(rejects))
    assert result.exit_code == 1, result.output
    out = result.output
    assert "5 rows read (1 blank left out)" in out
    assert "2 recorded" in out and f"3 invalid (all written to {rejects})" in out
    assert "row 3, email: empty: it holds the match field 'email'" in out
    assert "row 4, firstName: longer than 4096 characters" in out
    assert "row 6: has 5 cells; the header has 4" in out
    assert len(kit.recorded()) == 2
    written = rejects.read_text().splitlines()
    assert written[0] == "row,column,reason," + HEADER
    assert written[1].startswith("3,email,empty: it holds the match field 'email',,NoEmail")
    assert [line.split(",")[0] for line in written[1:]] == ["3", "4", "6"]


def test_a_dry_run_checks_and_records_nothing(kit: SourceKit, tmp_path: Path) -> None:
    csv_file = write_csv(tmp_path / "c.csv", [HEADER, *ROWS, ",x,,"])
    result = run(str(csv_file), "--channel", "main", "--dry-run")
    assert result.exit_code == 1, result.output
    assert "(dry run: nothing will be recorded)" in result.output
    assert "4 would be recorded" in result.output and "1 invalid" in result.output
    assert "Dry run: nothing was recorded." in result.output
    assert imported(kit) == [] and kit.recorded() == []
    assert run(str(csv_file), "--channel", "main").exit_code == 1
    result = run(str(csv_file), "--channel", "main", "--dry-run")
    assert "0 would be recorded" in result.output and "4 already imported" in result.output


def test_importing_the_same_file_again_records_nothing_new(kit: SourceKit, tmp_path: Path) -> None:
    csv_file = write_csv(tmp_path / "c.csv", [HEADER, *ROWS])
    assert run(str(csv_file), "--channel", "main").exit_code == 0
    before = kit.recorded()
    result = run(str(csv_file), "--channel", "main", "--batch", "3")
    assert result.exit_code == 0, result.output
    assert "0 recorded" in result.output and "4 already imported" in result.output
    assert kit.recorded() == before
    # The same rows in another order and another file are the same rows.
    reordered = write_csv(
        tmp_path / "other.csv",
        ["customerid,lastName,firstName,email", "c-1,Lee,Ann,ann@example.com"],
    )
    result = run(str(reordered), "--channel", "main")
    assert "0 recorded" in result.output and "1 already imported" in result.output
    # A changed value, another tag or another channel is new work.
    result = run(str(csv_file), "--channel", "main", "--tag", "again")
    assert "4 recorded" in result.output
    result = run(str(csv_file), "--channel", "crm")
    assert "4 recorded" in result.output


def test_an_interrupted_import_is_resumed_by_running_it_again(
    kit: SourceKit, tmp_path: Path
) -> None:
    rows = [f"user{i}@example.com,User{i},,c-{i}" for i in range(10)]
    half = write_csv(tmp_path / "contacts.csv", [HEADER, *rows[:5]])
    assert run(str(half), "--channel", "main", "--batch", "2").exit_code == 0
    whole = write_csv(tmp_path / "contacts.csv", [HEADER, *rows])
    result = run(str(whole), "--channel", "main", "--batch", "2")
    assert result.exit_code == 0, result.output
    assert "5 recorded" in result.output and "5 already imported" in result.output
    assert len(kit.recorded()) == 10
    assert kit.apply_all() == ["done"] * 10
    assert len(kit.sandbox.state.contacts("main")) == 10  # each contact once


def test_ctrl_c_stops_after_the_batch_being_recorded(
    kit: SourceKit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from webhooks import cli_ops

    real = cli_ops.submit.record
    calls = []

    def record_then_interrupt(*args: Any) -> list[Recorded]:
        recorded = real(*args)
        calls.append(len(recorded))
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C while the first batch records
        return recorded

    monkeypatch.setattr(cli_ops.submit, "record", record_then_interrupt)
    csv_file = write_csv(tmp_path / "c.csv", [HEADER, *ROWS])
    handler = signal.getsignal(signal.SIGINT)
    result = run(str(csv_file), "--channel", "main", "--batch", "2")
    assert result.exit_code == 130, result.output
    assert "Interrupted. Run the same command again" in result.output
    assert "2 recorded" in result.output and calls == [2]
    assert signal.getsignal(signal.SIGINT) is handler  # put back
    monkeypatch.setattr(cli_ops.submit, "record", real)
    result = run(str(csv_file), "--channel", "main", "--batch", "2")
    assert "2 recorded" in result.output and "2 already imported" in result.output


def test_utf8_with_a_byte_order_mark_is_read(kit: SourceKit, tmp_path: Path) -> None:
    csv_file = write_csv(
        tmp_path / "c.csv", ["email,firstName", "jo@x.io,José"], encoding="utf-8-sig"
    )
    result = run(str(csv_file), "--channel", "main")
    assert result.exit_code == 0, result.output
    assert "Columns: email (match); firstName" in result.output
    assert kit.recorded()[0]["payload"]["fields"]["firstName"] == "José"


@pytest.mark.parametrize(
    ("encoding", "message"),
    [
        ("latin-1", "not UTF-8 (line 3, byte 0xe9 at position 12)"),
        ("utf-16", "the file is UTF-16; save it as UTF-8"),
    ],
)
def test_another_encoding_is_a_clear_error(
    kit: SourceKit, tmp_path: Path, encoding: str, message: str
) -> None:
    lines = ["email,firstName", "ann@x.io,Ann", "jo@x.io,José"]
    result = run(str(write_csv(tmp_path / "c.csv", lines, encoding=encoding)), "--channel", "main")
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Nothing was recorded." in result.output and imported(kit) == []


def test_headers_in_another_case_or_spacing_name_the_standard_fields(
    kit: SourceKit, tmp_path: Path
) -> None:
    lines = ["E-mail,First Name,last_name,PHONE", "a@x.io,Ann,Lee,+60123456789"]
    result = run(str(write_csv(tmp_path / "c.csv", lines)), "--channel", "main", "--match", "phone")
    assert result.exit_code == 0, result.output
    assert "E-mail -> email; First Name -> firstName" in result.output
    (command,) = kit.recorded()
    assert command["match_field"] == "phone" and command["match_value"] == "+60123456789"
    assert command["payload"]["fields"] == {
        "email": "a@x.io",
        "firstName": "Ann",
        "lastName": "Lee",
        "phone": "+60123456789",
    }


def test_bad_options_are_usage_errors(kit: SourceKit, tmp_path: Path) -> None:
    csv_file = write_csv(tmp_path / "c.csv", [HEADER, *ROWS])
    for args, message in [
        (("--channel", "mian"), "no channel 'mian' (channels: crm, main)"),
        (("--channel", "main", "--tag", " "), "--tag: must be a non-empty string"),
        (("--channel", "main", "--map", "email"), "write COLUMN=FIELD"),
        (("--channel", "main", "--delimiter", ";;"), "one character"),
    ]:
        result = run(str(csv_file), *args)
        assert result.exit_code == 2 and message in result.output, result.output
    assert imported(kit) == []


def test_the_row_key_is_what_the_row_asks_for() -> None:
    ref = ContactRef(match_field="email", match_value="a@x.io")
    one = make_command("upsert", "main", ref, fields={"a": "1", "b": "2"}, tags=["x", "y"])
    same = make_command("upsert", "main", ref, fields={"b": "2", "a": "1"}, tags=["y", "x"])
    other = make_command("upsert", "crm", ref, fields={"a": "1", "b": "2"}, tags=["x", "y"])
    assert row_key(one) == row_key(same) != row_key(other)
    assert len(row_key(one)) <= 300  # the ledger's key column
    assert isinstance(NewEvent(row_key(one), "contact.upsert", {}, [one]).key, str)


def test_renames_and_column_resolution() -> None:
    assert parse_renames(["a=b", "x y=", "k=v=w"]) == {"a": "b", "x y": None, "k=v": "w"}
    with pytest.raises(ValueError, match="COLUMN=FIELD"):
        parse_renames(["=email"])
    columns = resolve_columns(["Email", "", "notes"], match="email", renames={"notes": None})
    assert columns.targets == ("email", None, None) and columns.match_column == "Email"
    with pytest.raises(HeaderError) as caught:
        resolve_columns(["email", "timezone"], match="email")
    assert caught.value.column == "timezone"
