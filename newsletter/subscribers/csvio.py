"""CSV import and export of subscribers.

Import is two steps so the database's write lock is held only for the second:
:func:`parse_csv` decodes and validates the whole file with no database at all
(email-validator is the slow part), then :func:`apply_import` looks existing
addresses up in chunks and writes new rows and changes as a few multi-row
statements, so 100,000 rows take seconds, not minutes.

What a file may contain: a header row naming an ``email`` column (any case;
``name``, ``status``, ``created_at``, ``confirmed_at`` optional, others ignored),
comma-, semicolon- or tab-separated, UTF-8 with or without a BOM, blank lines
anywhere.  A file that is not UTF-8, has no header or no email column is refused
as a whole; a bad row is rejected with its line number and reason while the good
rows are imported.  An export (which has every one of those columns) imports back
as it was.

Suppression is honoured both ways: an address on the list as unsubscribed or
bounced is *skipped* (reported, never reactivated), and a row whose ``status`` says
unsubscribed/bounced is stored as such (or unsubscribes an address already here),
so migrating a list from elsewhere carries its opt-outs with it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from ..models import Subscriber, SubscriberStatus, utcnow
from .addresses import InvalidEmail, clean_name, normalise_email
from .store import SUPPRESSED

EXPORT_FIELDS = ("email", "name", "status", "created_at", "confirmed_at")
_TABLE = Subscriber.metadata.tables[Subscriber.__tablename__]
LOOKUP_CHUNK = 500  # addresses per "WHERE email IN (...)": well under any bind limit
_HEADER_ALIASES = {
    "email": "email",
    "emailaddress": "email",
    "name": "name",
    "fullname": "name",
    "status": "status",
    "createdat": "created_at",
    "confirmedat": "confirmed_at",
}


_STATUSES = frozenset(status.value for status in SubscriberStatus)
_STATUS_LIST = ", ".join(status.value for status in SubscriberStatus)


class CsvError(ValueError):
    """The file as a whole cannot be read (encoding, header); nothing is imported."""


@dataclass(frozen=True)
class Problem:
    """A row that was not imported: ``line`` is the file's line number (header = 1)."""

    line: int
    value: str
    reason: str

    def __str__(self) -> str:
        shown = f"{self.value!r}: " if self.value else ""
        return f"line {self.line}: {shown}{self.reason}"


@dataclass(frozen=True)
class CsvRow:
    line: int
    email: str
    name: str
    status: SubscriberStatus | None
    created_at: datetime | None
    confirmed_at: datetime | None


@dataclass
class ParsedCsv:
    rows: list[CsvRow] = field(default_factory=list)
    rejected: list[Problem] = field(default_factory=list)  # invalid: exit status says so
    skipped: list[Problem] = field(default_factory=list)  # valid but not imported


@dataclass
class CsvReport:
    """Outcome of an import; ``ok`` is False when any row was rejected."""

    added: int = 0
    activated: int = 0  # pending rows made active by --confirmed
    renamed: int = 0
    suppressed: int = 0  # rows stored or switched to unsubscribed/bounced from the file
    unchanged: int = 0
    rejected: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.rejected


# A part of a cell that a spreadsheet splitting on , ; or TAB would see as a formula.
_FORMULA_PART = re.compile(r"(^|[,;\t])(?=[=+\-@\t\r])")
_ESCAPED_PART = re.compile(r"(^|[,;\t])'(?=[=+\-@\t\r])")
_NEEDS_QUOTES = re.compile(r'[,;\t"\r\n]')


def csv_safe(value: str) -> str:
    """Defuse spreadsheet formula injection in every locale.

    The cell and every part of it after a ``,`` ``;`` or TAB (the list separators
    spreadsheets use, depending on locale, when they split text into columns)
    that begins with ``= + - @``, TAB or CR gets a leading ``'``:
    ``x;=cmd|' /C calc'!A0;`` becomes ``x;'=cmd|' /C calc'!A0;``.
    """
    return _FORMULA_PART.sub(r"\1'", value)


def _unescape(value: str) -> str:
    """Undo :func:`csv_safe`, so an export imports back unchanged."""
    return _ESCAPED_PART.sub(r"\1", value)


def csv_cell(value: str) -> str:
    """One cell of our CSV: quoted whenever it holds a separator of any locale.

    Python's csv module quotes only for its own delimiter; a cell with ``;`` or a
    TAB would be split by a spreadsheet that uses that separator.
    """
    if _NEEDS_QUOTES.search(value):
        return '"' + value.replace('"', '""') + '"'
    return value


def decode(data: bytes | str) -> str:
    """UTF-8 text (BOM and NUL bytes dropped), or :class:`CsvError` naming the first bad line.

    NUL bytes: PostgreSQL refuses them in text columns, and a spreadsheet export that
    has them means nothing by them.
    """
    if isinstance(data, str):
        return data.removeprefix("\ufeff").replace("\x00", "")
    try:
        return data.decode("utf-8-sig").replace("\x00", "")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CsvError(
            f"line {line}: the file is not UTF-8 text (byte 0x{data[exc.start]:02x}); "
            "save it as 'CSV UTF-8' and import it again"
        ) from None


def _header(text: str) -> tuple[str, int, dict[str, int]]:
    """Pick the delimiter from the header line and map known columns to positions."""
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise CsvError("the file is empty: expected a header row with an 'email' column")
    found: list[str] = []
    for delimiter in (",", ";", "\t"):
        cells = next(csv.reader([first], delimiter=delimiter))
        columns: dict[str, int] = {}
        for position, cell in enumerate(cells):
            key = _HEADER_ALIASES.get("".join(ch for ch in cell.lower() if ch.isalnum()))
            if key is not None:
                columns.setdefault(key, position)
        if "email" in columns:
            return delimiter, len(cells), columns
        found = found or [c.strip() for c in cells]
    hint = ""
    if "@" in first:
        hint = " (the first line must be a header row naming the columns, e.g. 'email,name')"
    raise CsvError(f"line 1: no 'email' column in the header row (found: {', '.join(found)}){hint}")


def _records(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """(first line of the record, fields), with csv errors turned into CsvError."""
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise CsvError(f"line {reader.line_num}: malformed CSV ({exc})") from None
        yield start, row


def _runs_on(row: list[str]) -> bool:
    """True when a record spanning lines looks like an unclosed quote swallowing rows.

    A quoted cell may legitimately hold line breaks (a two-line name, a notes
    column), but a line break followed by an address means later rows were read
    into this cell: rejected and reported, not silently dropped.
    """
    return any("@" in value.replace("\r", "\n").partition("\n")[2] for value in row)


def _when(value: str, column: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{column} {value!r} is not an ISO 8601 date/time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_csv(data: bytes | str) -> ParsedCsv:
    """Decode and validate a whole file; no database involved."""
    text = decode(data)
    delimiter, _, columns = _header(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    parsed = ParsedCsv()
    seen: dict[str, int] = {}
    header_done = False

    def cell(row: list[str], key: str) -> str:
        position = columns.get(key)
        if position is None or position >= len(row):
            return ""
        return _unescape(row[position].strip())

    for line, row in _records(reader):
        if not any(value.strip() for value in row):
            continue  # blank line
        if not header_done:
            header_done = True
            continue
        if reader.line_num > line and _runs_on(row):
            first = cell(row, "email").splitlines()[0] if cell(row, "email") else ""
            parsed.rejected.append(
                Problem(
                    line,
                    first,
                    f"a quoted field runs on to line {reader.line_num} (a missing closing"
                    f" quote?); lines {line}-{reader.line_num} were not imported",
                )
            )
            continue
        raw = cell(row, "email")
        if not raw:
            parsed.rejected.append(Problem(line, "", "no email address in this row"))
            continue
        status_text = cell(row, "status").lower()
        try:
            email = normalise_email(raw)
            if status_text and status_text not in _STATUSES:
                raise ValueError(f"unknown status {status_text!r} (expected {_STATUS_LIST})")
            status = SubscriberStatus(status_text) if status_text else None
            created = _when(cell(row, "created_at"), "created_at")
            confirmed_at = _when(cell(row, "confirmed_at"), "confirmed_at")
        except InvalidEmail as exc:
            parsed.rejected.append(Problem(line, raw, f"not a valid email address: {exc.reason}"))
            continue
        except ValueError as exc:
            parsed.rejected.append(Problem(line, raw, str(exc)))
            continue
        if email in seen:
            parsed.skipped.append(Problem(line, raw, f"duplicate of line {seen[email]}"))
            continue
        seen[email] = line
        name = clean_name(cell(row, "name"))
        parsed.rows.append(CsvRow(line, email, name, status, created, confirmed_at))
    return parsed


def _existing(session: Session, emails: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for start in range(0, len(emails), LOOKUP_CHUNK):
        chunk = emails[start : start + LOOKUP_CHUNK]
        rows = session.execute(
            select(
                Subscriber.id,
                Subscriber.email,
                Subscriber.name,
                Subscriber.status,
                Subscriber.confirmed_at,
                Subscriber.unsubscribed_at,
                Subscriber.bounce_count,
            ).where(Subscriber.email.in_(chunk))
        ).all()
        found.update({row.email: row for row in rows})
    return found


def _skip_reason(status: SubscriberStatus, unsubscribed_at: datetime | None, bounces: int) -> str:
    if status is SubscriberStatus.BOUNCED:
        return f"the address bounced ({bounces} bounce(s)); an import never re-adds it"
    if status is SubscriberStatus.COMPLAINED:
        return "the reader reported our mail as spam; an import never re-adds it"
    since = f" on {unsubscribed_at:%Y-%m-%d}" if unsubscribed_at else ""
    return f"unsubscribed{since}; an import never re-subscribes anyone"


def apply_import(
    session: Session, parsed: ParsedCsv, confirmed: bool = False, now: datetime | None = None
) -> CsvReport:
    """Write a parsed file: insert new addresses, update known ones, skip suppressed.

    New rows are ``active`` with ``confirmed`` (the operator vouches for consent),
    else ``pending``; a row the file marks ``pending`` stays pending and one it
    marks ``unsubscribed``/``bounced`` is stored suppressed.  Known addresses:
    suppressed ones are skipped, pending ones become active with ``confirmed``,
    active ones are never downgraded, and a non-empty name replaces the stored one.
    """
    now = now or utcnow()
    report = CsvReport(rejected=list(parsed.rejected), skipped=list(parsed.skipped))
    known = _existing(session, [row.email for row in parsed.rows])
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for row in parsed.rows:
        if row.status in SUPPRESSED:
            target = row.status
        elif row.status is SubscriberStatus.PENDING or not confirmed:
            target = SubscriberStatus.PENDING
        else:
            target = SubscriberStatus.ACTIVE
        old = known.get(row.email)
        if old is None:
            inserts.append(_new_row(row, target, now))
            report.added += 1
            if target in SUPPRESSED:
                report.suppressed += 1
            continue
        status = SubscriberStatus(old.status)
        if status in SUPPRESSED:
            if target is status:
                report.unchanged += 1
            else:
                reason = _skip_reason(status, old.unsubscribed_at, old.bounce_count)
                report.skipped.append(Problem(row.line, row.email, reason))
            continue
        change: dict[str, Any] = {
            "name": old.name,
            "status": status,
            "confirmed_at": old.confirmed_at,
            "unsubscribed_at": old.unsubscribed_at,
            "bounce_count": old.bounce_count,
        }
        if target is SubscriberStatus.UNSUBSCRIBED:
            change.update(status=target, unsubscribed_at=now)
            report.suppressed += 1
        elif target is SubscriberStatus.BOUNCED:
            change.update(status=target, bounce_count=old.bounce_count + 1)
            report.suppressed += 1
        elif target is SubscriberStatus.ACTIVE and status is SubscriberStatus.PENDING:
            change.update(status=target, confirmed_at=row.confirmed_at or now)
            report.activated += 1
        if row.name and row.name != old.name:
            change["name"] = row.name
            report.renamed += 1
        if change["status"] is status and change["name"] == old.name:
            report.unchanged += 1
            continue
        updates.append({"id": old.id, **change})
    if inserts:  # Core executemany: a third faster than the ORM bulk path for 100k rows
        session.connection().execute(insert(_TABLE), inserts)
    if updates:
        session.execute(update(Subscriber), updates)
    return report


def _new_row(row: CsvRow, status: SubscriberStatus, now: datetime) -> dict[str, Any]:
    active = status is SubscriberStatus.ACTIVE
    return {
        "email": row.email,
        "name": row.name,
        "status": status,
        "created_at": row.created_at or now,
        "confirmed_at": row.confirmed_at or (now if active else None),
        "unsubscribed_at": now if status is SubscriberStatus.UNSUBSCRIBED else None,
        "bounce_count": 1 if status is SubscriberStatus.BOUNCED else 0,
        "source": "import",
    }


def import_csv(session: Session, stream: IO[bytes] | IO[str], confirmed: bool = False) -> CsvReport:
    """Parse ``stream`` and apply it in ``session`` (one call; see module doc)."""
    return apply_import(session, parse_csv(stream.read()), confirmed=confirmed)


def _iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else ""


def export_csv(session: Session, out: IO[str]) -> int:
    """Write ``email,name,status,created_at,confirmed_at`` for everyone; return rows.

    Every status is included: the unsubscribed and bounced rows are the
    suppression list another system needs.  Times are ISO 8601 UTC.  Text cells
    go through :func:`csv_safe` so opening the file in a spreadsheet cannot run a
    formula smuggled in through a name, and are quoted (:func:`csv_cell`) when
    they hold a separator of any locale.
    """
    out.write(",".join(EXPORT_FIELDS) + "\r\n")
    result = session.execute(
        select(
            Subscriber.email,
            Subscriber.name,
            Subscriber.status,
            Subscriber.created_at,
            Subscriber.confirmed_at,
        )
        .order_by(Subscriber.id)
        .execution_options(yield_per=2000)
    )
    count = 0
    for email, name, status, created_at, confirmed_at in result:
        cells = (
            csv_safe(email),
            csv_safe(name),
            SubscriberStatus(status).value,
            _iso(created_at),
            _iso(confirmed_at),
        )
        out.write(",".join(csv_cell(cell) for cell in cells) + "\r\n")
        count += 1
    return count
