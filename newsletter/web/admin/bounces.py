"""``/admin/bounces``: what came back, its class, and what was done about it."""

from __future__ import annotations

from typing import Any

from flask import request, url_for
from sqlalchemy import select

from ...models import Delivery, DeliveryStatus, Subscriber
from .base import admin, ctx, page
from .hooks import bounce_page

PAGE_SIZE = 100


@admin.get("/bounces")
def bounces() -> tuple[str, int]:
    events: dict[str, Any] | None
    before = request.args.get("before", type=int)
    with ctx().db.read() as session:
        events = bounce_page(session, before, PAGE_SIZE)
        refused = session.execute(
            select(
                Delivery.issue_id,
                Subscriber.id,
                Subscriber.email,
                Subscriber.status,
                Delivery.last_code,
                Delivery.last_response,
                Delivery.sent_at,
            )
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.status == DeliveryStatus.BOUNCED)
            .order_by(Delivery.issue_id.desc(), Delivery.subscriber_id.desc())
            .limit(PAGE_SIZE)
        ).all()
    older = None
    if events is not None and len(events["rows"]) >= PAGE_SIZE:
        older = url_for("admin.bounces", before=events["rows"][-1]["id"])
    return page("bounces.html", events=events, refused=refused, older=older)
