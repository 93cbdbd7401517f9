"""Stories: import from feeds, feed files and article files; add by hand; feature.

Two rules shape this module.  Dedupe: a story is keyed by its feed guid, else its
canonical URL, and an existing row found by either key is *updated*, so importing
the same source twice (or the same article through two feeds) never duplicates a
story.  Locking: every source is fetched and parsed before the session is touched,
because on SQLite a write transaction holds the database's only write lock and a
slow feed must not stall a send.  Domain functions take a session and never commit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import ColumnElement, case, exists, func, or_, select
from sqlalchemy.orm import Session

from ..db import Database
from ..models import FeedState, Issue, IssueKind, IssueStatus, IssueStory, Story, utcnow
from .feeds import DEFAULT_TIMEOUT, Fetched, expand_sources, fetch, load_source, parse_fetched
from .fetching import AllowPrivate
from .text import (
    ParsedSource,
    SourceError,
    StoryData,
    canonical_url,
    clean_text,
    clean_title,
    http_url,
    is_tracker,
    stable_guid,
    summarise,
)

log = logging.getLogger(__name__)

_CANDIDATES = 200  # stories under one path compared canonically (query-string variants)
_UPDATABLE = (
    "title", "url", "summary", "image_url", "image_alt", "author", "published_at", "section"
)  # fmt: skip


class InvalidStory(ValueError):
    """A story given by hand is unusable; ``str()`` says why."""


@dataclass
class SourceResult:
    """What importing one source did; ``error`` set means the source failed entirely."""

    source: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    not_modified: bool = False  # a poll answered 304: nothing fetched, nothing to do
    story_ids: list[int] = field(default_factory=list)
    # Sponsored items stored but kept out of the featured stories: (title, why).
    left_out: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.source}: FAILED: {self.error}"
        if self.not_modified:
            return f"{self.source}: not modified since the last poll"
        text = (
            f"{self.source}: {self.added} added, {self.updated} updated, {self.unchanged} unchanged"
        )
        if self.left_out:
            reasons = sorted({why for _, why in self.left_out})
            text += (
                f"; {len(self.left_out)} sponsored, left out of the featured stories"
                f" ({'; '.join(reasons)})"
            )
        return text


@dataclass
class ImportReport:
    results: list[SourceResult] = field(default_factory=list)

    @property
    def failed(self) -> list[SourceResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def added(self) -> int:
        return sum(r.added for r in self.results)

    @property
    def updated(self) -> int:
        return sum(r.updated for r in self.results)

    @property
    def left_out(self) -> int:
        return sum(len(r.left_out) for r in self.results)


# --------------------------------------------------------------------------- queries


def unsent_clause() -> ColumnElement[bool]:
    """True for a story that no digest issue (other than a cancelled one) has included."""
    return ~exists(
        select(IssueStory.story_id)
        .join(Issue, Issue.id == IssueStory.issue_id)
        .where(
            IssueStory.story_id == Story.id,
            Issue.kind == IssueKind.DIGEST,
            Issue.status != IssueStatus.CANCELLED,
        )
    )


def newest_first_terms() -> list[Any]:
    """ORDER BY terms of "newest first" (undated stories after their import's dated ones)."""
    return [
        func.coalesce(Story.published_at, Story.sort_at, Story.created_at).desc(),
        Story.published_at.is_(None),
        Story.id.desc(),
    ]


def editor_order_terms() -> list[Any]:
    """ORDER BY terms of the next digest: pinned, positioned (ascending), then newest."""
    return [
        Story.pinned.desc(),
        case((Story.position.is_(None), 1), else_=0),
        Story.position,
        *newest_first_terms(),
    ]


def list_stories(
    session: Session,
    featured: bool | None = None,
    unsent: bool = False,
    limit: int | None = None,
    *,
    editor_order: bool = False,
) -> list[Story]:
    """Newest first: by publication time; an undated story by its import's place.

    An undated story sorts just after the dated stories it was imported with
    (``sort_at``), so it never counts as the newest; without one, by import time.
    ``editor_order``: the next digest's order instead (pinned lead, then the
    editor's positions, then as above; see :mod:`.order`).
    """
    query = select(Story)
    if featured is not None:
        query = query.where(Story.featured.is_(featured))
    if unsent:
        query = query.where(unsent_clause())
    if editor_order:
        query = query.order_by(*editor_order_terms())
    else:
        query = query.order_by(*newest_first_terms())
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def find_existing(session: Session, guid: str, url: str) -> Story | None:
    """The stored story with this guid, else the one at this URL (compared canonically).

    URLs are stored as the source gave them (tracking parameters, host case), so a
    story first seen as ``http://Site.example/a?utm_source=rss`` must still be found
    from ``https://site.example/a``: stories under the same host and path are
    compared by :func:`canonical_url`, http and https alike (a site that moved to
    https, or two feeds that disagree, still publish one story).
    """
    story = session.scalar(select(Story).where(Story.guid == guid))
    if story is not None:
        return story
    canonical = canonical_url(url)
    variants = {canonical, _other_scheme(canonical)}
    story = session.scalar(
        select(Story)
        .where(
            or_(
                Story.url == url,
                Story.url.in_(variants),
                Story.guid.in_([stable_guid(v) for v in variants]),
            )
        )
        .order_by(Story.id)
        .limit(1)
    )
    if story is not None:
        return story
    parts = urlsplit(canonical)
    rest = f"://{parts.netloc}{parts.path}".lower()
    escaped = rest.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"http%{escaped}%"  # http:// or https://, then this host and path
    # SQLite's LIKE ignores ASCII case already (and is cheaper than lower() on
    # every row); elsewhere ILIKE (PostgreSQL's LIKE is case-sensitive).
    sqlite = session.get_bind().dialect.name == "sqlite"
    match = (Story.url.like if sqlite else Story.url.ilike)(pattern, escape="\\")
    candidates = session.scalars(select(Story).where(match).order_by(Story.id).limit(_CANDIDATES))
    return next((c for c in candidates if canonical_url(c.url) in variants), None)


def _other_scheme(canonical: str) -> str:
    scheme, sep, rest = canonical.partition("://")
    return ("https" if scheme == "http" else "http") + sep + rest


# --------------------------------------------------------------------------- writing


def upsert_story(
    session: Session, data: StoryData, source: str, feature: bool, *, refeature: bool = True
) -> tuple[Story, str]:
    """Insert or update one story; returns it with "added", "updated" or "unchanged".

    Importing without ``feature`` never un-features: only an editor does that.  With
    ``refeature=False`` (feed polling) ``feature`` applies to new stories only, so a
    story an editor unfeatured stays unfeatured when the feed is fetched again.
    """
    story = find_existing(session, data.guid, data.url)
    if story is None:
        story = Story(guid=data.guid, featured=feature, source=source[:2048])
        for name in _UPDATABLE:
            setattr(story, name, getattr(data, name))
        session.add(story)
        session.flush()
        return story, "added"
    changed = False
    for name in _UPDATABLE:
        value = getattr(data, name)
        if name == "published_at" and value is None:
            continue  # a re-import that lost the date keeps the one we had
        if getattr(story, name) != value:
            setattr(story, name, value)
            changed = True
    if feature and refeature and not story.featured:
        story.featured = True
        changed = True
    if changed:
        session.flush()
    return story, "updated" if changed else "unchanged"


def store(
    session: Session,
    result: SourceResult,
    parsed: ParsedSource,
    feature: bool,
    *,
    refeature: bool = True,
) -> None:
    """Write a parsed source's stories, counting into ``result``.

    Sponsored items are stored but never featured by an import (an editor can
    still feature one by hand); undated items get a ``sort_at`` just after the
    oldest dated story of this source, so they never sort as the newest.
    """
    result.warnings.extend(parsed.warnings)
    dated = [i.published_at for i in parsed.items if i.published_at is not None]
    floor = min(dated) if dated else None
    seen: set[int] = set()
    for item in parsed.items:
        wanted = feature and item.sponsored is None
        story, outcome = upsert_story(session, item, result.source, wanted, refeature=refeature)
        if item.published_at is None and story.published_at is None and story.sort_at != floor:
            story.sort_at = floor
        if story.id in seen:
            continue  # two entries of one feed for the same page: one story
        seen.add(story.id)
        if item.sponsored is not None:
            result.left_out.append((item.title, item.sponsored))
        result.story_ids.append(story.id)
        setattr(result, outcome, getattr(result, outcome) + 1)


# --------------------------------------------------------------------------- sources


def import_sources(
    session: Session,
    sources: Sequence[str],
    feature: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    article_base_url: str | None = None,
    tz: tzinfo = UTC,
    warn_derived_url: bool = False,
    allow_private: AllowPrivate = False,
) -> ImportReport:
    """Import feed URLs, feed files, article files and folders; one failure stops no other.

    All sources are loaded first, then written, so the caller's write transaction
    (which starts lazily) is not open while the network is slow.  Articles without
    a ``URL:`` line link to ``article_base_url``/<slug> (warned about when
    ``warn_derived_url``, i.e. when that base is only the web app's own URL).
    """
    loaded: list[tuple[SourceResult, ParsedSource | None]] = []
    for label, path, problem in expand_sources(sources):
        result = SourceResult(source=label, error=problem)
        parsed: ParsedSource | None = None
        if problem is None:
            try:
                parsed = load_source(
                    label, path, timeout, article_base_url, tz, warn_derived_url, allow_private
                )
            except SourceError as exc:
                result.error = str(exc)
            except Exception as exc:  # a reader's bug costs its own source, not the others
                log.exception("%s: unexpected error while reading", label)
                result.error = f"unexpected error: {type(exc).__name__}: {exc}"
        loaded.append((result, parsed))
    report = ImportReport()
    for result, parsed in loaded:
        if parsed is not None:
            with session.begin_nested():
                store(session, result, parsed, feature)
        for warning in result.warnings:  # the caller reports them; logged for the record
            log.info("%s: %s", result.source, warning)
        if result.error:
            log.info("%s: import failed: %s", result.source, result.error)
        report.results.append(result)
    return report


# --------------------------------------------------------------------------- polling


@dataclass
class Polled:
    """One conditional GET, already parsed (outside any transaction)."""

    fetched: Fetched | None = None
    parsed: ParsedSource | None = None
    error: str | None = None


def fetch_and_parse(
    url: str,
    etag: str | None,
    last_modified: str | None,
    timeout: float = DEFAULT_TIMEOUT,
    allow_private: AllowPrivate = False,
    stop: threading.Event | None = None,
) -> Polled:
    """The network and CPU half of a poll; never raises for a bad feed."""
    try:
        fetched = fetch(
            url, timeout=timeout, etag=etag, last_modified=last_modified,
            allow_private=allow_private, stop=stop,
        )  # fmt: skip
        parsed = parse_fetched(fetched) if fetched.status != 304 else None
    except SourceError as exc:
        return Polled(error=str(exc))
    return Polled(fetched, parsed)


def record_poll(session: Session, url: str, polled: Polled, feature: bool = True) -> SourceResult:
    """The database half of a poll: store stories, remember validators and the outcome.

    New validators are kept only when the body was a usable feed, so a feed that
    returned an error page is fetched in full again next time, and only when they
    fit their columns (PostgreSQL refuses an over-long value; SQLite would not).
    ``feature`` applies to stories new to the database: an editor's unfeature stands.
    """
    result = SourceResult(source=url, error=polled.error)
    state = session.get(FeedState, url) or FeedState(url=url)
    session.add(state)
    state.last_polled_at = utcnow()
    if polled.fetched is not None and polled.fetched.status == 304:
        result.not_modified = True
        state.last_status = "304 not modified"
    elif polled.fetched is not None and polled.parsed is not None:
        with session.begin_nested():
            store(session, result, polled.parsed, feature, refeature=False)
        state.etag = _fits(polled.fetched.etag, _ETAG_MAX)
        state.last_modified = _fits(polled.fetched.last_modified, _LAST_MODIFIED_MAX)
        state.last_status = (
            f"{polled.fetched.status}: {result.added} added, {result.updated} updated,"
            f" {result.unchanged} unchanged"
        )
    if result.error:
        state.last_status = f"error: {result.error}"[:2000]
        log.warning("feed %s: %s", url, result.error)
    return result


def _width(column: str) -> int:
    length = getattr(FeedState.__table__.c[column].type, "length", None)
    assert isinstance(length, int)
    return length


_ETAG_MAX = _width("etag")
_LAST_MODIFIED_MAX = _width("last_modified")


def _fits(value: str | None, limit: int) -> str | None:
    """A validator too long for its column is dropped: the feed is just fetched in full."""
    return value if value is not None and len(value) <= limit else None


def poll_feed(
    session: Session,
    url: str,
    feature: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    allow_private: AllowPrivate = False,
) -> SourceResult:
    """Poll one feed with If-None-Match/If-Modified-Since; a 304 imports nothing.

    A fetch or parse failure is returned in ``result.error`` (and recorded in the
    feed's ``last_status``), not raised: the timetable polls every few minutes and
    one broken feed must not stop the others.  On SQLite prefer
    :func:`poll_feed_db`: here the validators are read through ``session``, so a
    write session holds the write lock for the length of the download.
    """
    state = session.get(FeedState, url)
    etag, modified = (state.etag, state.last_modified) if state else (None, None)
    polled = fetch_and_parse(url, etag, modified, timeout, allow_private)
    return record_poll(session, url, polled, feature)


def poll_feed_db(
    db: Database,
    url: str,
    feature: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    allow_private: AllowPrivate = False,
    stop: threading.Event | None = None,
) -> SourceResult:
    """:func:`poll_feed` in three steps: read validators, fetch and parse unlocked, write.

    The one function here that owns its transactions (a read, then a short write).
    """
    with db.read() as session:
        state = session.get(FeedState, url)
        etag, modified = (state.etag, state.last_modified) if state else (None, None)
    polled = fetch_and_parse(url, etag, modified, timeout, allow_private, stop)
    with db.write() as session:
        result: SourceResult = record_poll(session, url, polled, feature)
        return result


# --------------------------------------------------------------------------- by hand


def add_story(
    session: Session,
    title: str,
    url: str,
    summary: str = "",
    feature: bool = False,
    *,
    image_url: str | None = None,
    author: str | None = None,
    published_at: datetime | None = None,
) -> tuple[Story, bool]:
    """Add a story by hand (an existing one with that URL is updated); returns (story, created)."""
    clean = clean_title(title)
    if not clean:
        raise InvalidStory("the title is empty")
    link = http_url(url)
    if link is None:
        raise InvalidStory(f"not an absolute http(s) URL: {clean_text(url, 100)!r}")
    image = http_url(image_url) if image_url else None
    if image_url and (image is None or is_tracker(image)):
        raise InvalidStory(f"not a usable http(s) image URL: {clean_text(image_url, 100)!r}")
    data = StoryData(
        guid=stable_guid(canonical_url(link)),
        title=clean,
        url=link,
        summary=summarise(summary),
        image_url=image,
        image_alt=clean if image else None,
        author=clean_text(author, 300) or None,
        published_at=published_at or utcnow(),
    )
    story, outcome = upsert_story(session, data, "manual", feature)
    return story, outcome == "added"


def set_featured(session: Session, story_ids: Iterable[int], featured: bool = True) -> list[int]:
    """Feature or unfeature stories; returns the ids that do not exist (others applied)."""
    ids = list(dict.fromkeys(story_ids))
    found = {story.id: story for story in session.scalars(select(Story).where(Story.id.in_(ids)))}
    for story in found.values():
        story.featured = featured
    session.flush()
    return [i for i in ids if i not in found]
