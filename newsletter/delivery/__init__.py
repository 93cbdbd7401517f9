"""Delivery: one frozen issue to every reader, never twice, never skipping anyone.

The ledger (one row per recipient, batch claims), the send engine, the SMTP pool
and the Maildir outbox, rate limits, and the commands on top (send, resume,
cancel, retry).  The one stage that commits as it goes, in batches.

Must not touch: templates.  It never renders: per-recipient bytes come from the
``mail`` stage's message factory, filled from the issue's frozen parts.

The names below load on first use (module ``__getattr__``), so importing this
package costs nothing until a name is used: a CLI command pays only for the stages
and libraries it really runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_surface

if TYPE_CHECKING:
    from . import ledger as ledger
    from . import quota as quota
    from .engine import Progress as Progress
    from .ledger import enqueue as enqueue
    from .outcome import Outcome as Outcome
    from .outcome import SendOutcome as SendOutcome
    from .outcome import Transport as Transport
    from .send import AlreadyFinished as AlreadyFinished
    from .send import IssueStateError as IssueStateError
    from .send import LeaseHeld as LeaseHeld
    from .send import SendSummary as SendSummary
    from .send import active_count as active_count
    from .send import cancel as cancel
    from .send import other_senders as other_senders
    from .send import resume as resume
    from .send import resume_unfinished as resume_unfinished
    from .send import retry_failed as retry_failed
    from .send import send_issue as send_issue
    from .send import unfinished_issue as unfinished_issue
    from .transport import SMTPTarget as SMTPTarget
    from .transport import open_transport as open_transport

# public name -> the module of this package that defines it
_SURFACE = {
    "AlreadyFinished": "send",
    "IssueStateError": "send",
    "LeaseHeld": "send",
    "Outcome": "outcome",
    "Progress": "engine",
    "SMTPTarget": "transport",
    "SendOutcome": "outcome",
    "SendSummary": "send",
    "Transport": "outcome",
    "active_count": "send",
    "cancel": "send",
    "enqueue": "ledger",
    "other_senders": "send",
    "ledger": "ledger",
    "quota": "quota",
    "open_transport": "transport",
    "resume": "send",
    "resume_unfinished": "send",
    "retry_failed": "send",
    "send_issue": "send",
    "unfinished_issue": "send",
}
__all__ = sorted(_SURFACE)


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
