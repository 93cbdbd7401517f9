"""Take docs/img/admin-dashboard.png: the editor's desk with 90 days of sample history.

A throwaway database in a temp folder gets the example stories, about 1,800
readers who joined (and some who left) over the last 90 days, and three sent
issues (to an SMTP server on 127.0.0.1 inside this script); the admin app is
served on 127.0.0.1 and Debian's chromium (Playwright) logs in and photographs
the dashboard.  Nothing leaves the machine.

    python docs/screenshot_admin.py [-o docs/img/admin-dashboard.png]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EDITOR, PASSWORD = "editor@news.example.com", "a long editor passphrase"


def seed(ctx: object) -> None:
    from sqlalchemy import insert, select

    from newsletter import delivery
    from newsletter.context import Context
    from newsletter.mail import build_issue
    from newsletter.models import Issue, Story, Subscriber, utcnow
    from newsletter.stories import import_sources
    from newsletter.web.admin.accounts import add_user

    assert isinstance(ctx, Context)
    rng = random.Random(14)
    now = utcnow()
    rows = []
    for day in range(90, -1, -1):
        for _ in range(rng.randint(8, 30) + (90 - day) // 6):
            joined = now - timedelta(days=day, minutes=rng.randint(0, 1400))
            left = rng.random() < 0.08
            rows.append(
                {
                    "email": f"reader{len(rows):05d}@example.org",
                    "name": f"Reader {len(rows)}",
                    "status": "unsubscribed" if left else rng.choice(["active"] * 12 + ["pending"]),
                    "created_at": joined,
                    "confirmed_at": joined + timedelta(minutes=5),
                    "unsubscribed_at": joined + timedelta(days=rng.randint(1, 20))
                    if left
                    else None,
                    "bounce_count": 0,
                    "source": "web",
                }
            )
    with ctx.db.write() as session:
        session.execute(insert(Subscriber.__table__), rows)
        add_user(session, EDITOR, PASSWORD)
        import_sources(session, [str(ROOT / "newsletter" / "examples" / "stories.xml")], True)
    with ctx.db.read() as session:
        ids = list(session.scalars(select(Story.id).order_by(Story.id)))
    for n, story_ids in enumerate([ids[:3], ids[3:5]]):
        with ctx.db.write() as session:
            issue = build_issue(session, ctx, story_ids=story_ids)
            assert issue is not None
            delivery.enqueue(session, issue.id)
            issue_id = issue.id
        delivery.send_issue(ctx, issue_id)
        with ctx.db.write() as session:
            row = session.get(Issue, issue_id)
            assert row is not None
            row.started_at = now - timedelta(days=2 - n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "docs/img/admin-dashboard.png")
    args = parser.parse_args()

    from aiosmtpd.controller import Controller
    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    from newsletter.config import load_settings
    from newsletter.context import Context
    from newsletter.web.app import create_app

    class Sink:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 OK"

    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    smtp = Controller(Sink(), hostname="127.0.0.1", port=port)
    smtp.start()
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            {
                "NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp}/desk.db",
                "NEWSLETTER_SMTP_URL": f"smtp://127.0.0.1:{port}",
                "NEWSLETTER_SECRET_KEY": "screenshot-secret-key-0123",
                "NEWSLETTER_BASE_URL": "https://news.example.com",
                "NEWSLETTER_FROM": "The Daily Digest <news@news.example.com>",
                "NEWSLETTER_POSTAL_ADDRESS": "1 Fleet Street, London EC4Y 1AA",
                "NEWSLETTER_SITE_NAME": "The Daily Digest",
            },
            dotenv_path=None,
        )
        ctx = Context.open(settings)
        seed(ctx)
        server = make_server("127.0.0.1", 0, create_app(ctx), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"]
            )
            page = browser.new_page(viewport={"width": 1180, "height": 900})
            page.goto(base + "/admin/login")
            page.fill("#email", EDITOR)
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("h1:has-text('Dashboard')")
            args.output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.output), full_page=True)
            browser.close()
        server.shutdown()
        ctx.close()
    smtp.stop()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
