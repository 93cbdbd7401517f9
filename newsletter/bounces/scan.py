"""``bounces scan``: read sources, analyse, apply; one transaction per message.

Shared by the CLI and the timetable.  A message is marked processed in its
mailbox only after its transaction committed: a crash in between reads it again
next time, and its Message-ID (or hash) in ``bounce_events`` makes that harmless.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from ..context import Context
from .apply import Applied, Matcher, message_key, record
from .parse import analyse
from .sources import open_source
from .verp import TagSigner

__all__ = ["ScanLine", "ScanSummary", "matcher_for", "scan"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScanLine:
    source: str
    applied: Applied

    def as_json(self) -> dict[str, object]:
        """The ``bounces scan --json`` contract (DESIGN.md)."""
        f = self.applied.finding
        return {
            "source": self.source,
            "recipient": f.recipient,
            "type": f.type,
            "status": f.status,
            "issue": self.applied.issue_id,
            "subscriber": self.applied.subscriber_id,
            "text": f.text,
        }


@dataclass
class ScanSummary:
    messages: int = 0
    duplicates: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


def matcher_for(ctx: Context) -> Matcher:
    return Matcher(TagSigner(ctx.secret_key), ctx.tokens)


def scan(
    ctx: Context,
    specs: list[str],
    *,
    dry_run: bool = False,
    on_line: Callable[[ScanLine], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> ScanSummary:
    """Scan every source in ``specs``; raises SourceError for one that cannot be read."""
    summary = ScanSummary()
    matcher = matcher_for(ctx)
    trust_address = ctx.settings.bounce_address is None
    for spec in specs:
        source = open_source(spec, dry_run=dry_run, ssl_context=ssl_context)
        try:
            for item in source.items():
                try:
                    findings = analyse(item.raw)
                except Exception:  # a parser bug must not stop the scan or lose the message
                    log.exception("bounces: cannot analyse %s; left in place", item.key)
                    summary.unreadable.append(item.key)
                    continue
                session_factory = ctx.db.read if dry_run else ctx.db.write
                with session_factory() as session:
                    applied = record(
                        session,
                        source=item.key,
                        key=message_key(item.raw),
                        findings=findings,
                        matcher=matcher,
                        settings=ctx.settings,
                        trust_address=trust_address,
                        dry_run=dry_run,
                    )
                source.done(item)
                summary.messages += 1
                summary.duplicates += any(a.duplicate for a in applied)
                for one in applied:
                    summary.by_type[one.finding.type] = summary.by_type.get(one.finding.type, 0) + 1
                    if on_line is not None:
                        on_line(ScanLine(item.key, one))
            summary.unreadable += getattr(source, "unreadable", [])
        finally:
            source.close()
    return summary
