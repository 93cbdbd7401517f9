"""The timetable reads NEWSLETTER_BOUNCE_MAILBOX every NEWSLETTER_BOUNCE_POLL_MINUTES."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from _bounce_support import maildir
from sqlalchemy import select

from newsletter import subscribers as subs
from newsletter.config import Settings
from newsletter.context import Context
from newsletter.models import Subscriber, SubscriberStatus
from newsletter.timetable.scheduler import BOUNCES_JOB, build_scheduler, planned_jobs

OURS = Path(__file__).resolve().parents[1] / "fixtures" / "bounces"


def test_bounce_job_planned_only_when_a_mailbox_is_set(
    make_settings: Callable[..., Settings], ctx: Context, tmp_path: Path
) -> None:
    assert BOUNCES_JOB not in {p.id for p in planned_jobs(ctx)}
    settings = make_settings(
        NEWSLETTER_BOUNCE_MAILBOX=str(tmp_path / "Maildir"), NEWSLETTER_BOUNCE_POLL_MINUTES="7"
    )
    plan = {p.id: p for p in planned_jobs(Context(settings, ctx.db))}
    assert "every 7 min" in plan[BOUNCES_JOB].name


def test_the_running_timetable_applies_the_mailbox(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    box = maildir(tmp_path / "Maildir", [(OURS / "dsn-hard-postfix.eml").read_bytes()])
    ctx = Context.open(make_settings(NEWSLETTER_BOUNCE_MAILBOX=str(box)))
    try:
        with ctx.db.write() as session:
            subs.add_subscriber(session, "gone.reader@example.net", confirmed=True)
        scheduler = build_scheduler(ctx, blocking=False)
        scheduler.start()
        try:
            deadline = time.monotonic() + 60  # a guard against hanging, not a speed bound
            while list((box / "new").iterdir()) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            scheduler.shutdown(wait=True)
        with ctx.db.read() as session:
            status = session.scalars(select(Subscriber.status)).one()
        assert status is SubscriberStatus.BOUNCED
        assert [p.name.endswith(":2,S") for p in (box / "cur").iterdir()] == [True]
    finally:
        ctx.close()
