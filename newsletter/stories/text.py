"""Untrusted text and URLs made safe: the cleaning every story passes through.

Titles lose control characters (CR/LF included: they end up in places such as
subject lines, and Python 3.11.7's email package does not refuse them for us);
summaries become one paragraph of plain text (HTML converted, entities decoded,
images, scripts and feedburner "feedflare" furniture dropped, capped at a word
boundary); only absolute http(s) URLs survive, because a story's link is put in an
email and anything else (javascript:, data:, file:) is either useless or hostile.
``canonical_url`` is the dedupe key for stories without a feed guid.  The small
data types every source reader returns live here too, so that ``articles`` and
``feeds`` depend on this module and not on each other's internals.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass, field
from datetime import datetime
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

SUMMARY_CHARS = 300
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u2028\u2029\ufeff]")
_SPACE = re.compile(r"\s+")
# In a URL also bidi overrides (a spoofed-looking link) and "\\", which browsers read
# as "/" while urlsplit does not: the host shown as the source could differ from
# the host opened.
_URL_UNSAFE = re.compile(r"[\u202a-\u202e\u2066-\u2069\\]")
_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
# Query parameters that only say "you came from a feed/campaign": dropped from the
# canonical URL so the same article seen via two feeds is one story.
_TRACKING_PARAMS = frozenset(
    {"fbclid", "gclid", "dclid", "msclkid", "mc_cid", "mc_eid", "_hsenc", "_hsmi", "igshid"}
)
_FEED_MARKER_PARAMS = frozenset({"emc", "partner", "ref", "source", "from", "ocid", "cmp"})
_FEED_MARKER_VALUES = frozenset({"rss", "feed", "rssfeed", "rss_feed", "atom"})
# Hosts whose images are beacons/proxy furniture, never a story picture.
_TRACKER_HOSTS = ("feeds.feedburner.com", "feedproxy.google.com", "imrworldwide.com", "pixel.")
_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "iframe", "object"})
_BLOCK_TAGS = frozenset(
    {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote",
     "tr", "table", "section", "article", "figure", "figcaption", "hr", "pre"}
)  # fmt: skip


class SourceError(Exception):
    """A source could not be fetched or read at all; ``str()`` is the reason."""


@dataclass
class StoryData:
    """One story as read from a source, already cleaned, not yet stored."""

    guid: str
    title: str
    url: str
    summary: str = ""
    image_url: str | None = None
    image_alt: str | None = None
    author: str | None = None
    published_at: datetime | None = None
    section: str | None = None
    # Why the feed's own markings say this is an advert (None: an editorial story).
    sponsored: str | None = None

    def __post_init__(self) -> None:
        # Every importer builds one of these: no NUL byte gets past it (PostgreSQL
        # refuses them in text, and no reader wants one), whatever the source.
        for name in ("guid", "title", "url", "summary", "image_url", "image_alt", "author"):
            value = getattr(self, name)
            if value is not None and "\x00" in value:
                setattr(self, name, strip_nul(value))


def strip_nul(value: str) -> str:
    """``value`` without NUL bytes (imported text may carry them; databases may not)."""
    return value.replace("\x00", "")


@dataclass
class ParsedSource:
    """What one source yielded: stories plus warnings about what was skipped."""

    items: list[StoryData] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    title: str = ""


# --------------------------------------------------------------------------- text


def clean_text(raw: str | None, limit: int | None = None) -> str:
    """One line of plain text: control characters removed, whitespace collapsed."""
    text = _SPACE.sub(" ", _CONTROL.sub(" ", raw or "")).strip()
    if limit is not None and len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def clean_title(raw: str | None, is_html: bool = False, limit: int = 500) -> str:
    """A title safe for headers and HTML templates (still to be escaped by them)."""
    text = html_to_text(raw or "") if is_html else decode_entities(raw or "")
    return clean_text(text, limit)


def decode_entities(text: str) -> str:
    """Decode leftover (often double-escaped) entities in text a feed calls plain."""
    return html.unescape(text) if _ENTITY.search(text) else text


class _TextExtractor(HTMLParser):
    """HTML → text, dropping scripts, images and feedburner "feedflare" wrappers."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip: list[str] = []  # stack of tags whose content is being dropped

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip:
            if tag not in ("br", "img", "hr", "meta", "link", "input"):
                self._skip.append(tag)
            return
        values = dict(attrs)
        css = (values.get("class") or "").lower()
        href = (values.get("href") or "").lower()
        if tag in _SKIP_TAGS or "feedflare" in css or any(h in href for h in _TRACKER_HOSTS):
            self._skip.append(tag)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self._skip:
            if tag in self._skip:
                while self._skip and self._skip.pop() != tag:
                    pass
            return
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """Plain text of an HTML fragment; paragraphs become newlines (collapse later)."""
    if "<" not in markup and "&" not in markup:
        return markup
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    return "".join(parser.parts)


def summarise(text: str, limit: int = SUMMARY_CHARS) -> str:
    """Collapse whitespace and cap at a word boundary, marking the cut with an ellipsis."""
    text = clean_text(text)
    if len(text) <= limit:
        return text
    cut = text[: limit + 1]
    space = cut.rfind(" ")
    cut = cut[:space] if space > limit // 2 else text[:limit]
    return cut.rstrip(" ,;:-–—") + "…"


# --------------------------------------------------------------------------- URLs


def http_url(raw: str | None, base: str | None = None) -> str | None:
    """The URL if it is a well-formed absolute http(s) URL (after joining ``base``), else None.

    The one URL check: import stores only what passes, and render re-checks with it.
    """
    value = (raw or "").strip()
    if not value or _CONTROL.search(value) or _URL_UNSAFE.search(value):
        return None
    if any(c.isspace() for c in value):
        return None
    if base and not urlsplit(value).scheme:
        value = urljoin(base, value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    if len(value) > 2048:
        return None
    return value


def canonical_url(url: str) -> str:
    """The URL used for dedupe: lower-case scheme/host, no fragment, no feed-tracking params."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port
    if port and (parts.scheme.lower(), port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith("utm_")
        and k.lower() not in _TRACKING_PARAMS
        and not (k.lower() in _FEED_MARKER_PARAMS and v.lower() in _FEED_MARKER_VALUES)
    ]
    return urlunsplit((parts.scheme.lower(), host, parts.path or "/", urlencode(query), ""))


def stable_guid(value: str) -> str:
    """The guid column holds 1024 characters; longer guids are replaced by their hash."""
    return value if len(value) <= 1024 else "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def is_tracker(url: str) -> bool:
    return any(h in url.lower() for h in _TRACKER_HOSTS)
