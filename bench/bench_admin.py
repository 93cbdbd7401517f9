"""Readers paging in the admin at 100,000 rows: first page, deep pages, searches.

What it measures: real ``GET /admin/subscribers`` requests through the Flask app
(logged in, so the session check and the page render are included) on a SQLite
file holding N readers.  Keyset paging (``id < cursor``) should cost the same on
page 1 and page 2,000; a search scans only until it has a page of matches (a
rare match, or none, scans the table once).  It prints the median and p90 of
``--repeat`` requests per case.  Figures, not a test:

    python bench/bench_admin.py [--readers 100000] [--issues 3] [--repeat 20]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--issues", type=int, default=3, help="sent issues, each to every reader")
    args = parser.parse_args()

    from sqlalchemy import insert, text

    from newsletter.config import load_settings
    from newsletter.context import Context
    from newsletter.models import Issue, IssueKind, IssueStatus, Subscriber, utcnow
    from newsletter.web.admin.accounts import add_user
    from newsletter.web.app import create_app, web_state

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            {
                "NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp}/bench.db",
                "NEWSLETTER_SECRET_KEY": "bench-secret-key-0123456789",
                "NEWSLETTER_BASE_URL": "https://news.example.com",
            },
            dotenv_path=None,
        )
        ctx = Context.open(settings)
        now = utcnow()
        statuses = ["active"] * 8 + ["unsubscribed", "pending"]
        with ctx.db.write() as session:
            for start in range(0, args.readers, 10_000):
                rows = [
                    {
                        "email": f"reader{i:07d}@example.org",
                        "name": f"Reader {i}",
                        "status": statuses[i % 10],
                        "created_at": now,
                        "bounce_count": 0,
                        "source": "import",
                    }
                    for i in range(start, min(start + 10_000, args.readers))
                ]
                session.execute(insert(Subscriber.__table__), rows)
            add_user(session, "bench@news.example.com", "bench passphrase 123")
            for n in range(args.issues):  # each sent to every active reader
                issue = Issue(kind=IssueKind.MANUAL, subject=f"Issue {n}", status=IssueStatus.SENT,
                              html="<p>x</p>", text="x", preheader="", started_at=now)  # fmt: skip
                session.add(issue)
                session.flush()
                session.execute(
                    text(
                        "INSERT INTO deliveries (issue_id, subscriber_id, status, attempts,"
                        " sent_at) SELECT :i, id, 'sent', 1, :t FROM subscribers"
                        " WHERE status = 'active'"
                    ),
                    {"i": issue.id, "t": now.replace(tzinfo=None)},
                )
        app = create_app(ctx)
        client = app.test_client()
        client.environ_base.update({"wsgi.url_scheme": "https", "HTTP_HOST": "news.example.com"})
        form = client.get("/admin/login").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
        login = client.post(
            "/admin/login",
            data={"csrf_token": token, "email": "bench@news.example.com",
                  "password": "bench passphrase 123"},
        )  # fmt: skip
        assert login.status_code == 303, login.status_code
        deep = min(1_000, args.readers)  # a cursor near the oldest rows: page ~1,980 of 2,000
        unsub = "/admin/subscribers?status=unsubscribed&before="
        cases = {
            "page 1 (newest 50)": "/admin/subscribers",
            f"deep page (~{(args.readers - deep) // 50:,})": f"/admin/subscribers?before={deep}",
            "status filter, deep (unsubscribed)": f"{unsub}{deep}",
            "search, common match (q=reader00)": "/admin/subscribers?q=reader00",
            "search, one match (q=reader0000042@)": "/admin/subscribers?q=reader0000042%40",
            "search, no match (q=nobody)": "/admin/subscribers?q=nobody",
            f"dashboard ({args.issues} issues to every reader)": "/admin/",
            "issues list": "/admin/issues",
            "one issue": "/admin/issues/1",
        }
        print(
            f"{args.readers:,} readers, {args.issues} issues sent to every active reader, "
            f"{args.repeat} requests per case (Flask test client)"
        )
        print(f"{'case':40} {'median':>9} {'p90':>9}")
        for label, url in cases.items():
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                response = client.get(url)
                times.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200, (url, response.status_code)
            times.sort()
            p90 = times[int(len(times) * 0.9) - 1]
            print(f"{label:40} {statistics.median(times):7.1f} ms {p90:7.1f} ms")
        web_state(app).mailer.close()
        ctx.close()


if __name__ == "__main__":
    main()
