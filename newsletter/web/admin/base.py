"""The ``admin`` blueprint object and what its views share.

Shared: the app's :class:`~newsletter.web.app.WebState` (through ``current_app``,
so no view imports the factory), the logged-in editor (``g.editor``, set by
:mod:`.auth`), page rendering with the admin CSP, confirmation pages, and the
registry of sends running in this process's background threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import (
    Blueprint,
    Flask,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.wrappers import Response

from ...context import Context
from .. import guard

if TYPE_CHECKING:
    from ..app import WebState

log = logging.getLogger("newsletter.admin")

admin = Blueprint("admin", __name__, url_prefix="/admin")

# Admin pages load their one script from /admin/assets/ (never inline), poll JSON
# from /admin/, and frame the preview route; everything else stays shut.
PAGE_CSP = (
    "default-src 'none'; style-src 'nonce-{nonce}'; script-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# A frozen email shown inside the next-digest and issue pages: inline styles and
# remote images as in a mail client, no script at all, framed by our own pages only.
FRAME_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox"
)


@dataclass
class Editor:
    """The logged-in editor of this request."""

    id: int
    email: str


@dataclass
class AdminState:
    """Per-app admin state: background sends, and cached SpamAssassin scores."""

    runs: dict[int, threading.Thread] = field(default_factory=dict)
    spam_scores: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)  # set when serve ends

    def start(self, issue_id: int, label: str, fn: Callable[[], object]) -> bool:
        """Run ``fn`` for ``issue_id`` in a thread unless one is running already.

        ``fn`` must honour :attr:`stop` (the delivery functions' ``stop=``): when the
        server shuts down, sends finish the messages in flight and leave the rest
        queued for ``issues resume`` or the timetable's upkeep.
        """
        with self.lock:
            if self.stop.is_set():
                return False
            running = self.runs.get(issue_id)
            if running is not None and running.is_alive():
                return False

            def work() -> None:
                try:
                    fn()
                except Exception:
                    log.exception("admin: %s of issue %s failed", label, issue_id)

            thread = threading.Thread(target=work, name=f"admin-{label}-{issue_id}", daemon=True)
            self.runs[issue_id] = thread
            thread.start()
            return True

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop every send after the messages in flight and wait for them."""
        self.stop.set()
        with self.lock:
            threads = list(self.runs.values())
        for thread in threads:
            thread.join(timeout)

    def running(self, issue_id: int) -> bool:
        with self.lock:
            thread = self.runs.get(issue_id)
            return thread is not None and thread.is_alive()


def web() -> WebState:
    state: WebState = current_app.extensions["newsletter"]
    return state


def ctx() -> Context:
    return web().ctx


def admin_state() -> AdminState:
    state = current_app.extensions.get("newsletter_admin")
    if state is None:
        state = current_app.extensions["newsletter_admin"] = AdminState()
    assert isinstance(state, AdminState)
    return state


def shutdown_sends(app: Flask) -> None:
    """Called when the server stops: admin sends end cleanly (see :meth:`AdminState.start`)."""
    state = app.extensions.get("newsletter_admin")
    if isinstance(state, AdminState):
        state.shutdown()


def editor() -> Editor:
    who = g.get("editor")
    assert isinstance(who, Editor), "admin view reached without a session"
    return who


def client_ip() -> str:
    return request.remote_addr or "unknown"


def page(template: str, http_status: int = 200, **values: Any) -> tuple[str, int]:
    """Render ``admin/<template>`` with the admin CSP and no caching."""
    g.csp = PAGE_CSP.format(nonce=guard.csp_nonce())
    g.token_page = True  # no-store, no Referer: admin pages hold readers' data
    return render_template(f"admin/{template}", **values), http_status


def framed(html: str) -> Response:
    """A frozen email for an iframe of our own pages: its own strict, script-free CSP."""
    g.csp = FRAME_CSP
    g.frame_options = "SAMEORIGIN"
    g.token_page = True
    return Response(html, mimetype="text/html")


def done(message: str, endpoint: str, category: str = "ok", **values: Any) -> Response:
    """Flash ``message`` and 303 to ``endpoint`` (POST-redirect-GET)."""
    flash(message, category)
    return redirect(url_for(endpoint, **values), code=303)


def confirm_page(
    title: str, question: str, action: str, button: str, back: str, danger: bool = True
) -> tuple[str, int]:
    """A page with one POST button: how every irreversible action is confirmed."""
    return page(
        "confirm.html",
        title=title,
        question=question,
        action=action,
        button=button,
        back=back,
        danger=danger,
    )
