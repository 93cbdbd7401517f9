"""Article files in the news site's export form (plain text or Markdown).

The layout, as exported (see the shared fixtures)::

    Title of the story
    <blank>
    April 17, 2023
    <blank>
    Body paragraphs ...
    Read more exclusive news from <section>.          <- site promo: not the story
    Get the featured stories in your email ...        <- promo
    Teaser headline of another story                  <- teaser: not the story

Everything from the first promo line on is dropped, so neither the promo nor the
teasers ever leak into a summary.  Optional ``Key: value`` lines in the header
(``URL:``, ``Author:``/``By``, ``Image:``, ``Summary:``, ``Date:``, ``Title:``) or a
``---`` front-matter block override what the layout implies.

Links: an email can only link to an http(s) page, and an exported file does not
know its own address.  A ``URL:`` line wins; otherwise the link is derived as
``<article base URL>/<slug of the file name>`` (the site's URL scheme for these
exports), where the base is ``NEWSLETTER_ARTICLE_BASE_URL`` or, failing that,
``NEWSLETTER_BASE_URL`` (the caller chooses and warns).  The guid is
``article:<slug>`` in that case, so changing the base URL later updates the story
instead of duplicating it; with a ``URL:`` line the guid is the canonical URL, the
same key a feed item for that page would dedupe on.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, tzinfo
from email.utils import parsedate_to_datetime
from pathlib import Path

from .text import (
    ParsedSource,
    SourceError,
    StoryData,
    canonical_url,
    clean_text,
    clean_title,
    html_to_text,
    http_url,
    stable_guid,
    summarise,
)

ARTICLE_EXTENSIONS = frozenset({".txt", ".md", ".markdown", ".text"})
MAX_ARTICLE_BYTES = 5 * 1024 * 1024

_PROMO = re.compile(
    r"^\s*(read more exclusive news from\b|read more from\b|"
    r"get the featured stories in your (e-?mail|inbox)\b)",
    re.IGNORECASE,
)
# Markup a promo line may be wrapped in: Markdown emphasis, heading, quote, list, link.
_PROMO_LEAD = re.compile(r"^[\s>#*_\[(+-]+")
_META = re.compile(r"^\s*(title|url|link|author|by|image|date|summary)\s*:\s*(.*\S)\s*$", re.I)
_BYLINE = re.compile(r"^\s*by\s+(\S.{0,78})$", re.IGNORECASE)
_DATE_PREFIX = re.compile(r"^\s*(published|posted|updated|date)\s*:?\s*", re.IGNORECASE)
_DATE_FORMATS = (
    "%B %d, %Y", "%b %d, %Y", "%B %d %Y", "%b %d %Y", "%d %B %Y", "%d %b %Y",
    "%B %d, %Y %I:%M %p", "%B %d, %Y %H:%M", "%b. %d, %Y", "%d/%m/%Y",
)  # fmt: skip
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_MD_EMPHASIS = re.compile(r"(\*{1,3}|_{1,3})(\S(?:.*?\S)?)\1")
_MD_LINE = re.compile(r"^\s{0,3}(#{1,6}\s+|>\s?|[-*+]\s+|\d+[.)]\s+)")


def parse_date(raw: str, tz: tzinfo = UTC) -> datetime | None:
    """A date line in any of the usual English forms; a date alone means local midnight."""
    text = clean_text(_DATE_PREFIX.sub("", raw)).rstrip(".")
    if not text or len(text) > 60 or not re.search(r"\d", text):
        return None
    value: datetime | None = None
    for fmt in _DATE_FORMATS:
        try:
            value = datetime.strptime(text, fmt)
            break
        except ValueError:
            continue
    if value is None:
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            try:
                value = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # "9999-12-31 23:00" west of UTC: past datetime's range
        return None


def slugify(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")


def markdown_to_text(line: str) -> str:
    """Just enough Markdown stripping for a plain-text summary."""
    line = _MD_LINE.sub("", line)
    line = _MD_IMAGE.sub("", line)
    line = _MD_LINK.sub(r"\1", line)
    line = _MD_EMPHASIS.sub(r"\2", line)
    return html_to_text(line.replace("`", ""))


def _read(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_ARTICLE_BYTES:
            raise SourceError(f"file too large for an article ({size} bytes)")
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig").replace("\x00", "")  # no NUL reaches the database
    except UnicodeDecodeError as exc:
        raise SourceError(f"not UTF-8 text (invalid byte at offset {exc.start})") from None


def _front_matter(lines: list[str], meta: dict[str, str]) -> list[str]:
    if not lines or lines[0].strip() != "---":
        return lines
    for index, line in enumerate(lines[1:], start=1):
        if line.strip() in ("---", "..."):
            for item in lines[1:index]:
                if match := _META.match(item):
                    meta.setdefault(match.group(1).lower(), match.group(2).strip("\"'"))
            return lines[index + 1 :]
    return lines  # no closing marker: not front matter after all


def parse_article(
    path: Path, base_url: str | None = None, tz: tzinfo = UTC, warn_derived: bool = False
) -> ParsedSource:
    """Read one exported article; raises SourceError when it yields no usable story."""
    markdown = path.suffix.lower() in (".md", ".markdown")
    meta: dict[str, str] = {}
    lines = _front_matter(_read(path).splitlines(), meta)
    title = meta.get("title", "")
    published = parse_date(meta["date"], tz) if "date" in meta else None
    body: list[str] = []
    in_header = True
    for line in lines:
        if _PROMO.match(_PROMO_LEAD.sub("", line)):
            break  # the promo and the teaser headlines after it are the site's, not the story's
        if not in_header:
            body.append(line)
            continue
        if not line.strip():
            continue
        match = _META.match(line)
        if match and not title and match.group(1).lower() in ("summary", "author", "by"):
            match = None  # "Summary: the week in review" as the first line is a headline
        if match and match.group(1).lower() not in meta:
            meta[match.group(1).lower()] = match.group(2)
            if match.group(1).lower() == "date":
                published = parse_date(match.group(2), tz)
        elif not title:
            title = markdown_to_text(line) if markdown else line
        elif published is None and (when := parse_date(line, tz)) is not None:
            published = when
        elif "author" not in meta and "by" not in meta and (byline := _BYLINE.match(line)):
            if byline.group(1).rstrip().endswith("."):
                in_header = False
                body.append(line)
            else:
                meta["author"] = byline.group(1)
        else:
            in_header = False
            body.append(line)
    title = clean_title(meta.get("title") or title)
    if not title:
        raise SourceError("no title line (the first line of an article is its title)")
    result = ParsedSource(title=title)
    slug = slugify(path.stem)
    if "url" in meta or "link" in meta:
        given = meta.get("url") or meta.get("link", "")
        url = http_url(given)
        if url is None:
            raise SourceError(f"refused non-http(s) URL {given[:100]!r}")
        guid = canonical_url(url)
    else:
        if not base_url or not slug:
            raise SourceError("no URL: line and no article base URL to derive a link from")
        url = f"{base_url.rstrip('/')}/{slug}"
        guid = f"article:{slug}"
        if warn_derived:
            result.warnings.append(f"no URL: line; linking to {url}")
    paragraphs = [markdown_to_text(line) if markdown else line for line in body]
    summary = meta.get("summary") or " ".join(p.strip() for p in paragraphs if p.strip())
    if published is None:
        result.warnings.append("no date line found; stored without a publication date")
    image = http_url(meta.get("image"))
    result.items.append(
        StoryData(
            guid=stable_guid(guid),
            title=title,
            url=url,
            summary=summarise(summary),
            image_url=image,
            image_alt=title if image else None,
            author=clean_text(meta.get("author") or meta.get("by"), 300) or None,
            published_at=published,
        )
    )
    return result
