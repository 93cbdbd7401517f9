"""Subscribers: who is on the list, how they join, leave and are forgotten.

Subscribe / confirm / unsubscribe / erase, CSV in and out, address rules and the
signed link tokens.  Domain functions take a session first and never commit: the
CLI, web app and scheduler own the transactions.

Must not touch: templates, messages or SMTP.  A confirmation email is the web
app's job (``web.confirmations``); this stage only records who asked.

The names below load on first use (module ``__getattr__``), so importing this
package costs nothing until a name is used: a CLI command pays only for the stages
and libraries it really runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_surface

if TYPE_CHECKING:
    from .addresses import NAME_MAX as NAME_MAX
    from .addresses import InvalidEmail as InvalidEmail
    from .addresses import canonical_mailbox as canonical_mailbox
    from .addresses import clean_name as clean_name
    from .addresses import form_name as form_name
    from .addresses import normalise_email as normalise_email
    from .csvio import CsvError as CsvError
    from .csvio import CsvReport as CsvReport
    from .csvio import apply_import as apply_import
    from .csvio import export_csv as export_csv
    from .csvio import import_csv as import_csv
    from .csvio import parse_csv as parse_csv
    from .store import IP_MAX as IP_MAX
    from .store import SUPPRESSED as SUPPRESSED
    from .store import Suppressed as Suppressed
    from .store import UnknownSubscriber as UnknownSubscriber
    from .store import add_subscriber as add_subscriber
    from .store import confirm as confirm
    from .store import count_by_status as count_by_status
    from .store import current_epoch as current_epoch
    from .store import find as find
    from .store import list_subscribers as list_subscribers
    from .store import mark_bounced as mark_bounced
    from .store import may_mail as may_mail
    from .store import purge_expired_pending as purge_expired_pending
    from .store import remove as remove
    from .store import request_subscription as request_subscription
    from .store import signup_request as signup_request
    from .store import unsubscribe as unsubscribe
    from .tokens import CONFIRM_MAX_AGE as CONFIRM_MAX_AGE
    from .tokens import ExpiredToken as ExpiredToken
    from .tokens import InvalidToken as InvalidToken
    from .tokens import Tokens as Tokens

# public name -> the module of this package that defines it
_SURFACE = {
    "CONFIRM_MAX_AGE": "tokens",
    "CsvError": "csvio",
    "CsvReport": "csvio",
    "ExpiredToken": "tokens",
    "IP_MAX": "store",
    "InvalidEmail": "addresses",
    "InvalidToken": "tokens",
    "NAME_MAX": "addresses",
    "SUPPRESSED": "store",
    "Suppressed": "store",
    "Tokens": "tokens",
    "UnknownSubscriber": "store",
    "add_subscriber": "store",
    "apply_import": "csvio",
    "canonical_mailbox": "addresses",
    "clean_name": "addresses",
    "current_epoch": "store",
    "form_name": "addresses",
    "confirm": "store",
    "count_by_status": "store",
    "export_csv": "csvio",
    "find": "store",
    "import_csv": "csvio",
    "list_subscribers": "store",
    "mark_bounced": "store",
    "normalise_email": "addresses",
    "parse_csv": "csvio",
    "purge_expired_pending": "store",
    "remove": "store",
    "request_subscription": "store",
    "may_mail": "store",
    "signup_request": "store",
    "unsubscribe": "store",
}
__all__ = sorted(_SURFACE)


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
