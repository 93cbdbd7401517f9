"""CSV import/export (newsletter.csvio) on real SQLite files, called directly.

Every bad-input case the issue lists: bad address, missing email column, empty
file, non-UTF-8 file, BOM, blank lines, internationalised domains, duplicate rows,
suppressed addresses never reactivated; plus formula-injection-safe export and an
export that imports back unchanged.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from newsletter import subscribers as subs
from newsletter.context import Context
from newsletter.models import Subscriber, SubscriberStatus
from newsletter.subscribers.csvio import CsvError, apply_import, csv_safe, export_csv, parse_csv


def rows(ctx: Context) -> dict[str, tuple[str, SubscriberStatus]]:
    with ctx.db.read() as session:
        return {
            email: (name, status)
            for email, name, status in session.execute(
                select(Subscriber.email, Subscriber.name, Subscriber.status)
            )
        }


def run_import(ctx: Context, data: bytes | str, confirmed: bool = False):  # type: ignore[no-untyped-def]
    with ctx.db.write() as session:
        return subs.import_csv(
            session,
            io.BytesIO(data) if isinstance(data, bytes) else io.StringIO(data),
            confirmed=confirmed,
        )


def test_valid_rows_import_and_bad_rows_are_reported_by_line(ctx: Context) -> None:
    data = (
        "email,name\n"  # line 1
        "alice@example.com,Alice\n"  # 2
        "bob@,Bob\n"  # 3: bad address
        ",No Address\n"  # 4: no address
        "carol@example.com,\n"  # 5
        "not an address,Dan\n"  # 6
    )
    report = run_import(ctx, data)
    assert not report.ok
    assert report.added == 2
    assert [(p.line, p.value) for p in report.rejected] == [
        (3, "bob@"),
        (4, ""),
        (6, "not an address"),
    ]
    assert "after the @-sign" in report.rejected[0].reason
    assert str(report.rejected[0]).startswith("line 3: 'bob@': not a valid email address")
    assert rows(ctx) == {
        "alice@example.com": ("Alice", SubscriberStatus.PENDING),
        "carol@example.com": ("", SubscriberStatus.PENDING),
    }


def test_confirmed_imports_active_and_default_is_pending(ctx: Context) -> None:
    assert run_import(ctx, "email\na@example.com\n", confirmed=True).ok
    assert run_import(ctx, "email\np@example.com\n").ok
    with ctx.db.read() as session:
        active = session.scalars(
            select(Subscriber).where(Subscriber.email == "a@example.com")
        ).one()
        assert active.status is SubscriberStatus.ACTIVE and active.confirmed_at is not None
        assert active.source == "import"
    assert rows(ctx)["p@example.com"][1] is SubscriberStatus.PENDING


def test_bom_blank_lines_crlf_case_insensitive_headers_and_non_ascii(ctx: Context) -> None:
    data = (
        "\ufeffName , E-Mail , Extra\r\n"
        "\r\n"
        "Jürgen Groß,Juergen@Bücher.Example,x\r\n"
        "   \r\n"
        "\r\n"
        "Zoë 李,zoe@例え.jp,y\r\n"
        ",,\r\n"
    ).encode()
    report = run_import(ctx, data, confirmed=True)
    assert report.ok and report.added == 2
    assert rows(ctx) == {
        "juergen@xn--bcher-kva.example": ("Jürgen Groß", SubscriberStatus.ACTIVE),
        "zoe@xn--r8jz45g.jp": ("Zoë 李", SubscriberStatus.ACTIVE),
    }


def test_line_numbers_count_blank_lines_and_multiline_fields(ctx: Context) -> None:
    data = 'email,name\n\na@example.com,"two\nlines"\n\nbad@@example.com,x\n'
    report = run_import(ctx, data)
    assert [p.line for p in report.rejected] == [6]
    assert rows(ctx)["a@example.com"][0] == "two lines"  # the newline never reaches a header


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_semicolon_and_tab_separated_files(ctx: Context, delimiter: str) -> None:
    data = f"email{delimiter}name\na@example.com{delimiter}Smith, Anna\n"
    assert run_import(ctx, data).added == 1
    assert rows(ctx)["a@example.com"][0] == "Smith, Anna"


def test_duplicates_in_the_file_are_reported_and_first_wins(ctx: Context) -> None:
    data = (
        "email,name\na@example.com,First\nA@EXAMPLE.COM,Second\nb@example.com,B\na@example.com,\n"
    )
    report = run_import(ctx, data)
    assert report.ok  # a duplicate is not an error: nothing is lost
    assert report.added == 2
    assert [(p.line, p.reason) for p in report.skipped] == [
        (3, "duplicate of line 2"),
        (5, "duplicate of line 2"),
    ]
    assert rows(ctx)["a@example.com"][0] == "First"


def test_unsubscribed_and_bounced_are_never_reactivated(ctx: Context) -> None:
    with ctx.db.write() as session:
        gone = subs.add_subscriber(session, "gone@example.com", "Gone", confirmed=True)
        subs.unsubscribe(session, gone.id)
        dead = subs.add_subscriber(session, "dead@example.com", confirmed=True)
        subs.mark_bounced(session, dead.id)
        subs.add_subscriber(session, "pending@example.com")
        subs.add_subscriber(session, "active@example.com", "Old Name", confirmed=True)
    data = (
        "email,name\n"
        "Gone@example.com,Gone Again\n"
        "dead@example.com,\n"
        "pending@example.com,\n"
        "active@example.com,New Name\n"
        "new@example.com,\n"
    )
    report = run_import(ctx, data, confirmed=True)
    assert report.ok
    assert (report.added, report.activated, report.renamed) == (1, 1, 1)
    assert [(p.line, p.value) for p in report.skipped] == [
        (2, "gone@example.com"),
        (3, "dead@example.com"),
    ]
    assert "unsubscribed on" in report.skipped[0].reason
    assert "bounced" in report.skipped[1].reason
    assert rows(ctx) == {
        "gone@example.com": ("Gone", SubscriberStatus.UNSUBSCRIBED),
        "dead@example.com": ("", SubscriberStatus.BOUNCED),
        "pending@example.com": ("", SubscriberStatus.ACTIVE),
        "active@example.com": ("New Name", SubscriberStatus.ACTIVE),
        "new@example.com": ("", SubscriberStatus.ACTIVE),
    }


def test_import_without_confirmed_never_downgrades_active(ctx: Context) -> None:
    with ctx.db.write() as session:
        subs.add_subscriber(session, "a@example.com", confirmed=True)
    report = run_import(ctx, "email\na@example.com\n")
    assert report.unchanged == 1
    assert rows(ctx)["a@example.com"][1] is SubscriberStatus.ACTIVE


def test_status_column_carries_opt_outs_from_another_system(ctx: Context) -> None:
    with ctx.db.write() as session:
        subs.add_subscriber(session, "here@example.com", confirmed=True)
    data = (
        "email,status\n"
        "here@example.com,Unsubscribed\n"
        "left@example.com,unsubscribed\n"
        "bounced@example.com,bounced\n"
        "waiting@example.com,pending\n"
        "ok@example.com,active\n"
        "odd@example.com,vip\n"
    )
    report = run_import(ctx, data, confirmed=True)
    assert [(p.line, p.reason) for p in report.rejected] == [
        (7, "unknown status 'vip' (expected pending, active, unsubscribed, bounced, complained)")
    ]
    assert report.suppressed == 3
    assert {email: status for email, (_, status) in rows(ctx).items()} == {
        "here@example.com": SubscriberStatus.UNSUBSCRIBED,
        "left@example.com": SubscriberStatus.UNSUBSCRIBED,
        "bounced@example.com": SubscriberStatus.BOUNCED,
        "waiting@example.com": SubscriberStatus.PENDING,
        "ok@example.com": SubscriberStatus.ACTIVE,
    }


def test_bad_dates_are_rejected_rows(ctx: Context) -> None:
    report = run_import(
        ctx, "email,created_at\na@example.com,yesterday\nb@example.com,2025-01-02\n"
    )
    assert [(p.line, p.reason) for p in report.rejected] == [
        (2, "created_at 'yesterday' is not an ISO 8601 date/time")
    ]
    with ctx.db.read() as session:
        created = session.scalar(select(Subscriber.created_at))
    assert created == datetime(2025, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (b"\n\n  \r\n", "the file is empty"),
        (b"\xef\xbb\xbf", "the file is empty"),
        (
            b"name,address\nAlice,a@example.com\n",
            "no 'email' column in the header row (found: name",
        ),
        (b"alice@example.com\nbob@example.com\n", "must be a header row"),
        (b"email,name\na@example.com,Ren\xe9\n", "line 2: the file is not UTF-8 text (byte 0xe9)"),
        (b"\xff\xfee\x00m\x00", "line 1: the file is not UTF-8"),
    ],
)
def test_files_refused_as_a_whole_import_nothing(ctx: Context, data: bytes, message: str) -> None:
    with pytest.raises(CsvError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_csv(data)
    with pytest.raises(CsvError):
        run_import(ctx, data)
    assert rows(ctx) == {}


def test_header_only_file_imports_nothing_and_is_fine(ctx: Context) -> None:
    report = run_import(ctx, b"email,name\r\n")
    assert report.ok and report.added == 0


def test_malformed_csv_names_the_line() -> None:
    big = "x" * 200_000  # over the csv module's field limit
    with pytest.raises(CsvError, match="line 3: malformed CSV"):
        parse_csv(f"email,name\na@example.com,A\nb@example.com,{big}\n")


# --- export --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("=1+1", "'=1+1"),
        ("+SUM(A1)", "'+SUM(A1)"),
        ("-2", "'-2"),
        ("@cmd", "'@cmd"),
        ("\tx", "'\tx"),
        ("Anna", "Anna"),
        ("'quoted", "'quoted"),
        ("", ""),
    ],
)
def test_csv_safe(value: str, safe: str) -> None:
    assert csv_safe(value) == safe


def test_export_columns_and_formula_safety(ctx: Context) -> None:
    t = datetime(2026, 5, 4, 3, 2, 1, 999, tzinfo=UTC)
    with ctx.db.write() as session:
        subs.add_subscriber(session, "a@example.com", '=HYPERLINK("http://x","y")', True, now=t)
        subs.add_subscriber(session, "b@example.com", "@SUM(1)", now=t)
        subs.add_subscriber(session, "-x@example.com", "+1", now=t)
    out = io.StringIO()
    with ctx.db.read() as session:
        assert export_csv(session, out) == 3
    lines = out.getvalue().split("\r\n")
    assert lines[0] == "email,name,status,created_at,confirmed_at"
    assert lines[1] == (
        'a@example.com,"\'=HYPERLINK(""http://x"",""y"")",active,'
        "2026-05-04T03:02:01+00:00,2026-05-04T03:02:01+00:00"
    )
    assert lines[2] == "b@example.com,'@SUM(1),pending,2026-05-04T03:02:01+00:00,"
    assert lines[3] == "'-x@example.com,'+1,pending,2026-05-04T03:02:01+00:00,"
    assert lines[4:] == [""]


def test_export_imports_back_unchanged(ctx: Context, make_settings, new_database) -> None:  # type: ignore[no-untyped-def]
    with ctx.db.write() as session:
        subs.add_subscriber(session, "active@example.com", "=cmd|' /C calc'!A0", confirmed=True)
        subs.add_subscriber(session, "pending@bücher.example", 'Jürgen, "Jo" Groß')
        gone = subs.add_subscriber(session, "gone@example.com", "Gone", confirmed=True)
        subs.unsubscribe(session, gone.id)
        dead = subs.add_subscriber(session, "-dead@example.com", "-1", confirmed=True)
        subs.mark_bounced(session, dead.id)
    first = io.StringIO()
    with ctx.db.read() as session:
        export_csv(session, first)

    other = Context.open(make_settings(NEWSLETTER_DATABASE_URL=new_database("b.db")))
    try:
        with other.db.write() as session:
            report = apply_import(session, parse_csv(first.getvalue().encode()), confirmed=True)
        assert report.ok and report.added == 4 and report.suppressed == 2
        second = io.StringIO()
        with other.db.read() as session:
            export_csv(session, second)
        with other.db.read() as session:
            names = dict(session.execute(select(Subscriber.email, Subscriber.name)).all())
    finally:
        other.close()
    assert second.getvalue() == first.getvalue()
    assert names["active@example.com"] == "=cmd|' /C calc'!A0"  # stored as typed
    assert names["-dead@example.com"] == "-1"
