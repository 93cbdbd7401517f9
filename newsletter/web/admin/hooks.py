"""Where the admin meets stages that arrive later (bounces, reader preferences, DKIM).

Each function answers from what exists now and degrades to "not available" when a
stage is missing, so the admin works before and after those stages land.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ...config import Settings


def extra_warnings(session: Session, settings: Settings) -> list[str]:
    """Policy-bounce spikes and unreadable bounce mailboxes (from the bounce stage)."""
    return []


def bounce_diagnostics(session: Session, issue_id: int) -> list[tuple[str, int]]:
    """The commonest bounce diagnostics of an issue (from the bounce stage's events)."""
    return []


def reader_events(session: Session, subscriber_id: int) -> list[dict[str, object]]:
    """A reader's bounces and complaints as they came back (from the bounce stage)."""
    return []


def bounce_page(session: Session, before: int | None, limit: int) -> dict[str, Any] | None:
    """Recorded bounce events, newest first, and unmatched ones; None before the stage lands."""
    return None


def dkim_records(settings: Settings) -> list[tuple[str, str]]:
    """(name, TXT value) for each configured DKIM key, as ``newsletter dkim record`` prints."""
    from ...mail import DkimKeyError, DkimSigner

    try:
        signer = DkimSigner.from_settings(settings)
    except DkimKeyError as exc:
        return [("(the DKIM key cannot be used)", str(exc))]
    if signer is None:
        return []
    return [(key.record_name, key.record_value) for key in signer.keys]


def footer_snippet(settings: Settings) -> str | None:
    """The signup form to paste into the site (from the readers stage), if it has landed."""
    return None
