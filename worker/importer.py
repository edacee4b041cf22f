"""Bulk import of contacts from a CSV file, through the same ledger and limiter as webhooks.

Each data row becomes one ``upsert`` command (with the import's tags), recorded as an event
of source :data:`SOURCE` whose key is a hash of what the row asks for (channel, match,
fields, tags). Recording a key the ledger already holds is a duplicate with no second
effect, so importing a file again (after Ctrl-C, or a second time by mistake) records only
the rows not recorded yet. Rows are read as a stream and recorded a batch at a time, each
batch in one transaction: a file of a million rows is never held in memory.

The CLI (``contactsync import``) is a thin shell over this module; it does no Click here.

Errors::

    ImportFileError        the file as a whole: not UTF-8, not CSV, empty   (nothing recorded)
     └── HeaderError       a column that names no writable field, a --map for a column that
                           is not there, two columns for one field, no column for the match
    RowError               one row: its number (the header is row 1), the column, the reason
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from worker import merge
from worker.commands import Command, CommandError, ContactRef, make_command
from worker.contacts_api import limits
from worker.ledger.schema import events
from worker.ledger.store import NewEvent, Recorded

SOURCE = "import"
"""The source name of imported rows' events (``contactsync dlq list --source import``)."""
EVENT_TYPE = "contact.upsert"
KEY_PREFIX = "csv1:"
"""Versions the key scheme: a change to what the hash covers must change this."""
KEPT_ERRORS = 10
"""Invalid rows whose reasons a report keeps (it counts them all)."""

_LOOSE = re.compile(r"[\s_\-.]+")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class ImportFileError(Exception):
    """The file cannot be imported at all; nothing was recorded."""


class HeaderError(ImportFileError):
    """The header row (or a ``--map``) is wrong; ``column`` names the column."""

    def __init__(self, column: str | None, detail: str) -> None:
        super().__init__(f"column {column!r}: {detail}" if column is not None else detail)
        self.column = column
        self.detail = detail


class RowError(Exception):
    """One invalid row: its number as a spreadsheet shows it, the column and the reason."""

    def __init__(self, row: int, column: str | None, detail: str) -> None:
        where = f"row {row}, {column}" if column else f"row {row}"
        super().__init__(f"{where}: {detail}")
        self.row = row
        self.column = column
        self.detail = detail


@dataclass(frozen=True)
class Columns:
    """The header, resolved: the contact field each column writes (None: left out)."""

    names: tuple[str, ...]
    targets: tuple[str | None, ...]
    match: str
    """The field that names the contact."""

    @property
    def match_column(self) -> str:
        """The column that holds the match value."""
        return self.names[self.targets.index(self.match)]

    def column_of(self, target: str) -> str:
        """The column that writes ``target``."""
        return self.names[self.targets.index(target)]

    def describe(self) -> list[str]:
        """One ``column -> field`` line per column, as an operator should check them."""
        lines = []
        for index, (name, target) in enumerate(zip(self.names, self.targets, strict=True)):
            shown = name or f"(column {index + 1}, no name)"
            if target is None:
                lines.append(f"{shown}: left out")
            elif target == name:
                lines.append(f"{shown}{' (match)' if target == self.match else ''}")
            else:
                lines.append(f"{shown} -> {target}{' (match)' if target == self.match else ''}")
        return lines


def parse_renames(items: Sequence[str]) -> dict[str, str | None]:
    """``--map`` values: ``column=field`` renames a column, ``column=`` leaves it out."""
    renames: dict[str, str | None] = {}
    for item in items:
        column, equals, target = item.rpartition("=")
        if not equals or not column.strip():
            raise ValueError(f"{item!r}: write COLUMN=FIELD (or COLUMN= to leave it out)")
        renames[column.strip()] = target.strip() or None
    return renames


def _standard_alias(name: str) -> str | None:
    """The standard field a header means when it differs only in case or separators
    (``Email``, ``first_name``, ``Last Name``)."""
    loose = _LOOSE.sub("", name).lower()
    found = [standard for standard in limits.STANDARD_FIELDS if standard.lower() == loose]
    return found[0] if found else None


def resolve_columns(
    header: Sequence[str],
    *,
    match: str,
    renames: Mapping[str, str | None] | None = None,
    custom_fields: frozenset[str] | None = None,
) -> Columns:
    """Decide what each column writes, or raise :class:`HeaderError` naming the column.

    A column writes the field it is named after: a standard field (also when written in
    another case or with separators: ``Email``, ``First Name``), else a custom field key
    (only the channel's, when they are known). ``renames`` (``--map``) overrides that; a
    column without a name is left out.
    """
    renames = dict(renames or {})
    names = tuple(name.strip() for name in header)
    for column in renames:
        if column not in names:
            raise HeaderError(column, f"--map names no column of the header ({_listed(names)})")
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name and name in seen:
            raise HeaderError(
                name, f"appears twice in the header (columns {seen[name] + 1} and {index + 1})"
            )
        seen[name] = index
    if limits.invalid_field_names([match], custom_fields):
        raise HeaderError(None, f"--match {match!r}: {_why_not(match, custom_fields)}")
    targets = [_target(name, renames, custom_fields) for name in names]
    owners: dict[str, str] = {}
    for name, target in zip(names, targets, strict=True):
        if target is None:
            continue
        if target in owners:
            raise HeaderError(name, f"writes {target!r}, as column {owners[target]!r} does")
        owners[target] = name
    if match not in owners:
        raise HeaderError(
            None,
            f"no column for the match field {match!r} (columns: {_listed(names)}); "
            f"name one {match!r}, map one with --map 'COLUMN={match}', or choose --match",
        )
    return Columns(names, tuple(targets), match)


def _target(
    name: str, renames: Mapping[str, str | None], custom_fields: frozenset[str] | None
) -> str | None:
    """The field a column writes: as renamed, else as named (a declared custom field, a
    standard field in any case, another well-formed key); None when left out."""
    if name in renames:
        target = renames[name]
        if target is not None and limits.invalid_field_names([target], custom_fields):
            raise HeaderError(name, f"--map to {target!r}: {_why_not(target, custom_fields)}")
        return target
    if not name:
        return None
    if name in limits.STANDARD_FIELDS:
        return name
    valid = not limits.invalid_field_names([name], custom_fields)
    if valid and custom_fields is not None:
        return name  # one of the channel's custom fields, whatever it looks like
    alias = _standard_alias(name)
    if alias is not None:
        return alias
    if valid:
        return name
    separator = next((s for s in ";\t|" if s in name), None)
    if separator is not None:
        shown = "\\t" if separator == "\t" else separator
        raise HeaderError(
            name,
            f"is not a field name; are the cells separated by '{shown}'? "
            f"pass --delimiter '{shown}'",
        )
    hint = f"; rename it with --map '{name}=FIELD', or leave it out with --map '{name}='"
    raise HeaderError(name, _why_not(name, custom_fields) + hint)


def _listed(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names if name) or "none"


def _why_not(name: str, custom_fields: frozenset[str] | None) -> str:
    if name in limits.READ_ONLY_FIELDS:
        return "is read-only in the Contacts API"
    if limits.CUSTOM_FIELD_KEY.match(name) is None:
        standard = ", ".join(sorted(limits.STANDARD_FIELDS))
        return f"is not a contact field ({standard}) or a custom field key"
    assert custom_fields is not None
    return f"is not one of the channel's custom fields ({', '.join(sorted(custom_fields))})"


# -- reading the file -----------------------------------------------------------------------


@dataclass(frozen=True)
class CsvFile:
    """A CSV file to import: where it is and how its cells are separated."""

    path: Path
    delimiter: str = ","

    def _open(self) -> Any:
        # utf-8-sig: a byte order mark (Excel's "CSV UTF-8") is read and dropped.
        return self.path.open(encoding="utf-8-sig", errors="strict", newline="")

    def scan(self) -> tuple[list[str], int]:
        """Read the whole file once: its header and how many rows follow it. Raises
        :class:`ImportFileError` for what would stop an import half way (encoding, CSV
        syntax), so that nothing is recorded from a file that cannot be read to its end."""
        try:
            with self.path.open("rb") as raw:
                start = raw.read(4)
        except OSError as error:
            raise ImportFileError(f"cannot read it ({error.strerror})") from None
        if start.startswith(_UTF16_BOMS):
            raise ImportFileError(
                'the file is UTF-16; save it as UTF-8 ("CSV UTF-8") and import it again'
            )
        count = 0
        header: list[str] | None = None
        try:
            with self._open() as text:
                reader = csv.reader(text, delimiter=self.delimiter, strict=True)
                for cells in reader:
                    if header is None:
                        header = cells
                    else:
                        count += 1
        except UnicodeDecodeError:
            raise ImportFileError(self._encoding_problem()) from None
        except csv.Error as error:
            raise ImportFileError(f"not valid CSV at line {reader.line_num}: {error}") from None
        if not header or not any(name.strip() for name in header):
            raise ImportFileError("no header row (the first row names the columns)")
        return header, count

    def _encoding_problem(self) -> str:
        """Where the file stops being UTF-8, as a message that says what to do."""
        with self.path.open("rb") as raw:
            for number, line in enumerate(raw, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as error:
                    byte = line[error.start]
                    return (
                        f"not UTF-8 (line {number}, byte 0x{byte:02x} at position "
                        f'{error.start + 1}); save the file as UTF-8 ("CSV UTF-8") and import '
                        "it again"
                    )
        return "not UTF-8; save the file as UTF-8 and import it again"

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """``(row number, cells)`` for every row after the header, read as a stream. Row
        numbers are a spreadsheet's: the header is row 1."""
        with self._open() as text:
            reader = csv.reader(text, delimiter=self.delimiter, strict=True)
            next(reader, None)
            yield from enumerate(reader, start=2)


# -- rows to events -------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportSpec:
    """What every row of one import shares."""

    channel: str
    columns: Columns
    tags: tuple[str, ...] = ()
    custom_fields: frozenset[str] | None = None
    file_name: str = ""


def check_tags(tags: Sequence[str]) -> tuple[str, ...]:
    """The import's tags, validated as a command's: raises :class:`CommandError`."""
    if not tags:
        return ()
    probe = ContactRef(match_field="email", match_value="probe")
    return make_command("upsert", "probe", probe, tags=list(tags)).tags


def row_key(command: Command) -> str:
    """The event key of a row: a hash of what it asks for, so that the same row imported
    again (from this file or another) is the same event. The order of columns and tags
    does not matter; the file name and row number do not count."""
    content = {
        "channel": command.channel,
        "kind": command.kind,
        "match": [command.contact.match_field, command.contact.match_value],
        "fields": dict(command.fields),
        "tags": sorted(command.tags),
    }
    body = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return KEY_PREFIX + hashlib.sha256(body.encode("utf-8")).hexdigest()


def row_event(number: int, cells: Sequence[str], spec: ImportSpec) -> NewEvent:
    """The event one row becomes; raises :class:`RowError` naming the column and reason.

    Values are trimmed; an empty cell sets nothing (it does not clear the field)."""
    columns = spec.columns
    if len(cells) != len(columns.names):
        raise RowError(number, None, f"has {len(cells)} cells; the header has {len(columns.names)}")
    values: dict[str, str] = {}
    fields: dict[str, str] = {}
    for name, target, cell in zip(columns.names, columns.targets, cells, strict=True):
        value = cell.strip()
        if target is None or not value:
            continue
        values[name] = value
        fields[target] = value
    match_value = fields.get(columns.match)
    if match_value is None:
        raise RowError(
            number, columns.match_column, f"empty: it holds the match field {columns.match!r}"
        )
    try:
        contact = ContactRef(match_field=columns.match, match_value=match_value)
        command = make_command(
            "upsert",
            spec.channel,
            contact,
            fields=fields,
            tags=list(spec.tags),
            custom_fields=spec.custom_fields,
        )
    except CommandError as error:
        raise RowError(number, _column_for(error.field, columns), error.detail) from None
    payload = {"file": spec.file_name, "row": number, "values": values}
    return NewEvent(row_key(command), EVENT_TYPE, payload, [command])


def _column_for(where: str, columns: Columns) -> str:
    for prefix in ("fields.", "match."):
        if where.startswith(prefix) and where[len(prefix) :] in columns.targets:
            return columns.column_of(where[len(prefix) :])
    return "--tag" if where.startswith("tags") else where


def estimate_calls(command: Command) -> int:
    """The API calls a row most likely takes on a contact not yet known: a look-up, the
    field writes (30 a call) and the tag adds (10 a call)."""
    plan = merge.plan([(command.kind, command.payload())])
    return merge.calls_needed(plan, lookup=True, creating=True)


# -- the import -----------------------------------------------------------------------------


@dataclass
class ImportReport:
    """What an import did (or, in a dry run, would do)."""

    rows: int = 0
    """Rows read, blank ones left out."""
    blank: int = 0
    recorded: int = 0
    """Rows recorded now (a dry run: that would be)."""
    already: int = 0
    """Rows the ledger already held: an earlier run of this import, or a repeated row."""
    invalid: int = 0
    errors: list[RowError] = field(default_factory=list)
    """The first :data:`KEPT_ERRORS` invalid rows."""
    calls: int = 0
    """API calls the recorded rows will most likely take."""

    def add_error(self, error: RowError) -> None:
        """Count an invalid row, keeping the first few."""
        self.invalid += 1
        if len(self.errors) < KEPT_ERRORS:
            self.errors.append(error)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["errors"] = [
            {"row": error.row, "column": error.column, "detail": error.detail}
            for error in self.errors
        ]
        return data


Record = Callable[[Sequence[NewEvent]], list[Recorded]]
"""Records a batch of events in one transaction (``worker.submit.record`` bound to a runtime)."""
OnInvalid = Callable[[int, Sequence[str], RowError], None]


def known_keys(engine: Engine, keys: Sequence[str]) -> set[str]:
    """The keys among these that the ledger already holds for imported rows (read only)."""
    if not keys:
        return set()
    statement = select(events.c.key).where(events.c.source == SOURCE, events.c.key.in_(keys))
    with engine.connect() as connection:
        return {str(key) for key in connection.execute(statement).scalars()}


def run_import(
    rows: Iterator[tuple[int, list[str]]],
    spec: ImportSpec,
    report: ImportReport,
    *,
    record: Record | None,
    known: Callable[[Sequence[str]], set[str]],
    batch_size: int = 500,
    on_invalid: OnInvalid | None = None,
) -> Generator[int, None, None]:
    """Validate and record rows a batch at a time; yields how many rows each batch took.

    ``record`` None is a dry run: nothing is written, and ``known`` says which rows the
    ledger already holds. ``report`` is updated as batches are recorded, so it is right
    even when the caller stops early (Ctrl-C between batches)."""
    batch: list[NewEvent] = []
    taken = 0
    for number, cells in rows:
        taken += 1
        if not any(cell.strip() for cell in cells):
            report.blank += 1
        else:
            report.rows += 1
            try:
                batch.append(row_event(number, cells, spec))
            except RowError as error:
                report.add_error(error)
                if on_invalid is not None:
                    on_invalid(number, cells, error)
        if len(batch) >= batch_size:
            _flush(batch, report, record, known)
            yield taken
            batch, taken = [], 0
    if taken:
        _flush(batch, report, record, known)
        yield taken


def _flush(
    batch: list[NewEvent],
    report: ImportReport,
    record: Record | None,
    known: Callable[[Sequence[str]], set[str]],
) -> None:
    if not batch:
        return
    if record is None:
        held = known([event.key for event in batch])
        fresh: list[NewEvent] = []
        for event in batch:
            if event.key in held:
                report.already += 1
            else:
                held.add(event.key)  # a repeated row later in the batch is not new
                fresh.append(event)
    else:
        recorded = record(batch)
        fresh = [e for e, r in zip(batch, recorded, strict=True) if not r.duplicate]
        report.already += len(batch) - len(fresh)
    report.recorded += len(fresh)
    report.calls += sum(estimate_calls(event.commands[0]) for event in fresh)
