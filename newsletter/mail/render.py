"""Render an issue once: Jinja2, then premailer, then frozen on the Issue row.

Rendering is the expensive part (premailer alone costs tens of milliseconds), so it
happens once per issue.  What differs per reader (greeting, unsubscribe link) and
what is only known once the issue row exists (its archive link) is rendered as
plain-ASCII placeholders (:data:`GREETING`, :data:`UNSUBSCRIBE_URL`,
:data:`ARCHIVE_URL`) that survive autoescaping, premailer and lxml untouched;
``message.MessageFactory`` splices the real values into pre-encoded MIME bytes.

Safety lives here because this is where untrusted story text meets markup:

* HTML templates are always autoescaped (a separate environment, whatever the
  file is called); text templates never are, so ``&`` reads as ``&``;
* every story field is cleaned into a :class:`StoryView` first: control characters
  and placeholder look-alikes removed, and URLs kept only when they are http(s);
* after premailer, one last pass over the finished document drops any ``href`` or
  ``src`` that is not http(s) and any script-like element, whatever the template did.
"""

from __future__ import annotations

import functools
import html as html_module
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from jinja2 import Environment


from ..context import Context
from ..models import Story
from ..stories import http_url as _story_http_url

log = logging.getLogger(__name__)

GREETING = "__NL_GREETING__"
UNSUBSCRIBE_URL = "__NL_UNSUBSCRIBE_URL__"
ARCHIVE_URL = "__NL_ARCHIVE_URL__"
PREFERENCES_URL = "__NL_PREFERENCES_URL__"  # the reader's /preferences/<token> link
PLACEHOLDERS = (GREETING, UNSUBSCRIBE_URL, ARCHIVE_URL, PREFERENCES_URL)
# Any case: a template filter (``|upper``, ``|title``) must not turn a look-alike
# into a real placeholder; with IGNORECASE, [A-Z] also matches the non-ASCII letters
# that upper-case to ASCII (ı, ſ, K).
PLACEHOLDER_RE = re.compile(r"__NL_[A-Z_]+__", re.IGNORECASE)
_URL_PLACEHOLDERS = frozenset({UNSUBSCRIBE_URL, ARCHIVE_URL, PREFERENCES_URL})

GMAIL_CLIP_BYTES = 102 * 1024
SUBJECT_MAX = 78
SUMMARY_MAX = 300
BRIEF_MAX = 110  # two lines of the compact list at 600 px
TOC_TITLE_MAX = 48  # each headline in the "In this issue" line
PREHEADER_MAX = 140
NOTE_MAX = 1000
# premailer copies CSS into old presentational attributes (width="100%" height="auto"
# on images, align, bgcolor): invalid HTML, and Outlook then sizes images from the
# file.  The template writes the attributes it needs itself; these are never added.
_NO_BASIC_ATTRIBUTES = ["width", "height", "align", "valign", "bgcolor"]

_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\u202a-\u202e\u2066-\u2069]")
_SPACES = re.compile(r"\s+")
_URL_ATTRS = ("href", "src", "background", "action", "formaction", "poster", "cite", "srcset")
_DROP_TAGS = ("script", "iframe", "object", "embed", "form", "base", "frame", "frameset")


class TemplateProblem(ValueError):
    """An operator's template is missing something every email must carry."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str
    preheader: str


@dataclass(frozen=True)
class StoryView:
    """A story as templates see it: every field cleaned, URLs http(s) or None."""

    title: str
    url: str | None
    summary: str
    image_url: str | None
    image_alt: str
    author: str
    published: str
    source: str
    kicker: str = ""
    brief: str = ""
    short_title: str = ""


def clean_text(value: str | None, *, single_line: bool = True) -> str:
    """Untrusted text without control characters or placeholder look-alikes."""
    if not value:
        return ""
    value = PLACEHOLDER_RE.sub("", _UNSAFE.sub("", value))
    if single_line:
        return _SPACES.sub(" ", value).strip()
    lines = [_SPACES.sub(" ", line).strip() for line in value.replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip()


def http_url(value: str | None) -> str | None:
    """``value`` if it is a safe absolute http(s) URL (the import-time check), else None.

    A placeholder look-alike is refused too: it would be filled per recipient.
    """
    if not value or PLACEHOLDER_RE.search(value):
        return None
    return _story_http_url(value)


def truncate(text: str, limit: int) -> str:
    """Cut at a word boundary and add an ellipsis, so a headline never ends mid-word."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 0)]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-–—.") + "…"


def long_date(day: date) -> str:
    return f"{day:%A} {day.day} {day:%B} {day.year}"


def short_date(day: date) -> str:
    return f"{day.day} {day:%b} {day.year}"


def story_view(story: Story, tz: Any) -> StoryView:
    title = clean_text(story.title) or "Untitled"
    url = http_url(story.url)
    published = ""
    if isinstance(story.published_at, datetime):
        published = short_date(story.published_at.astimezone(tz).date())
    source = ""
    if url:
        host = (urlsplit(url).hostname or "").lower()
        source = host.removeprefix("www.")
    summary = clean_text(story.summary)
    return StoryView(
        title=title,
        url=url,
        summary=truncate(summary, SUMMARY_MAX),
        image_url=http_url(story.image_url),
        image_alt=clean_text(story.image_alt) or title,
        author=clean_text(story.author),
        published=published,
        source=source,
        kicker=truncate(clean_text(story.section), 40),
        brief=truncate(summary, BRIEF_MAX),
        short_title=truncate(title, TOC_TITLE_MAX),
    )


@functools.lru_cache(maxsize=8)
def environments(templates_dir: Path) -> tuple[Environment, Environment]:
    """(html, text) environments: autoescape always on for one, always off for the other."""

    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    loader = FileSystemLoader(str(templates_dir / "email"))
    common: dict[str, Any] = {
        "loader": loader,
        "undefined": StrictUndefined,
        "trim_blocks": True,
        "lstrip_blocks": True,
        "keep_trailing_newline": True,
    }
    html_env = Environment(autoescape=True, **common)
    # Bandit B701 is wrong here: this is the plain-text part; HTML escaping would put
    # "&amp;" into the text, and nothing rendered with it is served or mailed as HTML.
    text_env = Environment(autoescape=False, **common)  # noqa: S701  # nosec B701
    return html_env, text_env


def _enforce_http_urls(html: str) -> str:
    """Last line of defence on the finished document: http(s) links only, no scripts."""

    import lxml.html

    doc = lxml.html.document_fromstring(html)
    for bad in list(doc.iter(*_DROP_TAGS)):
        log.warning("removed a <%s> element from the email HTML", bad.tag)
        bad.drop_tree()
    for element in doc.iter():
        attrib = getattr(element, "attrib", None)
        if not attrib:
            continue
        for name in list(attrib):
            # Namespaced forms too: ``xlink:href`` (SVG) is a link like ``href``.
            local = str(name).rsplit("}", 1)[-1].rsplit(":", 1)[-1].lower()
            if local.startswith("on"):
                del attrib[name]
                continue
            if local not in _URL_ATTRS:
                continue
            value = attrib[name]
            if value.strip() in _URL_PLACEHOLDERS or (local != "srcset" and http_url(value)):
                continue
            log.warning("removed a non-http(s) %s=%r from the email HTML", name, value[:80])
            del attrib[name]
    body = str(lxml.html.tostring(doc, encoding="unicode", method="html"))
    return "<!DOCTYPE html>\n" + body


def inline_css(html: str) -> str:
    """premailer with the network off; ``<style data-premailer="ignore">`` stays verbatim.

    The ignored block is where media queries (phone layout, dark mode) live: they
    cannot be inlined, and premailer would strip their ``!important``.
    """

    from premailer import Premailer

    premailer = Premailer(
        html,
        base_url=None,
        allow_network=False,
        allow_loading_external_files=False,
        disable_validation=True,
        cssutils_logging_level=logging.CRITICAL,
        keep_style_tags=False,
        remove_classes=False,
        strip_important=True,
        disable_basic_attributes=_NO_BASIC_ATTRIBUTES,
        align_floating_images=False,
    )
    return str(premailer.transform())


def finish_html(html: str) -> str:
    """premailer, then the URL/script pass, then the size check (Gmail clips at 102 KB)."""
    out = _enforce_http_urls(inline_css(html))
    size = len(out.encode("utf-8"))
    if size > GMAIL_CLIP_BYTES:
        log.warning(
            "the email HTML is %d bytes; Gmail clips messages over %d bytes", size, GMAIL_CLIP_BYTES
        )
    return out


def tidy_text(text: str) -> str:
    """Trailing spaces off, at most one blank line in a row, one final newline."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    out: list[str] = []
    for line in lines:
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def _base_values(ctx: Context) -> dict[str, Any]:
    settings = ctx.settings
    host = urlsplit(settings.base_url).hostname or settings.base_url
    return {
        "site_name": clean_text(settings.site_name),
        "site_url": settings.base_url,
        "site_host": host,
        "language": settings.language,
        "postal_address": clean_text(settings.postal_address),
        "greeting": GREETING,
        "unsubscribe_url": UNSUBSCRIBE_URL,
        "archive_url": ARCHIVE_URL,
        "preferences_url": PREFERENCES_URL,
    }


def _check_placeholders(name: str, rendered: str, *required: str) -> None:
    for placeholder in required:
        if placeholder not in rendered:
            variable = {GREETING: "greeting", UNSUBSCRIBE_URL: "unsubscribe_url"}.get(
                placeholder, "archive_url"
            )
            raise TemplateProblem(f"template {name} must use {{{{ {variable} }}}}")


def subject_line(
    env: Environment, values: dict[str, Any], lead: str, name: str = "subject.txt"
) -> str:
    """The subject template rendered, then the lead headline shortened to fit 78 chars."""
    template = env.get_template(name)
    for _ in range(4):
        subject = clean_text(template.render(**(values | {"lead_title": lead})))
        if len(subject) <= SUBJECT_MAX:
            return subject
        lead = truncate(lead, max(len(lead) - (len(subject) - SUBJECT_MAX), 1))
    return truncate(subject, SUBJECT_MAX)


def note_lines(note: str | None) -> list[str]:
    """An editor's note as clean paragraphs (blank lines dropped), at most NOTE_MAX chars."""
    text = truncate(clean_text(note, single_line=False), NOTE_MAX)
    return [line for line in text.split("\n") if line]


def render_issue(
    ctx: Context,
    stories: Sequence[Story],
    issue_date: date,
    note: str | None = None,
    *,
    template: str = "digest",
    extra: dict[str, Any] | None = None,
) -> Rendered:
    """Subject, inlined HTML and plain text of one issue; per-reader parts left as placeholders.

    The first story leads (full-width picture, full summary); the rest form the
    compact list.  ``note`` is the editor's note shown above the lead.
    ``template`` names the pair (``digest``, or ``weekly`` for the week's edition,
    whose subject comes from ``weekly_subject.txt``); ``extra`` adds variables.
    """
    if not stories:
        raise ValueError("an issue needs at least one story")
    html_env, text_env = environments(ctx.templates_dir)
    views = [story_view(story, ctx.settings.tz) for story in stories]
    lines = note_lines(note)
    preheader = truncate(" · ".join(v.title for v in views[:3]), PREHEADER_MAX)
    values = (
        _base_values(ctx)
        | {
            "stories": views,
            "lead": views[0],
            "rest": views[1:],
            "note": lines,
            "count": len(views),
            "issue_date": issue_date,
            "date_long": long_date(issue_date),
            "date_short": short_date(issue_date),
            "date_compact": f"{issue_date.day} {issue_date:%b}",
            "preheader": preheader,
        }
        | (extra or {})
    )
    subject_template = "subject.txt" if template == "digest" else f"{template}_subject.txt"
    values["subject"] = subject_line(text_env, values, views[0].title, subject_template)
    html = html_env.get_template(f"{template}.html").render(**values)
    text = tidy_text(text_env.get_template(f"{template}.txt").render(**values))
    for name, body in ((f"{template}.html", html), (f"{template}.txt", text)):
        _check_placeholders(name, body, UNSUBSCRIBE_URL, ARCHIVE_URL)
        if values["postal_address"] and values["postal_address"] not in html_module.unescape(body):
            raise TemplateProblem(f"template {name} must show {{{{ postal_address }}}}")
    return Rendered(values["subject"], finish_html(html), text, preheader)


def render_confirmation(
    ctx: Context, name: str, confirm_url: str, preferences_url: str | None = None
) -> Rendered:
    """The double opt-in email (``confirm.html``/``confirm.txt``) for one person.

    Uses the same variables as ``webmail.render_confirmation`` so either caller works.
    """
    from ..subscribers import CONFIRM_MAX_AGE

    url = http_url(confirm_url)
    if url is None:
        raise ValueError("the confirmation URL must be http(s)")
    html_env, text_env = environments(ctx.templates_dir)
    settings = ctx.settings
    subject = clean_text(f"Confirm your subscription to {settings.site_name}")
    values = {
        "name": clean_text(name),
        "confirm_url": url,
        "site_name": clean_text(settings.site_name),
        "base_url": settings.base_url,
        "postal_address": clean_text(settings.postal_address),
        "expires_days": CONFIRM_MAX_AGE.days,
        "preferences_url": http_url(preferences_url),
        "settings": settings,
        "subject": subject,
    }
    html = html_env.get_template("confirm.html").render(**values)
    text = tidy_text(text_env.get_template("confirm.txt").render(**values))
    return Rendered(subject, finish_html(html), text, "")


def render_already_subscribed(ctx: Context, name: str, confirm_url: str) -> Rendered:
    """The note an active reader gets when their address is typed into the form again.

    Same signature and the same work as :func:`render_confirmation` (templates
    ``already.html``/``already.txt``), so the web request that queues it costs
    the same whether or not the address is on the list.  ``confirm_url`` is not
    shown: the reader has nothing to confirm.
    """
    del confirm_url
    html_env, text_env = environments(ctx.templates_dir)
    settings = ctx.settings
    subject = clean_text(f"You are already subscribed to {settings.site_name}")
    values = {
        "name": clean_text(name),
        "site_name": clean_text(settings.site_name),
        "base_url": settings.base_url,
        "postal_address": clean_text(settings.postal_address),
        "settings": settings,
        "subject": subject,
    }
    html = html_env.get_template("already.html").render(**values)
    text = tidy_text(text_env.get_template("already.txt").render(**values))
    return Rendered(subject, finish_html(html), text, "")


def public_copy(body: str, *, base_url: str, issue_id: int) -> str:
    """A frozen issue as a full document with no reader's name and no reader's token.

    The greeting is dropped and the unsubscribe and preferences links point at the
    site (a visitor has no subscription to end or to change).  :func:`web_body` is
    what the archive page shows.
    """
    return (
        body.replace(GREETING, "")
        .replace(UNSUBSCRIBE_URL, f"{base_url}/")
        .replace(PREFERENCES_URL, f"{base_url}/")
        .replace(ARCHIVE_URL, f"{base_url}/archive/{issue_id}")
    )


def web_body(body: str, *, base_url: str, issue_id: int) -> tuple[str, str]:
    """(head styles, body markup) of a frozen issue for a web page.

    Everything the template marks ``email-only`` (preheader, masthead, greeting,
    the footer's "you are receiving this", unsubscribe and postal lines) is removed:
    the page has the site's own header and footer.  The ``<style>`` blocks are
    returned separately so the page keeps the phone layout and dark mode.
    """
    import lxml.html

    doc = lxml.html.document_fromstring(public_copy(body, base_url=base_url, issue_id=issue_id))
    for element in list(doc.find_class("email-only")):
        element.drop_tree()
    styles = "\n".join(
        str(lxml.html.tostring(style, encoding="unicode")) for style in doc.iter("style")
    )
    found = doc.find("body")
    body_el = found if found is not None else doc
    inner = "".join(
        str(lxml.html.tostring(child, encoding="unicode", method="html")) for child in body_el
    )
    return styles, inner


def first_name(name: str) -> str:
    """The first word of a name ("Ana María López" -> "Ana"); "" when there is none.

    A name that is only initials or an address gives "" rather than "Hi J.,".
    """
    word = (name or "").strip().split(" ")[0].strip(",;:")
    if len(word.rstrip(".")) < 2 or "@" in word:
        return ""
    return word


def greeting_for(name: str) -> str:
    """The greeting line a reader sees ("Hi Ana,"), or nothing when no name is known."""
    first = first_name(name)
    return f"Hi {first}," if first else ""
