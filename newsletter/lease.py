"""Expiring leases in the database: one sender per issue, one timetable per deployment.

A lease is a row keyed by name.  Taking it is a single conditional write (insert,
or update where the current holder's lease has expired or is ours), so it works
the same on SQLite and PostgreSQL with no coordinator process.  A holder renews
while it works; a crashed holder simply stops renewing and, once ``expires_at``
passes, the next process takes over.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import Lease, utcnow


class LeaseHeld(RuntimeError):
    """Someone else holds the lease; the message says who (host, pid) and until when."""

    def __init__(self, lease: Lease) -> None:
        self.host = lease.host
        self.pid = lease.pid
        self.expires_at = lease.expires_at
        super().__init__(
            f"{lease.name} is held by pid {lease.pid} on {lease.host} "
            f"until {lease.expires_at:%Y-%m-%d %H:%M:%S} UTC"
        )


@dataclass(frozen=True)
class Holder:
    """Identity of this process as a lease holder."""

    token: str
    host: str
    pid: int

    @classmethod
    def this_process(cls) -> Holder:
        return cls(token=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid())


def acquire(
    session: Session, name: str, holder: Holder, ttl: timedelta, now: datetime | None = None
) -> None:
    """Take or renew lease ``name`` for ``ttl``; raise :class:`LeaseHeld` if it is taken.

    Call inside a write transaction (BEGIN IMMEDIATE on SQLite, so the check and the
    write cannot interleave with another process).
    """
    now = now or utcnow()
    expires = now + ttl
    result = session.execute(
        update(Lease)
        .where(Lease.name == name)
        .where(or_(Lease.holder == holder.token, Lease.expires_at < now))
        .values(holder=holder.token, host=holder.host, pid=holder.pid, expires_at=expires)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount:  # type: ignore[attr-defined]
        return
    existing = session.get(Lease, name, populate_existing=True)
    if existing is not None:
        raise LeaseHeld(existing)
    try:
        with session.begin_nested():
            session.add(
                Lease(
                    name=name,
                    holder=holder.token,
                    host=holder.host,
                    pid=holder.pid,
                    acquired_at=now,
                    expires_at=expires,
                )
            )
    except IntegrityError:
        existing = session.get(Lease, name, populate_existing=True)
        if existing is None:
            raise
        raise LeaseHeld(existing) from None


def release(session: Session, name: str, holder: Holder) -> None:
    """Give the lease up (only if we still hold it)."""
    session.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder.token))


def current(session: Session, name: str, now: datetime | None = None) -> Lease | None:
    """The unexpired lease called ``name``, if any."""
    lease = session.get(Lease, name, populate_existing=True)
    if lease is None or lease.expires_at < (now or utcnow()):
        return None
    return lease
