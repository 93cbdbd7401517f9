"""Mail: the digest chosen and frozen, rendered once, then made into message bytes.

Render (Jinja2, then premailer once per issue), per-recipient message bytes,
header safety, DKIM signing, and the digest (which stories, one per day).

Must not touch: the database on its own account -- it never opens a session (the
digest works in the caller's session and does not commit) -- nor SMTP or the
ledger: handing bytes to a server is ``delivery``'s job.

The names below load on first use (module ``__getattr__``), so importing this
package costs nothing until a name is used: a CLI command pays only for the stages
and libraries it really runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_surface

if TYPE_CHECKING:
    from .digest import AlreadySentToday as AlreadySentToday
    from .digest import UnknownStories as UnknownStories
    from .digest import build_issue as build_issue
    from .digest import local_today as local_today
    from .digest import next_issue_number as next_issue_number
    from .dkim import DkimKeyError as DkimKeyError
    from .dkim import DkimSigner as DkimSigner
    from .headers import addr_spec as addr_spec
    from .headers import clean_header_text as clean_header_text
    from .headers import header_safe as header_safe
    from .message import BuiltMessage as BuiltMessage
    from .message import MessageFactory as MessageFactory
    from .message import build_single as build_single
    from .render import GMAIL_CLIP_BYTES as GMAIL_CLIP_BYTES
    from .render import TemplateProblem as TemplateProblem
    from .render import public_copy as public_copy
    from .render import render_already_subscribed as render_already_subscribed
    from .render import render_confirmation as render_confirmation
    from .render import render_issue as render_issue

# public name -> the module of this package that defines it
_SURFACE = {
    "AlreadySentToday": "digest",
    "BuiltMessage": "message",
    "DkimKeyError": "dkim",
    "DkimSigner": "dkim",
    "GMAIL_CLIP_BYTES": "render",
    "MessageFactory": "message",
    "TemplateProblem": "render",
    "UnknownStories": "digest",
    "addr_spec": "headers",
    "build_issue": "digest",
    "build_single": "message",
    "clean_header_text": "headers",
    "header_safe": "headers",
    "local_today": "digest",
    "next_issue_number": "digest",
    "public_copy": "render",
    "render_already_subscribed": "render",
    "render_confirmation": "render",
    "render_issue": "render",
}
__all__ = sorted(_SURFACE)


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
