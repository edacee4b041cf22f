"""``contactsync import`` and ``contactsync status``: bulk-load contacts from a CSV file, and
see at a glance how channels, dead letters, workers, the ledger and the broker are doing.

Thin shells: the import is :mod:`worker.importer` (rows become commands recorded through
:func:`worker.submit.record`, as webhooks are), the status reads
:mod:`worker.stats` and :mod:`worker.deadletter`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from worker import submit
from worker.commands import CommandError
from worker.importer import (
    SOURCE,
    CsvFile,
    ImportFileError,
    ImportReport,
    ImportSpec,
    RowError,
    check_tags,
    known_keys,
    parse_renames,
    resolve_columns,
    run_import,
)
from worker.ledger import LedgerUnavailable
from worker.ledger.store import NewEvent, Recorded
from worker.runtime import Runtime

SHOWN_ERRORS = 5
"""Invalid rows the import's summary lists (``--rejects FILE`` writes them all)."""


def _runtime() -> Runtime:
    from webhooks.cli import _runtime as build

    runtime: Runtime = build(require_secrets=False)  # no API call here: tokens are not needed
    return runtime


def _fail(message: str) -> None:
    from webhooks.cli import _fail as fail

    fail(message)


def _redact(url: str) -> str:
    from webhooks.cli import _redact as redact

    return redact(url)


def _problem(error: BaseException) -> str:
    """The first line of an error, without the SQL a SQLAlchemy error carries."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _duration(seconds: float) -> str:
    """``45s``, ``4m 05s``, ``2h 05m``, ``3d 04h``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


# -- import -----------------------------------------------------------------------------------


def _delimiter(value: str) -> str:
    value = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(value, value)
    if len(value) != 1:
        raise click.BadParameter("one character, or \\t (tab)", param_hint="--delimiter")
    return value


class _Rejects:
    """Invalid rows, written as they are found: the row number, column, reason, then the
    row's own cells under the file's header."""

    def __init__(self, stream: IO[str], header: Sequence[str]) -> None:
        self.writer = csv.writer(stream)
        self.writer.writerow(["row", "column", "reason", *header])

    def __call__(self, number: int, cells: Sequence[str], error: RowError) -> None:
        self.writer.writerow([number, error.column or "", error.detail, *cells])


class _StopBetweenBatches:
    """The first Ctrl-C stops the import once the batch being recorded is committed (so the
    summary is exact); a second one stops it at once (the batch's transaction rolls back)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopBetweenBatches:
        try:
            self._previous = signal.signal(signal.SIGINT, self._interrupt)
        except ValueError:  # not the main thread: Ctrl-C stops at once
            self._previous = None
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _interrupt(self, _signum: int, _frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        click.echo("\nStopping after this batch (Ctrl-C again to stop now)...", err=True)


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--channel", required=True, help="The channel (in the config) to import into.")
@click.option(
    "--match", default="email", show_default=True, help="The field that names the contact."
)
@click.option("--tag", "tags", multiple=True, help="Add this tag to every contact (repeatable).")
@click.option(
    "--map",
    "renames",
    multiple=True,
    metavar="COLUMN=FIELD",
    help="Write a column to this field; COLUMN= leaves the column out (repeatable).",
)
@click.option("--delimiter", default=",", show_default=True, help="Cell separator; \\t for tab.")
@click.option("--dry-run", is_flag=True, help="Check every row and report; record nothing.")
@click.option(
    "--batch",
    "batch_size",
    default=500,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Rows recorded per transaction.",
)
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write every invalid row, with its reason, to this CSV file.",
)
def import_command(
    file: Path,
    channel: str,
    match: str,
    tags: tuple[str, ...],
    renames: tuple[str, ...],
    delimiter: str,
    dry_run: bool,
    batch_size: int,
    rejects: Path | None,
) -> None:
    """Import contacts from a CSV file: each row upserts one contact on the channel.

    The header row names the columns after contact fields (firstName, lastName, email,
    phone, language, profilePic) or custom field keys. Rows go through the ledger and the
    channel's rate limit like webhook events. Importing the same rows again records
    nothing new, so an interrupted import is resumed by running it again.
    """
    runtime = _runtime()
    config = runtime.config
    if channel not in config.channels:
        known = ", ".join(sorted(config.channels)) or "none"
        raise click.BadParameter(
            f"no channel {channel!r} (channels: {known})", param_hint="--channel"
        )
    custom = config.channels[channel].custom_fields
    custom_fields = frozenset(custom) if custom else None
    try:
        mapping = parse_renames(renames)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--map") from None
    try:
        tag_list = check_tags(tags)
    except CommandError as error:
        raise click.BadParameter(error.detail, param_hint="--tag") from None
    source = CsvFile(file, _delimiter(delimiter))
    try:
        header, total = source.scan()
        columns = resolve_columns(header, match=match, renames=mapping, custom_fields=custom_fields)
    except ImportFileError as error:
        _fail(f"{file}: {error}. Nothing was recorded.")
        return
    spec = ImportSpec(channel, columns, tag_list, custom_fields, file.name)
    click.echo(
        f"{file.name}: {_count(total, 'row')} for channel {channel}"
        + (f", tagged {', '.join(tag_list)}" if tag_list else "")
        + (" (dry run: nothing will be recorded)" if dry_run else "")
    )
    click.echo("Columns: " + "; ".join(columns.describe()))
    try:
        engine = runtime.ledger.engine
    except (SQLAlchemyError, LedgerUnavailable) as error:
        _fail(f"the ledger is unreachable ({_problem(error)}). Nothing was recorded.")
        return

    def record(batch: Sequence[NewEvent]) -> list[Recorded]:
        return submit.record(runtime.ledger, SOURCE, batch)

    report = ImportReport()
    outcome = "done"
    with contextlib.ExitStack() as stack:
        on_invalid = None
        if rejects is not None:
            stream = stack.enter_context(rejects.open("w", encoding="utf-8", newline=""))
            on_invalid = _Rejects(stream, header)
        batches = run_import(
            source.rows(),
            spec,
            report,
            record=None if dry_run else record,
            known=lambda keys: known_keys(engine, keys),
            batch_size=batch_size,
            on_invalid=on_invalid,
        )
        stack.callback(batches.close)
        label = "Checking" if dry_run else "Recording"
        try:
            with (
                _StopBetweenBatches() as stop,
                click.progressbar(length=total, label=label, file=sys.stderr) as bar,
            ):
                for taken in batches:
                    bar.update(taken)
                    if stop.requested:
                        outcome = "interrupted"
                        break
        except KeyboardInterrupt:
            outcome = "interrupted"
        except (LedgerUnavailable, SQLAlchemyError) as error:
            outcome = f"stopped: the ledger failed ({_problem(error)})"
        except (UnicodeDecodeError, csv.Error) as error:  # the file changed since it was read
            outcome = f"stopped: the file could not be read to its end ({error})"
    _summary(report, spec, runtime, dry_run=dry_run, outcome=outcome, rejects=rejects)
    if outcome != "done":
        sys.exit(130 if outcome == "interrupted" else 1)
    sys.exit(1 if report.invalid else 0)


def _summary(
    report: ImportReport,
    spec: ImportSpec,
    runtime: Runtime,
    *,
    dry_run: bool,
    outcome: str,
    rejects: Path | None,
) -> None:
    if outcome == "interrupted":
        click.echo(
            "Interrupted."
            if dry_run
            else "Interrupted. Run the same command again to "
            "import the rest: rows already recorded are skipped."
        )
    elif outcome != "done":
        click.echo(f"Import {outcome}. Run the same command again to import the rest.")
    read = f"{_count(report.rows, 'row')} read"
    if report.blank:
        read += f" ({report.blank:,} blank left out)"
    click.echo(read + ":")
    verb = "would be recorded" if dry_run else "recorded"
    click.echo(f"  {report.recorded:,} {verb}")
    click.echo(f"  {report.already:,} already imported")
    invalid = f"  {report.invalid:,} invalid"
    if report.invalid and rejects is not None:
        invalid += f" (all written to {rejects})"
    click.echo(invalid + (":" if report.invalid else ""))
    for error in report.errors[:SHOWN_ERRORS]:
        click.echo(click.style(f"    {error}", fg="yellow"))
    if report.invalid > SHOWN_ERRORS:
        more = f"    … and {report.invalid - SHOWN_ERRORS:,} more"
        click.echo(more + ("" if rejects else " (--rejects FILE writes them all)"))
    if report.recorded:
        limit = runtime.config.channels[spec.channel].rate_limit
        span = report.calls * limit.period_s / limit.calls
        click.echo(
            f"Applying them takes about {report.calls:,} API calls: at least {_duration(span)} at "
            f"{limit.calls} calls / {limit.period_s:g} s on channel {spec.channel}."
        )
    if dry_run:
        click.echo("Dry run: nothing was recorded.")
    else:
        click.echo("Watch progress: contactsync status")


# -- status -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Probe:
    reachable: bool
    url: str
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "reachable": self.reachable, "error": self.error}


def _probe_ledger(runtime: Runtime) -> _Probe:
    url = _redact(runtime.settings.ledger_url())
    try:
        with runtime.ledger.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:  # whatever it is, the operator needs to see it
        return _Probe(False, url, _problem(error))
    return _Probe(True, url)


def _probe_broker(runtime: Runtime) -> _Probe:
    url = _redact(runtime.settings.broker())
    try:
        with runtime.celery.connection_for_write() as connection:
            connection.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=3
            )
    except Exception as error:  # as above
        return _Probe(False, url, _problem(error))
    return _Probe(True, url)


def collect_status(runtime: Runtime, *, now: float | None = None) -> dict[str, Any]:
    """Everything ``contactsync status`` shows, as JSON-ready values."""
    from worker.deadletter import counts_by_reason, iso_utc
    from worker.stats import as_json, channels_view, workers_view

    now = time.time() if now is None else now
    ledger = _probe_ledger(runtime)
    snapshot: dict[str, Any] = {
        "at": iso_utc(now),
        "ledger": ledger.to_json(),
        "broker": _probe_broker(runtime).to_json(),
        "channels": None,
        "commands": None,
        "outbox": None,
        "dead_letters": None,
        "workers": None,
    }
    if not ledger.reachable:
        return snapshot
    engine = runtime.ledger.engine
    channels = []
    for view in channels_view(engine, runtime.config, now=now):
        channels.append({**as_json(view), "paused": view.paused_for_s > 0})
    by_reason = counts_by_reason(engine)
    snapshot.update(
        channels=channels,
        commands=runtime.ledger.counts(),
        outbox=runtime.ledger.outbox_size(),
        dead_letters={"total": sum(by_reason.values()), "by_reason": by_reason},
        workers=[as_json(view) for view in workers_view(engine, now=now)],
    )
    return snapshot


Cell = tuple[str, dict[str, Any]]
"""A table cell: its text and its ``click.style`` options."""


def _cell(value: object, **style: Any) -> Cell:
    return str(value), style


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[Cell]], *, right: set[int]
) -> Iterator[str]:
    """Aligned lines; ``right`` are the indexes of right-aligned (number) columns. Widths
    count the text, styles are added after padding, so colours do not break alignment."""
    widths = [
        max([len(header), *(len(row[index][0]) for row in rows)])
        for index, header in enumerate(headers)
    ]

    def pad(value: str, index: int) -> str:
        if index in right:
            return value.rjust(widths[index])
        return value if index == len(widths) - 1 else value.ljust(widths[index])

    yield click.style(
        "  ".join(pad(header, index) for index, header in enumerate(headers)).rstrip(), bold=True
    )
    for row in rows:
        cells = [click.style(pad(value, i), **style) for i, (value, style) in enumerate(row)]
        yield "  ".join(cells).rstrip()


def _reach(label: str, probe: dict[str, Any]) -> str:
    if probe["reachable"]:
        return f"{label:<8}{click.style('ok'.ljust(11), fg='green')}  {probe['url']}"
    state = click.style("UNREACHABLE", fg="red", bold=True)
    return f"{label:<8}{state}  {probe['url']}: {probe['error']}"


def _render(snapshot: dict[str, Any]) -> Iterator[str]:
    moment = snapshot["at"][:19].replace("T", " ") + " UTC"
    yield click.style(f"contactsync status at {moment}", bold=True)
    yield _reach("ledger", snapshot["ledger"])
    yield _reach("broker", snapshot["broker"])
    if snapshot["channels"] is None:
        yield "(nothing more to show without the ledger)"
        return
    yield ""
    rows = []
    for channel in snapshot["channels"]:
        age = channel["oldest_open_age_s"]
        paused = channel["paused_for_s"]
        rows.append(
            [
                _cell(channel["name"]),
                _cell(f"{channel['limit_calls']} / {channel['limit_period_s']:g} s"),
                _cell(f"{channel['calls_last_minute']:,}"),
                _cell(f"{channel['backlog']:,}", bold=channel["backlog"] > 0),
                _cell("-" if age is None else _duration(age)),
                _cell(f"for {_duration(paused)}", fg="yellow") if paused > 0 else _cell("no"),
                _cell("REFUSED", fg="red", bold=True) if channel["bad_token"] else _cell("ok"),
            ]
        )
    headers = ("CHANNEL", "LIMIT", "CALLS LAST MIN", "BACKLOG", "OLDEST", "PAUSED", "TOKEN")
    yield from _table(headers, rows, right={2, 3})
    for channel in snapshot["channels"]:
        if channel["bad_token"]:
            detail = channel["bad_token_detail"] or "401"
            yield click.style(f"  {channel['name']}: the API refused the token: {detail}", fg="red")
    counts = snapshot["commands"]
    yield ""
    yield "commands  " + " · ".join(f"{state} {count:,}" for state, count in counts.items())
    if snapshot["outbox"]:
        waiting = f"{snapshot['outbox']:,}"
        yield f"          {waiting} recorded, not yet published (a worker's relay will)"
    dead = snapshot["dead_letters"]
    yield ""
    if not dead["total"]:
        yield "dead letters  none"
    else:
        yield click.style(f"dead letters  {dead['total']:,}", fg="yellow", bold=True) + (
            "  (contactsync dlq list --reason REASON)"
        )
        reasons = [
            [_cell(reason), _cell(f"{count:,}")] for reason, count in dead["by_reason"].items()
        ]
        yield from _table(("REASON", "COUNT"), reasons, right={1})
    workers = snapshot["workers"]
    alive = sum(1 for worker in workers if worker["alive"])
    yield ""
    yield f"workers  {alive} alive, {len(workers) - alive} gone"
    if workers:
        rows = [
            [
                _cell(worker["name"]),
                _cell(f"{_duration(worker['seen_ago_s'])} ago"),
                _cell(f"{worker['done']:,}"),
                _cell("alive", fg="green") if worker["alive"] else _cell("gone", fg="red"),
            ]
            for worker in workers
        ]
        yield from _table(("NAME", "LAST SEEN", "DONE", "STATE"), rows, right={2})
    backlog = sum(channel["backlog"] for channel in snapshot["channels"])
    if backlog and not alive:
        yield click.style(
            f"{_count(backlog, 'command')} waiting and no worker alive: start `contactsync worker`",
            fg="yellow",
            bold=True,
        )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
def status(as_json: bool) -> None:
    """Show channels, dead letters, workers, and whether the ledger and broker answer.

    Per channel: its limit, calls in the last minute, backlog and the age of its oldest
    open command, a pause after a 429, a refused token. Exits 1 when the ledger or the
    broker does not answer."""
    snapshot = collect_status(_runtime())
    if as_json:
        click.echo(json.dumps(snapshot, ensure_ascii=False))
    else:
        for line in _render(snapshot):
            click.echo(line)
    reachable = snapshot["ledger"]["reachable"] and snapshot["broker"]["reachable"]
    sys.exit(0 if reachable else 1)
