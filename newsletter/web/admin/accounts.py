"""Editors' accounts: argon2 password hashes, and the login throttle kept in the database.

Two rules shape it.  Passwords are only ever stored as argon2id hashes
(``argon2-cffi``; parameters upgraded on the next login when the library's defaults
grow).  Failed logins are counted per account (5 in 15 minutes) and per client IP
(20 in 15 minutes) in ``login_events``, so the limits hold across processes and
restarts; while an account is throttled even the right password is refused, or a
guesser would learn when they hit it.  Domain functions take a session first and do
not commit.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from ...models import LoginEvent, User, utcnow
from ...subscribers import InvalidEmail, normalise_email

log = logging.getLogger("newsletter.admin")

MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 takes any length; a megabyte "password" is only a DoS
WINDOW = timedelta(minutes=15)
ACCOUNT_LIMIT = 5
IP_LIMIT = 20
KEEP_EVENTS = timedelta(days=90)


class AccountError(ValueError):
    """A bad address or password, an unknown or duplicate editor; ``str()`` says which."""


@lru_cache(maxsize=1)
def hasher() -> PasswordHasher:
    return PasswordHasher()


def check_password(password: str) -> str:
    """The password if it is acceptable, else :class:`AccountError` saying why."""
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"the password is longer than {MAX_PASSWORD} characters")
    if password.strip() != password:
        raise AccountError("the password starts or ends with a space (a paste mistake?)")
    return password


def hash_password(password: str) -> str:
    return hasher().hash(check_password(password))


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches; never raises for a wrong or malformed hash."""
    if len(password) > MAX_PASSWORD:
        return False
    try:
        return bool(hasher().verify(password_hash, password))
    except (VerificationError, InvalidHashError):
        return False


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hasher().hash("not-a-password-of-anyone")


def fingerprint(user: User) -> str:
    """Changes when the password does: a session carrying the old one is logged out."""
    return hashlib.sha256(f"{user.id}:{user.password_hash}".encode()).hexdigest()[:24]


def account_key(email: str) -> str:
    """The editor's address as stored (normalised); raw lower-case when it is not valid."""
    try:
        return normalise_email(email)
    except InvalidEmail:
        return email.strip().lower()[:320]


# --------------------------------------------------------------------------- users


def find_user(session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(User.email == account_key(email)))


def add_user(session: Session, email: str, password: str) -> User:
    try:
        address = normalise_email(email)
    except InvalidEmail as exc:
        raise AccountError(f"not a usable address: {exc}") from None
    if find_user(session, address) is not None:
        raise AccountError(f"there is already an editor {address}")
    user = User(email=address, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, email: str, password: str) -> User:
    user = find_user(session, email)
    if user is None:
        raise AccountError(f"there is no editor {account_key(email)}")
    user.password_hash = hash_password(password)
    session.flush()
    return user


def remove_user(session: Session, email: str) -> User:
    user = find_user(session, email)
    if user is None:
        raise AccountError(f"there is no editor {account_key(email)}")
    session.delete(user)
    session.flush()
    return user


def list_users(session: Session) -> Sequence[User]:
    return session.scalars(select(User).order_by(User.email)).all()


# --------------------------------------------------------------------------- logins


@dataclass(frozen=True)
class LoginResult:
    """A logged-in ``user``, or None with ``retry_after`` seconds when throttled."""

    user: User | None
    retry_after: int | None = None

    @property
    def throttled(self) -> bool:
        return self.retry_after is not None


def _wait(times: Sequence[datetime], limit: int, now: datetime) -> int | None:
    """Seconds until fewer than ``limit`` of these failures (newest first) are in the window."""
    if len(times) < limit:
        return None
    until = times[limit - 1] + WINDOW
    return max(1, int((until - now).total_seconds()) + 1)


def throttle_wait(session: Session, account: str, ip: str, now: datetime) -> int | None:
    """How long this account or this IP must wait, or None when it may try now."""
    since = now - WINDOW
    last_ok = session.scalar(
        select(func.max(LoginEvent.at)).where(
            LoginEvent.account == account, LoginEvent.outcome == "ok", LoginEvent.at >= since
        )
    )
    account_since = max(since, last_ok) if last_ok is not None else since
    by_account = session.scalars(
        select(LoginEvent.at)
        .where(
            LoginEvent.account == account,
            LoginEvent.outcome == "failed",
            LoginEvent.at > account_since,
        )
        .order_by(LoginEvent.at.desc())
        .limit(ACCOUNT_LIMIT)
    ).all()
    by_ip = session.scalars(
        select(LoginEvent.at)
        .where(LoginEvent.ip == ip, LoginEvent.outcome == "failed", LoginEvent.at > since)
        .order_by(LoginEvent.at.desc())
        .limit(IP_LIMIT)
    ).all()
    waits = [w for w in (_wait(by_account, ACCOUNT_LIMIT, now), _wait(by_ip, IP_LIMIT, now)) if w]
    return max(waits) if waits else None


def record_event(session: Session, account: str, ip: str, outcome: str, now: datetime) -> None:
    session.add(LoginEvent(account=account[:320], ip=ip[:64], outcome=outcome, at=now))
    session.flush()


def attempt_login(
    session: Session, email: str, password: str, ip: str, now: datetime | None = None
) -> LoginResult:
    """Check a login under the throttle and record it (ok, failed or throttled)."""
    now = now or utcnow()
    account, ip = account_key(email), ip[:64] or "unknown"
    wait = throttle_wait(session, account, ip, now)
    if wait is not None:
        record_event(session, account, ip, "throttled", now)
        log.warning("admin login throttled for %r from %s (%s s)", account, ip, wait)
        return LoginResult(None, wait)
    user = session.scalar(select(User).where(User.email == account))
    if user is None:
        verify_password(_dummy_hash(), password)  # same work, so timing tells nothing
        ok = False
    else:
        ok = verify_password(user.password_hash, password)
    record_event(session, account, ip, "ok" if ok else "failed", now)
    if not ok or user is None:
        log.warning("admin login failed for %r from %s", account, ip)
        return LoginResult(None)
    if hasher().check_needs_rehash(user.password_hash):
        user.password_hash = hasher().hash(password)
    user.last_login_at = now
    prune_events(session, now)
    log.info("admin login: %s from %s", account, ip)
    return LoginResult(user)


def record_logout(session: Session, user: User, ip: str) -> None:
    record_event(session, user.email, ip or "unknown", "logout", utcnow())
    log.info("admin logout: %s from %s", user.email, ip)


def prune_events(session: Session, now: datetime | None = None) -> int:
    """Forget login events older than 90 days (kept that long as the audit trail)."""
    cutoff = (now or utcnow()) - KEEP_EVENTS
    result = session.execute(delete(LoginEvent).where(LoginEvent.at < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]
