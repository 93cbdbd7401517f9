"""Feeds in: fetch over HTTP, parse with feedparser, turn entries into clean story data.

Real feeds are messy (the fixtures show it): CNN links through a feedburner proxy
and keeps the real address in ``feedburner:origLink``; its descriptions are a 1×1
tracking pixel; El Mundo's description is a "Leer" link while the teaser sits in
``content:encoded``; El País is not well-formed XML.  Each quirk is handled here
and every text goes through :mod:`newsletter.stories.text`.  Nothing here touches
the database: fetching happens before any write transaction starts, so a slow
feed never holds SQLite's write lock.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from .articles import ARTICLE_EXTENSIONS, parse_article
from .fetching import AllowPrivate, Deadline, get
from .text import (
    ParsedSource,
    SourceError,
    StoryData,
    canonical_url,
    clean_text,
    clean_title,
    decode_entities,
    html_to_text,
    http_url,
    is_tracker,
    stable_guid,
    summarise,
)

DEFAULT_TIMEOUT = 30.0  # NEWSLETTER_FEED_TIMEOUT: the whole fetch, redirects included
MAX_REDIRECTS = 5
MAX_FEED_BYTES = 20 * 1024 * 1024  # a real feed is well under this; a runaway body is not
USER_AGENT = "newsletter/0.1 (feed reader)"
FEED_EXTENSIONS = frozenset({".xml", ".rss", ".atom"})
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # a scheme (not a C: drive letter)


# --------------------------------------------------------------------------- entries


def _dimension(value: Any) -> int | None:
    try:
        return int(str(value).strip().removesuffix("px"))
    except (TypeError, ValueError):
        return None


def pick_image(entry: Any) -> str | None:
    """The best picture: media:content/thumbnail (incl. media:group) or an image enclosure.

    "Best" is the largest image no wider than 1600px (big enough for a 600px email at
    2x, small enough not to be a print original); unknown sizes rank below known
    good ones, over-large ones last; 1×1 beacons and tracker hosts never qualify.
    """
    candidates: list[dict[str, Any]] = []
    candidates += [m for m in entry.get("media_content") or [] if isinstance(m, dict)]
    candidates += [m for m in entry.get("media_thumbnail") or [] if isinstance(m, dict)]
    for link in entry.get("links") or []:
        if link.get("rel") == "enclosure" and str(link.get("type", "")).startswith("image/"):
            candidates.append({"url": link.get("href"), "type": link.get("type")})
    best: tuple[tuple[int, int], str] | None = None
    for media in candidates:
        url = http_url(media.get("url"))
        kind = str(media.get("medium") or media.get("type") or "image")
        if url is None or is_tracker(url) or not kind.startswith("image"):
            continue
        width, height = _dimension(media.get("width")), _dimension(media.get("height"))
        if (width is not None and width <= 1) or (height is not None and height <= 1):
            continue
        if width is None:
            rank = (1, 0)
        elif width <= 1600:
            rank = (2, width * (height or width))
        else:
            rank = (0, -width)
        if best is None or rank > best[0]:
            best = (rank, url)
    return best[1] if best else None


def _image_alt(entry: Any) -> str | None:
    alt = entry.get("media_text")
    if not alt:  # feedparser files media:description under content, type text/plain
        alt = next(
            (c.get("value") for c in entry.get("content") or [] if c.get("type") == "text/plain"),
            None,
        )
    return (clean_title(alt) or None) if alt else None


# A tag left in text after decoding: the feed escaped its HTML twice, or called it text.
_LEFTOVER_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")


def _text_of(detail: Any, value: str) -> str:
    kind = str((detail or {}).get("type") or "text/html")
    text = html_to_text(value) if "html" in kind else decode_entities(value)
    if _LEFTOVER_TAG.search(text):  # otherwise "<img src=pixel>" would be summary text
        text = html_to_text(text)
    return clean_text(text)


def entry_summary(entry: Any) -> str:
    """The entry's summary, or its HTML content when the summary is only a stub.

    Some feeds put nothing but a tracking pixel (CNN) or a "Leer" link (El Mundo) in
    the description and the real teaser in content:encoded.
    """
    summary = _text_of(entry.get("summary_detail"), entry.get("summary") or "")
    if len(summary.split()) >= 4:
        return summarise(summary)
    for content in entry.get("content") or []:
        if "html" in str(content.get("type")):
            text = _text_of(content, content.get("value") or "")
            if len(text.split()) >= 4:
                return summarise(text)
    return summarise(summary)


def _published(entry: Any) -> datetime | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        parsed = entry.get(key)
        if parsed:
            try:
                year, month, day, hour, minute, second = parsed[:6]
                return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
            except (TypeError, ValueError):
                continue
    return None


_SECOND_LEVEL = frozenset({"co", "com", "org", "net", "gov", "ac", "edu", "ne", "or"})
# Segments of a feed title that name the format, not a section ("RSS Channel").
_TITLE_NOISE = re.compile(
    r"\b(rss|atom|feed|channel|home|homepage|portada|front ?page|breaking news|top stories"
    r"|latest( news)?)\b",
    re.IGNORECASE,
)
SECTION_MAX = 40


def site_domain(url: str | None) -> str:
    """The registrable part of a URL's host ("www.bbc.co.uk" -> "bbc.co.uk"), roughly.

    Good enough to tell "the feed's own site" from "somebody else's": no public
    suffix list is needed for that.
    """
    host = (urlsplit(url or "").hostname or "").lower().rstrip(".")
    labels = host.split(".")
    keep = 3 if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL else 2
    return ".".join(labels[-keep:])


def section_from_title(title: str) -> str:
    """A kicker from a feed title: "CNN.com - RSS Channel - World" -> "World".

    The most specific (last) segment that is not feed furniture; the whole title
    when every segment is.
    """
    segments = [p.strip() for p in re.split(r"\s+(?:-|–|—|>|»|//|\|)\s+", title) if p.strip()]
    useful = [p for p in segments if not _TITLE_NOISE.search(p)]
    return clean_text((useful or segments or [""])[-1], SECTION_MAX)


def entry_section(entry: Any, feed_section: str) -> str | None:
    """The entry's first <category>, else the feed's section."""
    for tag in entry.get("tags") or []:
        term = clean_title(str(tag.get("term") or ""))
        if term and not term.startswith(("http:", "https:")):
            return clean_text(term, SECTION_MAX)
    return feed_section or None


def sponsored_reason(story: StoryData, feed_link: str | None) -> str | None:
    """Why the feed itself marks this item as an advert, or None for a story.

    All three together: no date, no summary (an ad is a headline and a tracking
    pixel), and a link off the feed's own site.  Any one alone is common in
    editorial items (undated feeds, headline-only feeds, wire links).
    """
    if story.published_at is not None or story.summary or not feed_link:
        return None
    home, target = site_domain(feed_link), site_domain(story.url)
    if not home or target == home:
        return None
    return f"no date, no summary, links off {home} to {urlsplit(story.url).hostname}"


def entry_to_story(entry: Any, feed_link: str | None) -> StoryData:
    """Clean one feedparser entry; raises ValueError (the warning text) when unusable."""
    raw_link = entry.get("feedburner_origlink") or entry.get("link")
    url = http_url(raw_link, feed_link) or http_url(entry.get("link"), feed_link)
    guid_raw = clean_text(entry.get("id"))
    if url is None and entry.get("guidislink"):
        url = http_url(guid_raw, feed_link)
    title_type = str((entry.get("title_detail") or {}).get("type") or "")
    title = clean_title(entry.get("title"), "html" in title_type)
    label = f"{title[:60]!r}" if title else "an untitled entry"
    if url is None:
        bad = raw_link or guid_raw
        reason = f"refused non-http(s) URL {bad[:100]!r}" if bad else "no link"
        raise ValueError(f"{label}: {reason}")
    if not title:
        raise ValueError(f"entry linking to {url}: no title")
    if guid_raw and ":" not in guid_raw and feed_link:
        # A bare "12345" is only unique within its feed: qualify it with the feed's host.
        guid_raw = f"{urlsplit(feed_link).netloc}:{guid_raw}"
    guid = canonical_url(guid_raw) if http_url(guid_raw) else guid_raw
    image = pick_image(entry)
    author = clean_text(entry.get("author"), 300) or None
    return StoryData(
        guid=stable_guid(guid or canonical_url(url)),
        title=title,
        url=url,
        summary=entry_summary(entry),
        image_url=image,
        image_alt=_image_alt(entry) if image else None,
        author=author,
        published_at=_published(entry),
    )


def parse_feed(data: bytes, headers: dict[str, str] | None = None) -> ParsedSource:
    """Parse RSS 0.9x/1.0/2.0 or Atom bytes; malformed-but-readable feeds give a warning.

    Always bytes: handed a ``str``, feedparser would treat it as a URL or a path and
    go fetching on its own.
    """
    import feedparser  # a fifth of a second to import: only when a feed is parsed

    parsed = feedparser.parse(data, response_headers=headers or {}, sanitize_html=True)
    problem = parsed.get("bozo_exception")
    where = ""
    if problem is not None and hasattr(problem, "getLineNumber"):
        where = f"line {problem.getLineNumber()}, column {problem.getColumnNumber()}: "
        problem = problem.getMessage()
    if not parsed.entries:
        if not parsed.get("version"):
            detail = f" ({where}{problem})" if problem else ""
            raise SourceError(f"not an RSS or Atom feed{detail}")
        if problem is not None:
            raise SourceError(f"malformed feed, nothing readable ({where}{problem})")
    result = ParsedSource(title=clean_text(parsed.feed.get("title"), 200))
    if not parsed.entries:
        result.warnings.append("the feed has no entries")
    elif problem is not None:
        result.warnings.append(
            f"malformed feed ({where}{problem}); imported what was readable"
            f" ({len(parsed.entries)} entries)"
        )
    feed_link = http_url(parsed.feed.get("link")) or http_url(
        (headers or {}).get("content-location")
    )
    feed_section = section_from_title(result.title)
    for entry in parsed.entries:
        try:
            story = entry_to_story(entry, feed_link)
        except ValueError as exc:
            result.warnings.append(f"skipped {exc}")
            continue
        story.section = entry_section(entry, feed_section)
        story.sponsored = sponsored_reason(story, feed_link)
        result.items.append(story)
    return result


# --------------------------------------------------------------------------- sources


def expand_sources(sources: Iterable[str]) -> list[tuple[str, Path | None, str | None]]:
    """Each source as (label, path or None for a URL, error or None); folders recursed."""
    out: list[tuple[str, Path | None, str | None]] = []
    for source in sources:
        if _URL_LIKE.match(source) and not Path(source).exists():
            ok = http_url(source) is not None
            out.append((source, None, None if ok else "only http(s) URLs can be fetched"))
            continue
        path = Path(source).expanduser()
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in FEED_EXTENSIONS | ARTICLE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not files:
                out.append((source, path, "no feed (.xml .rss .atom) or article (.txt .md) files"))
            out.extend((str(p), p, None) for p in files)
        elif path.is_file():
            out.append((source, path, None))
        else:
            out.append((source, path, "no such file or folder"))
    return out


def _looks_like_feed(path: Path) -> bool:
    if path.suffix.lower() in FEED_EXTENSIONS:
        return True
    if path.suffix.lower() in ARTICLE_EXTENSIONS:
        return False
    with path.open("rb") as handle:
        head = handle.read(512).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"<")


def load_source(
    label: str,
    path: Path | None,
    timeout: float,
    article_base_url: str | None = None,
    tz: tzinfo = UTC,
    warn_derived: bool = False,
    allow_private: AllowPrivate = False,
) -> ParsedSource:
    """Fetch/read and parse one source (no database); raises SourceError."""
    if path is None:
        fetched = fetch(label, timeout=timeout, allow_private=allow_private)
        return parse_fetched(fetched)
    try:
        data = path.read_bytes() if _looks_like_feed(path) else None
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from None
    if data is not None:
        return parse_feed(data)
    return parse_article(path, article_base_url, tz, warn_derived)


# --------------------------------------------------------------------------- HTTP


@dataclass
class Fetched:
    """One HTTP answer: 200 with a body, or 304 with none."""

    status: int
    body: bytes = b""
    etag: str | None = None
    last_modified: str | None = None
    content_type: str = ""
    final_url: str = ""


def request_url(url: str) -> str:
    """``url`` as urllib can send it: an IRI's non-ASCII path/query percent-encoded
    (UTF-8) and its host in IDNA; ASCII URLs (and existing %XX escapes) are unchanged.
    http.client would raise UnicodeEncodeError on the raw text.
    """
    if url.isascii():
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    host = parts.hostname or ""
    if not host.isascii():
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise SourceError(f"the host name {host!r} cannot be encoded") from None
        netloc = netloc.lower().replace(host, ascii_host)
    safe = "!#$%&'()*+,/:;=?@[]~"
    return urlunsplit(
        (
            parts.scheme,
            quote(netloc, safe=safe),
            quote(parts.path, safe=safe),
            quote(parts.query, safe=safe),
            quote(parts.fragment, safe=safe),
        )
    )


def fetch(
    url: str,
    timeout: float = DEFAULT_TIMEOUT,
    etag: str | None = None,
    last_modified: str | None = None,
    *,
    allow_private: AllowPrivate = False,
    stop: threading.Event | None = None,
) -> Fetched:
    """GET a feed (conditionally when validators are given), all of it within ``timeout``.

    One deadline covers every step of every hop: name lookup, connect, TLS, the
    status line and headers, and the body (a server that drips its headers a byte
    at a time is cut off at the deadline; a per-read socket timeout alone would
    wait for ever).  Each hop's host is resolved and refused when it points at a
    loopback, private, link-local or multicast address unless ``allow_private``
    (NEWSLETTER_FEEDS_ALLOW_PRIVATE), and the connection goes to the address that
    was checked, so a DNS answer cannot change between check and use.  At most
    :data:`MAX_REDIRECTS` redirects are followed, only to http(s).  No
    Accept-Encoding is sent, so there is no decompression to bound.
    """
    if http_url(url) is None:
        raise SourceError("only http(s) feed URLs can be fetched")
    headers = {
        "User-Agent": USER_AGENT,
        "Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, */*;q=0.5",
    }
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    deadline = Deadline(timeout, stop)
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        answer = get(request_url(current), headers, deadline, allow_private, MAX_FEED_BYTES)
        if answer.location is None:
            break
        target = http_url(urljoin(current, answer.location))
        if target is None:
            raise SourceError(f"redirected to a non-http(s) URL {answer.location[:100]!r}")
        current = target
    else:
        raise SourceError(f"more than {MAX_REDIRECTS} redirects")
    if answer.status == 304:
        return Fetched(status=304, etag=answer.headers.get("ETag") or etag,
                       last_modified=answer.headers.get("Last-Modified") or last_modified,
                       final_url=current)  # fmt: skip
    if not 200 <= answer.status < 300:
        raise SourceError(f"HTTP {answer.status} {answer.reason}")
    return Fetched(
        status=answer.status,
        body=answer.body,
        etag=answer.headers.get("ETag"),
        last_modified=answer.headers.get("Last-Modified"),
        content_type=answer.headers.get("Content-Type", ""),
        final_url=current,
    )


def parse_fetched(fetched: Fetched) -> ParsedSource:
    """Parse a 200 answer, letting feedparser see the charset and the base URL."""
    headers = {"content-location": fetched.final_url}
    if fetched.content_type:
        headers["content-type"] = fetched.content_type
    return parse_feed(fetched.body, headers)
