"""``contactsync dlq``: find, read, replay and purge dead letters from a terminal.

A thin shell over :mod:`worker.deadletter`; options are read by :mod:`webhooks.selection`,
as the admin API reads its parameters. Replay and purge need IDs, ``--all`` or a filter;
more than one dead letter asks for confirmation unless ``--yes``; ``--dry-run`` only lists.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import click
from sqlalchemy import Engine

from webhooks.selection import SelectionError, filter_from
from worker.deadletter import (
    DeadLetter,
    DeadLetterFilter,
    count_dead,
    dead_id_batches,
    get_dead,
    list_dead,
    newest_dead_id,
    purge_batches,
    replay_batches,
)
from worker.runtime import Runtime

_COLUMNS = (
    *("ID", "FINISHED (UTC)", "CHANNEL", "SOURCE", "CONTACT"),
    *("KIND", "REASON", "STATUS", "ATTEMPTS", "MESSAGE"),
)
_WIDEST = {"CHANNEL": 20, "SOURCE": 20, "CONTACT": 32, "REASON": 24, "MESSAGE": 48}


def _runtime() -> Runtime:
    from webhooks.cli import _runtime as build

    runtime: Runtime = build(require_secrets=False)  # no API call here: tokens are not needed
    return runtime


_FILTERS = (
    click.option("--channel", help="Only this channel."),
    click.option("--reason", help="Only this reason (forbidden, invalid, ...)."),
    click.option("--source", help="Only events from this webhook source."),
    click.option("--since", help="Died at or after: 2h, 3d (ago), 2024-06-01, an ISO time."),
)
_VERBS = {"replay": ("Replaying", "replayed"), "purge": ("Purging", "purged")}


def _options(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def apply(function: Any) -> Any:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


COMMAND_ID = click.IntRange(1, 2**63 - 1)
"""A command id as the ledger keeps it (a 64-bit SQL integer from 1): anything else is a
usage error rather than a database error."""


def _selection_options(verb: str) -> Callable[[Any], Any]:
    return _options(
        click.argument("ids", nargs=-1, type=COMMAND_ID),
        click.option("--all", "everything", is_flag=True, help="Every dead letter."),
        *_FILTERS,
        click.option("--dry-run", is_flag=True, help=f"Only list what would be {_VERBS[verb][1]}."),
        click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation."),
    )


def _filter(ids: tuple[int, ...], options: dict[str, str | None]) -> DeadLetterFilter:
    given = {key: value for key, value in options.items() if value is not None}
    try:
        return filter_from(given, ids=list(ids) if ids else None)
    except SelectionError as error:
        raise click.BadParameter(error.detail, param_hint=f"--{error.param}") from None


def _plural(count: int) -> str:
    return f"{count} dead letter{'' if count == 1 else 's'}"


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _cells(letter: DeadLetter) -> list[str]:
    status = "-" if letter.last_status is None else str(letter.last_status)
    cells = [str(letter.id), _when(letter.finished_at), letter.channel, letter.source]
    cells += [letter.contact, letter.kind, letter.reason or "-", status, str(letter.attempts)]
    return [*cells, letter.last_error or "-"]


def _table(letters: list[DeadLetter], *, header: bool = True) -> Iterator[str]:
    rows = [
        [_clip(cell, _WIDEST.get(name, 40)) for name, cell in zip(_COLUMNS, _cells(x), strict=True)]
        for x in letters
    ]
    widths = [max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(_COLUMNS)]
    for row in [list(_COLUMNS)] * header + rows:
        yield "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()


@click.group()
def dlq() -> None:
    """Dead letters: commands that cannot succeed without an operator."""


@dlq.command("list")
@_options(*_FILTERS)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--offset", default=0, type=click.IntRange(0), help="Skip this many first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_command(limit: int, offset: int, as_json: bool, **options: str | None) -> None:
    """List dead letters, newest first."""
    chosen = _filter((), options)
    engine = _runtime().ledger.engine
    letters = list_dead(engine, chosen, limit=limit, offset=offset)
    if as_json:
        for letter in letters:
            click.echo(json.dumps(letter.to_json(), ensure_ascii=False))
        return
    for line in _table(letters):
        click.echo(line)
    click.echo(f"{len(letters)} of {_plural(count_dead(engine, chosen))}")


@dlq.command()
@click.argument("command_id", type=COMMAND_ID)
def show(command_id: int) -> None:
    """Show one dead letter in full: payload, source event, the API's message."""
    letter = get_dead(_runtime().ledger.engine, command_id)
    if letter is None:
        click.echo(
            f"contactsync: no dead letter {command_id} (no such command, or not dead)", err=True
        )
        sys.exit(1)
    times = letter.to_json()
    for label, value in (
        ("id", letter.id),
        ("kind", letter.kind),
        ("channel", letter.channel),
        ("contact", letter.contact_key),
        ("contact id", letter.contact_id or "-"),
        ("sequence", letter.seq),
        (
            "event",
            f"{letter.source} / {letter.event_key} ({letter.event_type}, #{letter.event_id})",
        ),
        ("reason", letter.reason or "-"),
        ("HTTP status", letter.last_status or "-"),
        ("attempts", letter.attempts),
        ("created", times["created_at"]),
        ("updated", times["updated_at"]),
        ("finished", times["finished_at"] or "-"),
    ):
        click.echo(f"{label + ':':<13}{value}")
    click.echo(f"{'message:':<13}{letter.last_error or '-'}")
    click.echo("payload:")
    click.echo(json.dumps(letter.payload, indent=2, ensure_ascii=False, sort_keys=True))


def _run(
    verb: str,
    selected: tuple[tuple[int, ...], bool, dict[str, str | None]],
    dry_run: bool,
    yes: bool,
    act: Callable[[Runtime, DeadLetterFilter, int], Iterator[int]],
) -> int:
    """Select, confirm and ``act`` batch by batch; returns how many were changed."""
    ids, everything, options = selected
    filtered = any(value is not None for value in options.values())
    if ids and everything:
        raise click.UsageError("give IDs or --all, not both")
    if not (ids or everything or filtered):
        raise click.UsageError(
            f"say which dead letters to {verb}: IDs, --all, or a filter "
            "(--channel, --reason, --source, --since)"
        )
    chosen = _filter(ids, options)
    runtime = _runtime()
    engine = runtime.ledger.engine
    newest = newest_dead_id(engine, chosen)
    total = 0 if newest is None else count_dead(engine, chosen)
    if newest is None or total == 0:
        click.echo("No dead letter matches: nothing to do.", err=bool(ids))
        sys.exit(1 if ids else 0)
    if len(set(ids)) > total:
        click.echo(f"Skipping {len(set(ids)) - total} of the IDs: not dead letters.", err=True)
    doing, done = _VERBS[verb]
    if dry_run:
        _list_all(engine, chosen, newest)
        click.echo(f"Would have {done} {_plural(total)} (dry run: nothing changed).")
        return 0
    bulk = len(ids) > 1 or everything or filtered
    if bulk and not yes and not click.confirm(f"{verb.capitalize()} {_plural(total)}?"):
        click.echo(f"Nothing {done}.")
        sys.exit(1)
    changed = 0
    with click.progressbar(length=total, label=doing, file=sys.stderr) as bar:
        for count in act(runtime, chosen, newest):
            changed += count
            bar.update(count)
    click.echo(f"{done.capitalize()} {_plural(changed)}.")
    return changed


def _list_all(engine: Engine, chosen: DeadLetterFilter, newest: int) -> None:
    first = True
    for ids in dead_id_batches(engine, chosen, up_to_id=newest):
        letters = list_dead(engine, DeadLetterFilter(ids=ids), limit=len(ids))
        for line in _table(sorted(letters, key=lambda letter: letter.id), header=first):
            click.echo(line)
        first = False


@dlq.command()
@_selection_options("replay")
def replay(
    ids: tuple[int, ...], everything: bool, dry_run: bool, yes: bool, **options: str | None
) -> None:
    """Put dead letters back to pending and publish them: IDs, --all or a filter."""
    published = 0

    def act(runtime: Runtime, chosen: DeadLetterFilter, newest: int) -> Iterator[int]:
        nonlocal published
        for batch in replay_batches(runtime, chosen, up_to_id=newest):
            published += batch.published
            yield len(batch.ids)

    if _run("replay", (ids, everything, options), dry_run, yes, act) > published:
        click.echo(f"{published} published; the reconciler publishes the rest from the ledger.")


@dlq.command()
@_selection_options("purge")
def purge(
    ids: tuple[int, ...], everything: bool, dry_run: bool, yes: bool, **options: str | None
) -> None:
    """Delete dead letters for good: IDs, --all or a filter. Their events stay recorded."""

    def act(runtime: Runtime, chosen: DeadLetterFilter, newest: int) -> Iterator[int]:
        return purge_batches(runtime.ledger.engine, chosen, up_to_id=newest)

    _run("purge", (ids, everything, options), dry_run, yes, act)
