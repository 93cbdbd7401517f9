"""The data model (DESIGN.md "Data"): stories, subscribers, issues, deliveries.

Portable on purpose: no SQLite-only constructs, enums stored as checked VARCHARs,
datetimes stored as naive UTC and handed back timezone-aware, so the same models
run on PostgreSQL.  The ``deliveries`` table is the ledger that makes sends exact:
one row per (issue, subscriber), and its status is the truth of who got what.
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates


def utcnow() -> datetime:
    """Aware 'now' in UTC; the one clock the models use (tests may freeze it)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Store naive UTC, return aware UTC: identical behaviour on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use an aware datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQL results on SQLite
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SubscriberStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"  # reported us as spam: never mailed again, never re-imported


class BounceType(enum.StrEnum):
    """What a returned message or provider event says (newsletter.bounces.classify)."""

    HARD = "hard"
    SOFT = "soft"
    POLICY = "policy"  # the receiver refused *us*: the subscriber is untouched
    COMPLAINT = "complaint"
    AUTOREPLY = "autoreply"
    NONE = "none"


class Frequency(enum.StrEnum):
    """How often a reader wants the featured stories (their preferences page)."""

    DAILY = "daily"
    WEEKLY = "weekly"


class IssueKind(enum.StrEnum):
    DIGEST = "digest"
    MANUAL = "manual"
    WEEKLY = "weekly"  # the week's edition, to weekly readers only


class IssueStatus(enum.StrEnum):
    SENDING = "sending"
    PAUSED = "paused"  # a 5.7.x policy/auth refusal: the sender's problem, resume after fixing
    SENT = "sent"
    CANCELLED = "cancelled"


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    BOUNCED = "bounced"
    SKIPPED = "skipped"  # unsubscribed/bounced after enqueue: recorded, never mailed


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def without_nul(value: str | None) -> str | None:
    """Text as a database can hold it on every backend: PostgreSQL refuses NUL bytes.

    The importers already strip them; this is the last guard for every other way
    text reaches a story or a subscriber (the CLI, the web form, the admin).
    """
    return value.replace("\x00", "") if value is not None and "\x00" in value else value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class Story(Base):
    __tablename__ = "stories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guid: Mapped[str] = mapped_column(String(1024), unique=True)
    title: Mapped[str] = mapped_column(String(500))
    url: Mapped[str] = mapped_column(String(2048))
    summary: Mapped[str] = mapped_column(Text, default="")
    image_url: Mapped[str | None] = mapped_column(String(2048))
    image_alt: Mapped[str | None] = mapped_column(String(500))
    author: Mapped[str | None] = mapped_column(String(300))
    published_at: Mapped[datetime | None]
    featured: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    source: Mapped[str] = mapped_column(String(2048), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # The kicker: the feed's <category>, else the feed's title ("World").
    section: Mapped[str | None] = mapped_column(String(200))
    # Where an undated story sorts: just after the dated stories of its import, so an
    # undated item never counts as the newest (None: published_at, else created_at).
    sort_at: Mapped[datetime | None]
    # The editor's order for the next digest (admin): the pinned story leads, then
    # stories with a position in that order, then the rest newest first.
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    position: Mapped[int | None] = mapped_column(Integer)

    @validates(
        "guid", "title", "url", "summary", "image_url", "image_alt", "author", "source", "section"
    )
    def _no_nul(self, _key: str, value: str | None) -> str | None:
        return without_nul(value)


class Subscriber(Base):
    __tablename__ = "subscribers"
    # Ids are never reused (AUTOINCREMENT on SQLite; sequences elsewhere): an erased
    # person's never-expiring unsubscribe link must not point at a later subscriber.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[SubscriberStatus] = mapped_column(
        _enum(SubscriberStatus, "subscriber_status"), default=SubscriberStatus.PENDING, index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    confirmed_at: Mapped[datetime | None]
    unsubscribed_at: Mapped[datetime | None]
    consent_at: Mapped[datetime | None]
    consent_ip: Mapped[str | None] = mapped_column(String(64))
    confirm_sent_at: Mapped[datetime | None]
    bounce_count: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[str] = mapped_column(String(32), default="cli")  # web | cli | import
    # Bumped on every unsubscribe and every new signup: a confirm token carries the
    # epoch it was minted in, so a link from before the person left stays dead.
    epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Soft-bounce history lives in bounce_events (type soft, this subscriber_id).
    complained_at: Mapped[datetime | None]
    frequency: Mapped[Frequency] = mapped_column(
        _enum(Frequency, "frequency"), default=Frequency.DAILY, server_default="daily"
    )
    # The sections chosen on the preferences page, a sorted JSON list; NULL = all.
    sections: Mapped[str | None] = mapped_column(Text)
    paused_until: Mapped[datetime | None]  # "pause for 2 / 4 weeks": no issue until then

    @validates("email", "name", "consent_ip", "source")
    def _no_nul(self, _key: str, value: str | None) -> str | None:
        return without_nul(value)


class Issue(Base):
    __tablename__ = "issues"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[IssueKind] = mapped_column(_enum(IssueKind, "issue_kind"))
    subject: Mapped[str] = mapped_column(String(998))
    status: Mapped[IssueStatus] = mapped_column(
        _enum(IssueStatus, "issue_status"), default=IssueStatus.SENDING, index=True
    )
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    preheader: Mapped[str] = mapped_column(Text, default="")
    digest_date: Mapped[date | None] = mapped_column(Date, unique=True)
    # The ISO week of a weekly edition ("2026-W49"): unique, so one weekly per week.
    edition_week: Mapped[str | None] = mapped_column(String(10), unique=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    stories: Mapped[list[IssueStory]] = relationship(
        back_populates="issue", order_by="IssueStory.position", cascade="all, delete-orphan"
    )


class IssueVariant(Base):
    """One rendering of an issue for one set of chosen sections (frozen like the issue).

    Rendered once per distinct section set among the issue's readers, never per
    reader; ``story_count`` 0 records that readers of that set had nothing left.
    """

    __tablename__ = "issue_variants"

    issue_id: Mapped[int] = mapped_column(
        ForeignKey("issues.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    sections: Mapped[str] = mapped_column(Text)  # the same sorted JSON list as subscribers'
    story_count: Mapped[int] = mapped_column(Integer)
    subject: Mapped[str] = mapped_column(String(998))
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    preheader: Mapped[str] = mapped_column(Text, default="")


class IssueStory(Base):
    __tablename__ = "issue_stories"

    issue_id: Mapped[int] = mapped_column(
        ForeignKey("issues.id", ondelete="CASCADE"), primary_key=True
    )
    story_id: Mapped[int] = mapped_column(ForeignKey("stories.id"), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer)

    issue: Mapped[Issue] = relationship(back_populates="stories")
    story: Mapped[Story] = relationship()


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_issue_status_subscriber", "issue_id", "status", "subscriber_id"),
    )

    issue_id: Mapped[int] = mapped_column(
        ForeignKey("issues.id", ondelete="CASCADE"), primary_key=True
    )
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    status: Mapped[DeliveryStatus] = mapped_column(
        _enum(DeliveryStatus, "delivery_status"), default=DeliveryStatus.QUEUED
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_code: Mapped[int | None] = mapped_column(Integer)
    last_response: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(255), index=True)
    sent_at: Mapped[datetime | None]
    variant: Mapped[int | None] = mapped_column(Integer)  # issue_variants.number; NULL = whole
    # A bounce or complaint that came back after the 250 (newsletter.bounces).
    bounce_type: Mapped[BounceType | None] = mapped_column(_enum(BounceType, "bounce_type"))
    bounce_status: Mapped[str | None] = mapped_column(String(32))
    bounce_text: Mapped[str | None] = mapped_column(Text)
    bounced_at: Mapped[datetime | None]
    # The sender working this row (``host:pid:token``) and until when its claim holds;
    # only a row whose claim has expired may be taken back (DESIGN "Delivery semantics" 7).
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claim_expires_at: Mapped[datetime | None]


class BounceEvent(Base):
    """One recipient's finding from one returned message or provider event.

    ``message_key`` (the message's Message-ID, else a hash of its bytes, or the
    provider's event id; ``#n`` for its n-th recipient after the first) is unique:
    reading a mailbox again records nothing twice.  ``action`` says what was done.
    """

    __tablename__ = "bounce_events"
    __table_args__ = (Index("ix_bounce_events_subscriber_type", "subscriber_id", "type"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))
    message_key: Mapped[str] = mapped_column(String(255), unique=True)
    recipient: Mapped[str | None] = mapped_column(String(320))
    type: Mapped[BounceType] = mapped_column(_enum(BounceType, "bounce_event_type"))
    status: Mapped[str | None] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text, default="")
    issue_id: Mapped[int | None] = mapped_column(ForeignKey("issues.id", ondelete="SET NULL"))
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE")
    )
    action: Mapped[str] = mapped_column(String(200), default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Lease(Base):
    """A named, expiring lock row: one sender per issue, one timetable per deployment."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class RateWindow(Base):
    """A deployment-wide send rate (GCRA): when the next message is theoretically due.

    Every sender process asks this row for its share (one ``UPDATE … RETURNING``), so
    NEWSLETTER_SEND_RATE holds for the deployment, not per process.
    """

    __tablename__ = "rate_windows"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    tat_us: Mapped[int] = mapped_column(BigInteger, default=0)  # µs since the epoch
    granted: Mapped[int] = mapped_column(Integer, default=0)  # the last request's share


class Throttle(Base):
    """Hits per key in its current window: the web app's limits, shared by every process."""

    __tablename__ = "throttles"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    window_start: Mapped[float] = mapped_column(Float, index=True)  # epoch seconds
    hits: Mapped[int] = mapped_column(Integer)


class FeedState(Base):
    """HTTP validators of a polled feed, so unchanged feeds are not refetched."""

    __tablename__ = "feed_states"

    url: Mapped[str] = mapped_column(String(2048), primary_key=True)
    etag: Mapped[str | None] = mapped_column(String(500))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    last_polled_at: Mapped[datetime | None]
    last_status: Mapped[str | None] = mapped_column(Text)


class AppState(Base):
    """Small key/value store, e.g. the generated secret key when none is configured."""

    __tablename__ = "app_state"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class User(Base):
    """An editor who may log in to the admin app (``newsletter users add``)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]


class LoginEvent(Base):
    """Every admin login attempt and logout: the audit log, and the throttle's memory.

    Kept in the database (not in process memory) so that the per-account and per-IP
    limits hold across processes and restarts.
    """

    __tablename__ = "login_events"
    __table_args__ = (
        Index("ix_login_events_account_at", "account", "at"),
        Index("ix_login_events_ip_at", "ip", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account: Mapped[str] = mapped_column(String(320))
    ip: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))  # ok | failed | throttled | logout
    at: Mapped[datetime] = mapped_column(default=utcnow)
