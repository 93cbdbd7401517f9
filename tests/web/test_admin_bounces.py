"""The admin on top of the bounce stage: what came back, complaints, warnings.

A real bounce file from the project's own fixtures is scanned by the real
``bounces.scan`` (it matches nobody here, so it is listed as unmatched); matched
events and complaints are recorded rows on a real issue's deliveries; the
unreadable-mailbox warning comes from the timetable's real bounce poll failing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from _admin_support import logged_in, make_editor
from _delivery_support import add_subscribers, make_issue
from _web_support import Web, make_web, web
from sqlalchemy import update

from newsletter.bounces.scan import scan
from newsletter.bounces.sources import SourceError
from newsletter.models import (
    BounceEvent,
    BounceType,
    Delivery,
    DeliveryStatus,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from newsletter.timetable.jobs import poll_bounces

__all__ = ["make_web", "web"]  # fixtures

BOUNCES = Path(__file__).resolve().parent.parent / "fixtures" / "bounces"


def _sent_issue(web: Web, readers: int) -> tuple[int, list[int]]:
    ids = add_subscribers(web.ctx, readers)
    issue_id = make_issue(web.ctx)
    with web.ctx.db.write() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.issue_id == issue_id)
            .values(status=DeliveryStatus.SENT, sent_at=utcnow())
        )
    return issue_id, ids


def test_an_unmatched_bounce_is_listed(web: Web) -> None:
    make_editor(web)
    summary = scan(web.ctx, [str(BOUNCES / "dsn-hard-postfix.eml")])
    assert summary.messages == 1
    page = logged_in(web).get("/admin/bounces").get_data(as_text=True)
    unmatched = page.split("Unmatched messages")[1].split("Refused while sending")[0]
    assert "dsn-hard-postfix.eml" in unmatched and "hard" in unmatched


def test_complaints_and_bounces_show_on_issue_reader_and_dashboard(web: Web) -> None:
    make_editor(web)
    issue_id, (first, second, third) = _sent_issue(web, 3)
    now = utcnow()
    with web.ctx.db.write() as session:
        for sid, kind, status, text in (
            (first, BounceType.COMPLAINT, None, "abuse report from a feedback loop"),
            (second, BounceType.POLICY, "5.7.1", "blocked using zen.spamhaus.org"),
            (third, BounceType.POLICY, "5.7.1", "blocked using zen.spamhaus.org"),
        ):
            session.add(
                BounceEvent(source="test", message_key=f"k{sid}", recipient=f"r{sid}@x",
                            type=kind, status=status, text=text, issue_id=issue_id,
                            subscriber_id=sid, action="recorded", received_at=now)
            )  # fmt: skip
            session.execute(
                update(Delivery)
                .where(Delivery.issue_id == issue_id, Delivery.subscriber_id == sid)
                .values(bounce_type=kind, bounce_status=status, bounce_text=text, bounced_at=now)
            )
        session.execute(
            update(Subscriber)
            .where(Subscriber.id == first)
            .values(status=SubscriberStatus.COMPLAINED, complained_at=now)
        )
    client = logged_in(web)
    dashboard = client.get("/admin/").get_data(as_text=True)
    assert "2 of 3 deliveries came back as policy bounces" in dashboard
    assert "blocked using zen.spamhaus.org" in dashboard
    last = re.sub(r">\s+<", "><", dashboard.split("Last issues")[1])
    cells = (
        '<td class="num">3</td><td class="num">0</td><td class="num">0</td><td class="num">1</td>'
    )
    assert cells in last  # sent 3, failed 0, bounced 0, complained 1
    tiles = dashboard.split("<h2>Readers</h2>")[1].split("<svg")[0]
    assert '<span class="n">1</span> <a href="/admin/subscribers?status=complained">' in tiles
    issues = client.get("/admin/issues").get_data(as_text=True)
    assert f">{issue_id}</a>" in issues
    detail = client.get(f"/admin/issues/{issue_id}").get_data(as_text=True)
    diag = detail.split("Commonest bounce diagnostics")[1]
    assert 'policy: 5.7.1 blocked using zen.spamhaus.org</td><td class="num">2' in diag
    history = client.get(f"/admin/subscribers/{first}").get_data(as_text=True)
    assert "complaint" in history and "abuse report from a feedback loop" in history
    assert '<th scope="row">Complained</th>' in history
    bounces = client.get("/admin/bounces").get_data(as_text=True)
    matched = bounces.split("What came back")[1].split("Unmatched messages")[0]
    assert matched.count("zen.spamhaus.org") == 2 and "recorded" in matched


def test_an_unreadable_bounce_mailbox_is_a_warning_until_it_reads(
    make_web: Any, tmp_path: Path
) -> None:
    from conftest import free_port

    web = make_web(NEWSLETTER_BOUNCE_MAILBOX=f"imap://u:p@127.0.0.1:{free_port()}/INBOX")
    make_editor(web)
    with pytest.raises(SourceError):
        poll_bounces(web.ctx)
    client = logged_in(web)
    warning = "The bounce mailbox could not be read"
    assert warning in client.get("/admin/").get_data(as_text=True)
    maildir = tmp_path / "bounces"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    readable = make_web(NEWSLETTER_BOUNCE_MAILBOX=str(maildir))
    poll_bounces(readable.ctx)  # the same database: a good poll clears the warning
    assert warning not in client.get("/admin/").get_data(as_text=True)


def test_unsubscribed_after_counts_readers_who_left_before_the_next_issue(web: Web) -> None:
    from datetime import timedelta

    from newsletter.models import Issue
    from newsletter.web.admin.stats import issue_rows

    make_editor(web)
    first_issue, (a, b, c) = _sent_issue(web, 3)
    second_issue = make_issue(web.ctx, "Second")
    now = utcnow()
    with web.ctx.db.write() as session:
        session.execute(
            update(Issue).where(Issue.id == first_issue).values(started_at=now - timedelta(days=2))
        )
        session.execute(
            update(Issue).where(Issue.id == second_issue).values(started_at=now - timedelta(days=1))
        )
        for sid, when in ((a, now - timedelta(days=1, hours=12)), (b, now - timedelta(hours=2)),
                          (c, now - timedelta(days=3))):  # fmt: skip
            session.execute(
                update(Subscriber)
                .where(Subscriber.id == sid)
                .values(status=SubscriberStatus.UNSUBSCRIBED, unsubscribed_at=when)
            )
    with web.ctx.db.read() as session:
        rows = {r.id: r for r in issue_rows(session)}
    assert rows[first_issue].unsubscribed_after == 1  # a; b left after the second; c before
    assert rows[second_issue].unsubscribed_after == 0  # nobody has received the second yet
