"""Confirmation emails sent on behalf of the web app, off the request thread.

The subscribe page must answer the same way, and in about the same time, whether
the address is new, pending or already active; sending SMTP inside the request
would make "new" answers measurably slower (a timing probe) and would hold a
request thread hostage to a slow mail server.  So the request only queues the
mail, and one background thread renders it (``render.render_confirmation``, from
``templates/email/confirm.*``), builds it (``message.build_single``) and sends it
through the same transport as the digests (``transport.open_transport``).
A failure is logged, never shown: the person can simply submit the form again.

The queue lives in memory: a crash loses at most the few confirmations not yet
sent, which the person recovers from by resubmitting (pending addresses always
get a fresh link).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from ..context import Context
from ..delivery import Outcome, Transport, open_transport

log = logging.getLogger("newsletter.web.mail")


@dataclass(frozen=True)
class Confirmation:
    """One confirmation email to send: who, and the link that confirms them."""

    subscriber_id: int
    email: str
    name: str
    confirm_url: str
    already: bool = False  # an active reader: "you are already subscribed", no link
    silent: bool = False  # built like any other (the same work) but never sent: a complainer
    preferences_url: str | None = None  # the reader's preferences page, linked in the email


class Outgoing(Protocol):
    """Another one-off email the mailer sends (the welcome): it sends itself."""

    @property
    def subscriber_id(self) -> int: ...

    def send(self, ctx: Context, transport: Transport, retry_delays: tuple[float, ...]) -> bool: ...


def send_confirmation(
    ctx: Context, item: Confirmation, transport: Transport, retry_delays: tuple[float, ...] = (2.0,)
) -> bool:
    """Render, build and send one confirmation through ``transport``; True when accepted.

    A temporary failure (4xx, dropped connection) is retried after a short pause;
    anything else is logged and given up on: the person can ask again.
    """
    from ..mail import build_single, render_already_subscribed, render_confirmation

    # No name: until the address is confirmed, the name is a stranger's text (anyone
    # can type anyone's address), and To or "Hi <name>" would let them write to it.
    if item.already:
        rendered = render_already_subscribed(ctx, "", item.confirm_url)
    else:
        rendered = render_confirmation(ctx, "", item.confirm_url, item.preferences_url)
    built = build_single(ctx, item.email, "", rendered.subject, rendered.html, rendered.text)
    if item.silent:
        log.info("subscriber %s: no mail to this address: the note is not sent", item.subscriber_id)
        return True
    what = f"confirmation to subscriber {item.subscriber_id}"
    return deliver_single(ctx, transport, item.email, built.data, retry_delays, what)


def deliver_single(
    ctx: Context,
    transport: Transport,
    email: str,
    data: bytes,
    retry_delays: tuple[float, ...],
    what: str,
) -> bool:
    """Hand one message to ``transport``, retrying temporary failures; True when accepted."""
    for delay in (*retry_delays, None):
        outcome = transport.send(ctx.settings.from_email, email, data)
        if outcome.outcome is Outcome.SENT:
            log.info("%s sent", what)
            return True
        if outcome.outcome is not Outcome.RETRY or delay is None:
            break
        time.sleep(delay)
    log.warning("%s not accepted: %s", what, outcome.text)
    return False


class ConfirmationMailer:
    """A queue plus one lazily started daemon thread that drains it."""

    def __init__(self, ctx: Context, retry_delays: tuple[float, ...] = (2.0,)) -> None:
        self._ctx = ctx
        self.retry_delays = retry_delays
        self._queue: queue.Queue[Confirmation | Outgoing | None] = queue.Queue(maxsize=10_000)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, item: Confirmation | Outgoing) -> None:
        """Queue a confirmation; if the queue is full, log and drop (the form can be resent)."""
        self._ensure_thread()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            log.error("confirmation queue full; dropped one for subscriber %s", item.subscriber_id)

    def join(self) -> None:
        """Block until everything queued so far has been handled (tests, shutdown)."""
        self._queue.join()

    def close(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop the thread."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="confirmation-mailer", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        transport: Transport | None = None
        while True:
            try:
                # Keep the SMTP connection while work keeps coming, drop it when idle.
                item = self._queue.get(timeout=5.0 if transport is not None else None)
            except queue.Empty:
                _close(transport)
                transport = None
                continue
            try:
                if item is None:
                    return
                if transport is None:
                    transport = open_transport(self._ctx.settings)
                if isinstance(item, Confirmation):
                    send_confirmation(self._ctx, item, transport, self.retry_delays)
                else:
                    item.send(self._ctx, transport, self.retry_delays)
            except Exception:
                log.exception(
                    "confirmation to subscriber %s failed", getattr(item, "subscriber_id", "?")
                )
                _close(transport)
                transport = None
            finally:
                if item is None:
                    _close(transport)
                self._queue.task_done()


def _close(transport: Transport | None) -> None:
    if transport is not None:
        try:
            transport.close()
        except Exception:
            log.exception("closing the mail transport failed")
    return None
