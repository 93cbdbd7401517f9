"""The admin's pages and actions against a real database and a real SMTP server.

Stories (pin, order, feature, add, re-import a configured feed), the next digest
(send now behind a confirmation, skip today), issues (progress, pause, resume,
cancel), readers (keyset paging, search, CSV import report, export, remove, erase,
history) and settings (secrets masked).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from _admin_support import EDITOR, csrf_of, logged_in, make_editor
from _delivery_support import add_subscribers
from _stories_support import Served, feed_server
from _web_support import Web, make_web, wait_for, web
from flask.testing import FlaskClient
from sqlalchemy import func, select

from newsletter.mail import AlreadySentToday, build_issue
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Story,
    Subscriber,
    SubscriberStatus,
)
from newsletter.stories import add_story

__all__ = ["make_web", "web"]  # fixtures

FEED = Path(__file__).resolve().parent.parent / "fixtures" / "feeds" / "wire.xml"


def post(client: FlaskClient, path: str, /, **data: Any) -> Any:
    response = client.post(path, data={"csrf_token": csrf_of(client), **data})
    assert response.status_code in (200, 303), (path, response.status_code)
    return response


def follow(client: FlaskClient, response: Any) -> str:
    assert response.status_code == 303
    return str(client.get(response.headers["Location"]).get_data(as_text=True))


def _stories(web: Web, n: int) -> list[int]:
    with web.ctx.db.write() as session:
        return [
            add_story(session, f"Story {i}", f"https://news.example.com/s{i}", "", True)[0].id
            for i in range(n)
        ]


def test_pin_and_order_are_what_the_digest_sends(web: Web) -> None:
    make_editor(web)
    client = logged_in(web)
    ids = _stories(web, 4)  # newest first by default: 3, 2, 1, 0; pinning 0 leads with it
    post(client, f"/admin/stories/{ids[0]}/pin", pinned="1")
    post(client, f"/admin/stories/{ids[1]}/move", direction="up")
    page = client.get("/admin/stories").get_data(as_text=True)
    order = re.findall(r">(Story \d)</a>", page.split('id="all"')[0])
    assert order == ["Story 0", "Story 3", "Story 1", "Story 2"]
    post(client, f"/admin/stories/{ids[2]}/pin", pinned="1")  # one lead only
    with web.ctx.db.write() as session:
        assert session.scalar(select(func.count()).where(Story.pinned.is_(True))) == 1
        issue = build_issue(session, web.ctx)
        assert issue is not None
        titles = [link.story.title for link in issue.stories]
        session.rollback()
    assert titles == ["Story 2", "Story 0", "Story 3", "Story 1"]
    post(client, "/admin/stories/order", order=f"{ids[3]},{ids[1]},999,{ids[1]}")  # the handle
    with web.ctx.db.write() as session:
        issue = build_issue(session, web.ctx)
        assert issue is not None
        titles = [link.story.title for link in issue.stories]
        session.rollback()
    assert titles == ["Story 2", "Story 3", "Story 1", "Story 0"]  # the lead stays first
    next_page = client.get("/admin/next").get_data(as_text=True)
    listed = re.findall(r"<li>(Story \d) <span", next_page)
    assert listed == titles


def test_feature_add_and_reimport_a_configured_feed(make_web: Any) -> None:
    with feed_server() as feeds:
        feeds.routes["/featured.xml"] = Served(FEED.read_bytes())
        url = feeds.url("/featured.xml")
        web = make_web(NEWSLETTER_FEEDS=url, NEWSLETTER_FEEDS_ALLOW_PRIVATE="true")
        make_editor(web)
        client = logged_in(web)
        page = follow(client, post(client, "/admin/stories/import", feed=url))
        assert "5 added" in page
        assert feeds.statuses("/featured.xml") == [200]
        again = follow(client, post(client, "/admin/stories/import", feed=url))
        assert "0 added" in again and "5 unchanged" in again
        refused = follow(client, post(client, "/admin/stories/import", feed="http://127.0.0.1:1/x"))
        assert "Only the feeds in NEWSLETTER_FEEDS" in refused
    with web.ctx.db.read() as session:
        story = session.scalars(select(Story).where(Story.title.like("%regional elections%"))).one()
        assert story.featured
    post(client, f"/admin/stories/{story.id}/feature", featured="0")
    with web.ctx.db.read() as session:
        assert not session.get(Story, story.id).featured  # type: ignore[union-attr]
    added = follow(
        client,
        post(client, "/admin/stories/add", title="By hand", url="https://x.example/h", feature="1"),
    )
    assert "added" in added
    bad = follow(client, post(client, "/admin/stories/add", title="No link", url="javascript:x"))
    assert "not added" in bad
    filtered = client.get("/admin/stories?featured=no").get_data(as_text=True).split('id="all"')[1]
    assert "regional elections" in filtered and "By hand</a>" not in filtered


def test_send_now_states_the_readers_then_sends_and_counts(web: Web) -> None:
    make_editor(web)
    client = logged_in(web)
    add_subscribers(web.ctx, 12)
    _stories(web, 2)
    follow(client, post(client, "/admin/next/note", note="Polls close at <b>8pm</b> tonight."))
    preview = client.get("/admin/next/preview.html").get_data(as_text=True)
    assert "Polls close at &lt;b&gt;8pm&lt;/b&gt; tonight." in preview
    confirm = client.get("/admin/next/send").get_data(as_text=True)
    assert "goes to 12 active readers" in confirm and "Send to 12 readers" in confirm
    with web.ctx.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Issue)) == 0  # nothing yet
    unconfirmed = client.post("/admin/next/send", data={"csrf_token": csrf_of(client)})
    assert unconfirmed.status_code == 303 and "/admin/next/send" in unconfirmed.headers["Location"]
    response = post(client, "/admin/next/send", confirmed="yes")
    issue_url = response.headers["Location"]
    assert re.fullmatch(r"/admin/issues/\d+", issue_url)

    def progress() -> dict[str, Any]:
        data = client.get(issue_url + "/progress.json").get_json()
        assert isinstance(data, dict)
        return data

    wait_for(lambda: progress()["status"] == "sent", timeout=60)
    final = progress()
    assert final["sent"] == final["total"] == 12 and final["left"] == 0
    assert len(web.smtp.messages) == 12
    html = web.smtp.messages[0].message.get_body(preferencelist=("html",)).get_content()
    assert "Polls close at &lt;b&gt;8pm&lt;/b&gt; tonight." in html  # the note went out once
    assert "Polls close" not in client.get("/admin/next").get_data(as_text=True)
    page = client.get(issue_url).get_data(as_text=True)
    assert '<strong id="p-status">sent</strong>' in page
    again = follow(client, client.post("/admin/next/skip", data={"csrf_token": csrf_of(client)}))
    assert "exists already" in again


def test_skip_today_holds_the_day_and_keeps_the_stories(web: Web) -> None:
    make_editor(web)
    client = logged_in(web)
    _stories(web, 1)
    page = follow(client, post(client, "/admin/next/skip"))
    assert "No digest today" in page
    with web.ctx.db.write() as session:
        try:
            build_issue(session, web.ctx)
            raise AssertionError("a digest was built on a skipped day")
        except AlreadySentToday:
            pass
    preview = client.get("/admin/next").get_data(as_text=True)
    assert "Story 0" in preview and "exists already" in preview  # tomorrow's, not sendable


def test_pause_resume_cancel_follow_the_cli_rules(web: Web) -> None:
    from _delivery_support import make_issue

    make_editor(web)
    client = logged_in(web)
    add_subscribers(web.ctx, 3)
    issue_id = make_issue(web.ctx)
    page = follow(client, post(client, f"/admin/issues/{issue_id}/pause"))
    assert "is paused" in page
    with web.ctx.db.read() as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None and issue.status is IssueStatus.PAUSED
        assert issue.status_reason == f"paused by {EDITOR}"
    post(client, f"/admin/issues/{issue_id}/resume")
    wait_for(lambda: client.get(f"/admin/issues/{issue_id}/progress.json").get_json()["status"]
             == "sent", timeout=60)  # fmt: skip
    assert len(web.smtp.messages) == 3
    done = follow(client, post(client, f"/admin/issues/{issue_id}/resume"))
    assert "is sent: nothing to resume" in done
    second = make_issue(web.ctx, "Second")
    confirm = client.get(f"/admin/issues/{second}/cancel").get_data(as_text=True)
    assert "3 deliveries still queued will not be sent" in confirm
    post(client, f"/admin/issues/{second}/cancel", confirmed="yes")
    with web.ctx.db.read() as session:
        assert session.get(Issue, second).status is IssueStatus.CANCELLED  # type: ignore[union-attr]
    refused = follow(client, post(client, f"/admin/issues/{second}/retry-failed"))
    assert "is cancelled" in refused
    assert client.get("/admin/issues/999").status_code == 404


def test_readers_keyset_paging_search_and_history(web: Web) -> None:
    make_editor(web)
    client = logged_in(web)
    add_subscribers(web.ctx, 120)
    seen: list[str] = []
    url: str | None = "/admin/subscribers"
    pages = 0
    while url:
        page = client.get(url).get_data(as_text=True)
        seen += re.findall(r">(reader\d{6}@example\.org)</a>", page)
        more = re.search(r'<a href="([^"]+)">Older readers', page)
        url = more.group(1).replace("&amp;", "&") if more else None
        pages += 1
    assert pages == 3
    assert len(seen) == len(set(seen)) == 120
    assert seen == sorted(seen, reverse=True)  # newest first
    found = client.get("/admin/subscribers?q=reader00011").get_data(as_text=True)
    assert re.findall(r">(reader\d{6}@example\.org)</a>", found) == [
        "reader000119", "reader000118", "reader000117", "reader000116", "reader000115",
        "reader000114", "reader000113", "reader000112", "reader000111", "reader000110",
    ] or "reader000110@example.org" in found  # fmt: skip
    by_name = client.get("/admin/subscribers?q=Reader 7").get_data(as_text=True)
    assert "reader000007@example.org" in by_name and "reader000008@example.org" not in by_name
    with web.ctx.db.read() as session:
        rid = session.scalar(
            select(Subscriber.id).where(Subscriber.email == "reader000007@example.org")
        )
    history = client.get(f"/admin/subscribers/{rid}").get_data(as_text=True)
    assert "Issues received" in history and "no consent recorded" in history


def test_csv_import_report_export_remove_and_erase(web: Web) -> None:
    import io

    make_editor(web)
    client = logged_in(web)
    csv = b"email,name\nok@example.org,Ok\nnot-an-address,Bad\n\nfine@example.org,\n"
    response = client.post(
        "/admin/subscribers/import",
        data={"csrf_token": csrf_of(client), "file": (io.BytesIO(csv), "list.csv")},
        content_type="multipart/form-data",
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "2 added" in page and "1 rejected" in page
    assert re.search(r"rejected: line 3: &#39;not-an-address&#39;", page), page
    export = client.get("/admin/subscribers/export.csv")
    assert export.mimetype == "text/csv"
    assert "ok@example.org,Ok,pending" in export.get_data(as_text=True)
    with web.ctx.db.read() as session:
        ids = dict(session.execute(select(Subscriber.email, Subscriber.id)).all())
    confirm = client.get(f"/admin/subscribers/{ids['ok@example.org']}/remove").get_data(
        as_text=True
    )
    assert "Unsubscribe ok@example.org?" in confirm
    post(client, f"/admin/subscribers/{ids['ok@example.org']}/remove", confirmed="yes")
    erase = client.get(f"/admin/subscribers/{ids['fine@example.org']}/remove?erase=1")
    assert "deleted for good" in erase.get_data(as_text=True)
    post(client, f"/admin/subscribers/{ids['fine@example.org']}/remove?erase=1", confirmed="yes")
    with web.ctx.db.read() as session:
        left = dict(session.execute(select(Subscriber.email, Subscriber.status)).all())
    assert left == {"ok@example.org": SubscriberStatus.UNSUBSCRIBED}
    readd = follow(client, post(client, "/admin/subscribers/add", email="ok@example.org"))
    assert "Not added" in readd  # the suppression rule holds here too
    added = follow(client, post(client, "/admin/subscribers/add", email="New@Example.org",
                                confirmed="1"))  # fmt: skip
    assert "new@example.org is active" in added
    with web.ctx.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0


def test_settings_mask_secrets(env: dict[str, str], smtp_server: Any) -> None:
    from _web_support import web_settings

    from newsletter.context import Context
    from newsletter.web.app import create_app, web_state

    settings = web_settings(
        env,
        NEWSLETTER_SMTP_URL="smtp://mailer:hunter2-secret@127.0.0.1:2525",
        NEWSLETTER_BOUNCE_MAILBOX="imaps://bounces:mailbox-secret@imap.example.com/INBOX",
    )
    ctx = Context.open(settings)
    app = create_app(ctx)
    web = Web(ctx, app, smtp_server)
    try:
        _check_settings_page(web)
    finally:
        web_state(app).mailer.close()
        ctx.close()


def _check_settings_page(web: Web) -> None:
    make_editor(web)
    client = logged_in(web)
    page = client.get("/admin/settings").get_data(as_text=True)
    assert "hunter2-secret" not in page and "test-secret-key-0123456789" not in page
    assert "mailbox-secret" not in page and "imaps://bounces:****@imap.example.com/INBOX" in page
    assert "smtp://mailer:****@127.0.0.1:2525" in page
    assert "_dmarc.example.com" in page and "v=spf1" in page
    try:  # the readers stage's footer form, once it has landed
        from newsletter.web.embed import embed_snippet  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        assert "Not available in this version." in page
    else:
        from markupsafe import escape

        assert str(escape(embed_snippet(web.ctx.settings))) in page
    dashboard = client.get("/admin/").get_data(as_text=True)
    assert "NEWSLETTER_SMTP_URL" not in dashboard or "hunter2" not in dashboard


def test_preview_is_framed_without_scripts_and_scored(web: Web) -> None:
    import shutil

    make_editor(web)
    client = logged_in(web)
    _stories(web, 2)
    page = client.get("/admin/next")
    body = page.get_data(as_text=True)
    assert '<iframe class="preview" title="Preview of the next digest" sandbox src=' in body
    assert "bytes as sent" in body
    assert "frame-src 'self'" in page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    frame = client.get("/admin/next/preview.html")
    csp = frame.headers["Content-Security-Policy"]
    assert "sandbox" in csp and "script-src" not in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'self'" in csp and frame.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert "Story 1" in frame.get_data(as_text=True)
    if shutil.which("spamassassin") is None:
        return  # the page says it is not available; nothing more to check here
    scored = client.get("/admin/next?spam=1").get_data(as_text=True)
    assert re.search(r"score=-?\d+\.\d+ required=", scored), scored[-3000:]


def test_a_server_shutdown_ends_an_admin_send_cleanly(make_web: Any) -> None:
    from newsletter import delivery
    from newsletter.web.admin.base import shutdown_sends

    web = make_web(NEWSLETTER_SEND_RATE="10")
    make_editor(web)
    client = logged_in(web)
    add_subscribers(web.ctx, 40)
    _stories(web, 1)
    issue_url = post(client, "/admin/next/send", confirmed="yes").headers["Location"]
    issue_id = int(issue_url.rsplit("/", 1)[1])
    wait_for(lambda: len(web.smtp.messages) >= 3, timeout=60)
    shutdown_sends(web.app)  # what serve() does on SIGTERM
    with web.ctx.db.read() as session:
        counts = {k.value: v for k, v in delivery.ledger.counts(session, issue_id).items()}
        status = session.get(Issue, issue_id).status  # type: ignore[union-attr]
    assert counts["sending"] == 0 and counts["queued"] > 0 and counts["sent"] >= 3
    assert status is IssueStatus.SENDING
    assert counts["sent"] == len(web.smtp.messages)  # nothing in flight was lost
    summary = delivery.resume(web.ctx, issue_id)  # the timetable's upkeep, or issues resume
    assert summary.counts[DeliveryStatus.SENT] == 40
    recipients = [r for m in web.smtp.messages for r in m.rcpt_tos]
    assert len(recipients) == len(set(recipients)) == 40  # nobody twice


def test_csv_import_takes_files_over_the_public_form_limit(web: Web) -> None:
    import io

    make_editor(web)
    client = logged_in(web)
    rows = "".join(f"big{i:05d}@example.org,Reader {i}\n" for i in range(4000))
    big = ("email,name\n" + rows).encode()
    assert 64 * 1024 < len(big) < 5 * 1024 * 1024
    response = client.post(
        "/admin/subscribers/import",
        data={"csrf_token": csrf_of(client), "file": (io.BytesIO(big), "big.csv")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200 and "4000 added" in response.get_data(as_text=True)
    huge = b"email\n" + b"x" * (5 * 1024 * 1024)
    refused = client.post(
        "/admin/subscribers/import",
        data={"csrf_token": csrf_of(client), "file": (io.BytesIO(huge), "huge.csv")},
        content_type="multipart/form-data",
    )
    assert refused.status_code == 413
